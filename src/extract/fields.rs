//! Finds the documented fields of an audit event in one pass over the tape.
//!
//! The result is a table of tape indices, not copies: a field is read by looking at
//! `nodes[index]`, so locating costs no allocation and no string copy. Members are matched by
//! exact key; when a key appears twice the last one wins, as in the intake's JSON parser.
//!
//! Which paths are located is DESIGN.md §4's table plus what the spool's classifier needs
//! (`hostPID`, `hostIPC`) and what the batcher needs (`requestReceivedTimestamp`).

use super::json::{key_str, span};
use simd_json::Node;

/// Tape indices of the located fields; `None` when the path is absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields {
    pub kind: Option<u32>,
    pub api_version: Option<u32>,
    pub level: Option<u32>,
    pub audit_id: Option<u32>,
    pub stage: Option<u32>,
    pub request_uri: Option<u32>,
    pub verb: Option<u32>,
    pub user_agent: Option<u32>,
    pub source_ips: Option<u32>,
    pub request_received: Option<u32>,
    pub stage_timestamp: Option<u32>,

    pub user_name: Option<u32>,
    pub user_uid: Option<u32>,
    pub user_groups: Option<u32>,
    pub impersonated_name: Option<u32>,
    pub impersonated_groups: Option<u32>,
    /// `impersonatedUser` is present at all (even without a username).
    pub impersonated: Option<u32>,

    pub object_name: Option<u32>,
    pub object_resource: Option<u32>,
    pub object_namespace: Option<u32>,
    pub object_subresource: Option<u32>,
    pub object_api_group: Option<u32>,

    pub status_code: Option<u32>,
    pub decision: Option<u32>,
    pub reason: Option<u32>,

    pub spec_containers: Option<u32>,
    pub spec_volumes: Option<u32>,
    pub spec_host_network: Option<u32>,
    pub spec_host_pid: Option<u32>,
    pub spec_host_ipc: Option<u32>,
    pub role_ref_name: Option<u32>,
    pub response_name: Option<u32>,
}

/// Calls `f(key, value_index)` for each member of the object at `nodes[i]`, in order.
/// Does nothing when `nodes[i]` is not an object.
#[inline]
pub(crate) fn members<'i>(nodes: &[Node<'i>], i: usize, mut f: impl FnMut(&'i str, usize)) {
    if let Node::Object { len, .. } = nodes[i] {
        let mut j = i + 1;
        for _ in 0..len {
            f(key_str(nodes, j), j + 1);
            j += 1 + span(nodes, j + 1);
        }
    }
}

impl Fields {
    /// Locates the fields of the event whose root object is `nodes[0]`.
    pub fn locate(nodes: &[Node<'_>]) -> Fields {
        let mut f = Fields::default();
        let at = |v: usize| Some(v as u32);
        members(nodes, 0, |key, v| match key {
            "kind" => f.kind = at(v),
            "apiVersion" => f.api_version = at(v),
            "level" => f.level = at(v),
            "auditID" => f.audit_id = at(v),
            "stage" => f.stage = at(v),
            "requestURI" => f.request_uri = at(v),
            "verb" => f.verb = at(v),
            "userAgent" => f.user_agent = at(v),
            "sourceIPs" => f.source_ips = at(v),
            "requestReceivedTimestamp" => f.request_received = at(v),
            "stageTimestamp" => f.stage_timestamp = at(v),
            "user" => members(nodes, v, |k, w| match k {
                "username" => f.user_name = at(w),
                "uid" => f.user_uid = at(w),
                "groups" => f.user_groups = at(w),
                _ => {}
            }),
            "impersonatedUser" => {
                f.impersonated = at(v);
                members(nodes, v, |k, w| match k {
                    "username" => f.impersonated_name = at(w),
                    "groups" => f.impersonated_groups = at(w),
                    _ => {}
                })
            }
            "objectRef" => members(nodes, v, |k, w| match k {
                "name" => f.object_name = at(w),
                "resource" => f.object_resource = at(w),
                "namespace" => f.object_namespace = at(w),
                "subresource" => f.object_subresource = at(w),
                "apiGroup" => f.object_api_group = at(w),
                _ => {}
            }),
            "responseStatus" => members(nodes, v, |k, w| {
                if k == "code" {
                    f.status_code = at(w)
                }
            }),
            "annotations" => members(nodes, v, |k, w| match k {
                "authorization.k8s.io/decision" => f.decision = at(w),
                "authorization.k8s.io/reason" => f.reason = at(w),
                _ => {}
            }),
            "requestObject" => members(nodes, v, |k, w| match k {
                "spec" => members(nodes, w, |k, x| match k {
                    "containers" => f.spec_containers = at(x),
                    "volumes" => f.spec_volumes = at(x),
                    "hostNetwork" => f.spec_host_network = at(x),
                    "hostPID" => f.spec_host_pid = at(x),
                    "hostIPC" => f.spec_host_ipc = at(x),
                    _ => {}
                }),
                "roleRef" => members(nodes, w, |k, x| {
                    if k == "name" {
                        f.role_ref_name = at(x)
                    }
                }),
                _ => {}
            }),
            "responseObject" => members(nodes, v, |k, w| {
                if k == "metadata" {
                    members(nodes, w, |k, x| {
                        if k == "name" {
                            f.response_name = at(x)
                        }
                    })
                }
            }),
            _ => {}
        });
        f
    }
}
