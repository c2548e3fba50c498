//! Which spool class an event belongs to (DESIGN.md §6). Critical events are sent before
//! bulk ones and are never evicted; bulk events go first when the spool is full.
//!
//! Critical:
//! - writes (`create`, `update`, `patch`, `delete`, `deletecollection`), except routine
//!   noise: lease renewals and `events` written by system components;
//! - the `exec`, `attach`, `portforward` and `proxy` subresources;
//! - anything on secrets, RBAC objects, service-account tokens and CSRs;
//! - impersonation; anonymous or unauthenticated users;
//! - denials (decision `forbid`/`deny`) and 401/403 responses;
//! - pods that are privileged or use the host's network, PID or IPC namespace or a host path.
//!
//! Bulk: everything else (reads by system components, lease renewals, discovery).

use crate::extract::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Critical,
    Bulk,
}

impl Class {
    pub fn letter(self) -> char {
        match self {
            Class::Critical => 'c',
            Class::Bulk => 'b',
        }
    }
}

const WRITES: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
const SENSITIVE: &[&str] = &[
    "secrets",
    "roles",
    "rolebindings",
    "clusterroles",
    "clusterrolebindings",
    "certificatesigningrequests",
];
const INTERACTIVE: &[&str] = &["exec", "attach", "portforward", "proxy"];

pub fn classify(e: &Event<'_>) -> Class {
    let f = e.fields();
    let verb = e.verb().unwrap_or("");
    let resource = e.text(f.object_resource).unwrap_or("");
    let subresource = e.text(f.object_subresource).unwrap_or("");
    let user = e.text(f.user_name).unwrap_or("");
    let system_user = user.starts_with("system:") && user != "system:anonymous";

    let routine = (resource == "leases" && matches!(verb, "update" | "patch"))
        || (resource == "events" && system_user);
    let critical = (WRITES.contains(&verb) && !routine)
        || INTERACTIVE.contains(&subresource)
        || SENSITIVE.contains(&resource)
        || (resource == "serviceaccounts" && subresource == "token")
        || f.impersonated.is_some()
        || user == "system:anonymous"
        || e.array_has(f.user_groups, "system:unauthenticated")
        || matches!(e.text(f.decision), Some("forbid" | "deny"))
        || matches!(e.int(f.status_code), Some(401 | 403))
        || e.is_true(f.spec_host_network)
        || e.is_true(f.spec_host_pid)
        || e.is_true(f.spec_host_ipc)
        || e.has_privileged_container()
        || e.has_host_path_volume();
    if critical {
        Class::Critical
    } else {
        Class::Bulk
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::Extractor;

    fn class_of(json: &str) -> Class {
        let mut x = Extractor::new();
        let mut buf = json.as_bytes().to_vec();
        let len = buf.len();
        let e = x.parse(&mut buf, len).unwrap();
        classify(&e)
    }

    #[test]
    fn each_rule() {
        use Class::{Bulk, Critical};
        let sys =
            r#""user":{"username":"system:kube-scheduler","groups":["system:authenticated"]}"#;
        let admin = r#""user":{"username":"admin","groups":["system:masters"]}"#;
        for (event, want) in [
            // Reads by system components, discovery: bulk.
            (
                format!(r#"{{"verb":"get",{sys},"objectRef":{{"resource":"pods"}}}}"#),
                Bulk,
            ),
            (
                format!(r#"{{"verb":"list",{admin},"requestURI":"/apis"}}"#),
                Bulk,
            ),
            (
                format!(r#"{{"verb":"watch",{sys},"objectRef":{{"resource":"configmaps"}}}}"#),
                Bulk,
            ),
            // Writes: critical, except lease renewals and events by system components.
            (
                format!(r#"{{"verb":"create",{admin},"objectRef":{{"resource":"configmaps"}}}}"#),
                Critical,
            ),
            (
                format!(r#"{{"verb":"deletecollection",{sys},"objectRef":{{"resource":"pods"}}}}"#),
                Critical,
            ),
            (
                format!(r#"{{"verb":"update",{sys},"objectRef":{{"resource":"leases"}}}}"#),
                Bulk,
            ),
            (
                format!(r#"{{"verb":"create",{sys},"objectRef":{{"resource":"events"}}}}"#),
                Bulk,
            ),
            (
                format!(r#"{{"verb":"create",{admin},"objectRef":{{"resource":"events"}}}}"#),
                Critical,
            ),
            (
                format!(r#"{{"verb":"create",{admin},"objectRef":{{"resource":"leases"}}}}"#),
                Critical,
            ),
            // Interactive subresources.
            (
                format!(
                    r#"{{"verb":"get",{admin},"objectRef":{{"resource":"pods","subresource":"exec"}}}}"#
                ),
                Critical,
            ),
            (
                format!(
                    r#"{{"verb":"get",{admin},"objectRef":{{"resource":"pods","subresource":"portforward"}}}}"#
                ),
                Critical,
            ),
            (
                format!(
                    r#"{{"verb":"get",{admin},"objectRef":{{"resource":"pods","subresource":"log"}}}}"#
                ),
                Bulk,
            ),
            // Sensitive resources, even read.
            (
                format!(r#"{{"verb":"get",{sys},"objectRef":{{"resource":"secrets"}}}}"#),
                Critical,
            ),
            (
                format!(
                    r#"{{"verb":"list",{sys},"objectRef":{{"resource":"clusterrolebindings"}}}}"#
                ),
                Critical,
            ),
            (
                format!(
                    r#"{{"verb":"get",{sys},"objectRef":{{"resource":"certificatesigningrequests"}}}}"#
                ),
                Critical,
            ),
            (
                format!(
                    r#"{{"verb":"create",{sys},"objectRef":{{"resource":"serviceaccounts","subresource":"token"}}}}"#
                ),
                Critical,
            ),
            (
                format!(r#"{{"verb":"get",{sys},"objectRef":{{"resource":"serviceaccounts"}}}}"#),
                Bulk,
            ),
            // Who: impersonation, anonymous, unauthenticated.
            (
                format!(r#"{{"verb":"get",{admin},"impersonatedUser":{{"username":"x"}}}}"#),
                Critical,
            ),
            (
                r#"{"verb":"get","user":{"username":"system:anonymous"}}"#.to_string(),
                Critical,
            ),
            (
                r#"{"verb":"get","user":{"username":"x","groups":["system:unauthenticated"]}}"#
                    .to_string(),
                Critical,
            ),
            // Denied.
            (
                format!(
                    r#"{{"verb":"get",{sys},"annotations":{{"authorization.k8s.io/decision":"forbid"}}}}"#
                ),
                Critical,
            ),
            (
                format!(r#"{{"verb":"get",{sys},"responseStatus":{{"code":403}}}}"#),
                Critical,
            ),
            (
                format!(r#"{{"verb":"get",{sys},"responseStatus":{{"code":401}}}}"#),
                Critical,
            ),
            (
                format!(r#"{{"verb":"get",{sys},"responseStatus":{{"code":404}}}}"#),
                Bulk,
            ),
            // Risky pods (also when the write itself would be routine: here a read shape).
            (
                format!(
                    r#"{{"verb":"get",{sys},"requestObject":{{"spec":{{"hostNetwork":true}}}}}}"#
                ),
                Critical,
            ),
            (
                format!(r#"{{"verb":"get",{sys},"requestObject":{{"spec":{{"hostPID":true}}}}}}"#),
                Critical,
            ),
            (
                format!(r#"{{"verb":"get",{sys},"requestObject":{{"spec":{{"hostIPC":true}}}}}}"#),
                Critical,
            ),
            (
                format!(
                    r#"{{"verb":"get",{sys},"requestObject":{{"spec":{{"hostNetwork":false}}}}}}"#
                ),
                Bulk,
            ),
            (
                format!(
                    r#"{{"verb":"get",{sys},"requestObject":{{"spec":{{"containers":[{{"name":"a"}},{{"securityContext":{{"privileged":true}}}}]}}}}}}"#
                ),
                Critical,
            ),
            (
                format!(
                    r#"{{"verb":"get",{sys},"requestObject":{{"spec":{{"containers":[{{"securityContext":{{"privileged":false}}}}]}}}}}}"#
                ),
                Bulk,
            ),
            (
                format!(
                    r#"{{"verb":"get",{sys},"requestObject":{{"spec":{{"volumes":[{{"name":"h","hostPath":{{"path":"/"}}}}]}}}}}}"#
                ),
                Critical,
            ),
            (
                format!(
                    r#"{{"verb":"get",{sys},"requestObject":{{"spec":{{"volumes":[{{"name":"c","configMap":{{}}}}]}}}}}}"#
                ),
                Bulk,
            ),
        ] {
            assert_eq!(class_of(&event), want, "{event}");
        }
    }

    #[test]
    fn the_seed_events_are_all_critical() {
        // Cluster-admin bindings, privileged/hostNetwork/hostPath pods, exec, impersonation,
        // scale patch: every seed sample is security-relevant.
        for line in include_str!("../../tests/fixtures/seed/raw.jsonl").lines() {
            assert_eq!(class_of(line), Class::Critical, "{line}");
        }
    }
}
