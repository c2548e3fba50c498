//! The `ecs` output form: the document the SEKOIA.IO Kubernetes parser produces from an
//! audit event (the seed's "Transformed Events Samples"), for sinks other than Sekoia and for
//! local inspection.
//!
//! The mapping is DESIGN.md §4's table. Rules that are easy to get wrong, each visible in the
//! seed samples: empty strings, nulls and empty objects/arrays are left out, recursively
//! (`"resources": {}` vanishes from a container); `user.roles` is sorted; `source.*` and
//! `related.ip` use the first source IP and only when it is an IP address; the
//! impersonated user, when there is one, is the user, but `user.id` stays the
//! authenticated user's uid. Not produced: `message` (the intake adds the raw event) and
//! the fields the platform infers (`user_agent.device/name/os`).

use super::fields::Fields;
use super::json::{Limits, ValueWriter, clean_member_key, string};
use simd_json::{Node, StaticNode};
use std::net::IpAddr;

/// An object being written; removed again on [`Obj::close`] if nothing went into it.
struct Obj {
    mark: usize,
    members: usize,
    depth: usize,
}

impl Obj {
    fn root(out: &mut Vec<u8>) -> Obj {
        let mark = out.len();
        out.push(b'{');
        Obj {
            mark,
            members: 0,
            depth: 0,
        }
    }

    fn open(&self, out: &mut Vec<u8>, key: &str) -> Obj {
        let mark = out.len();
        clean_member_key(out, self.members, key);
        out.push(b'{');
        Obj {
            mark,
            members: 0,
            depth: self.depth + 1,
        }
    }

    fn close(self, out: &mut Vec<u8>, parent: &mut Obj, w: &ValueWriter) {
        out.push(b'}');
        if self.members == 0 || !w.fits(out, self.depth) {
            out.truncate(self.mark);
        } else {
            parent.members += 1;
        }
    }

    /// Writes `key` with the value at `index` unless the value is absent, empty or over
    /// the byte limit. `write` appends the value and says whether it is kept.
    fn member(
        &mut self,
        out: &mut Vec<u8>,
        w: &ValueWriter,
        key: &str,
        write: impl FnOnce(&mut Vec<u8>) -> bool,
    ) {
        let mark = out.len();
        clean_member_key(out, self.members, key);
        if write(out) && w.fits(out, self.depth + 1) {
            self.members += 1;
        } else {
            out.truncate(mark);
        }
    }

    fn field(
        &mut self,
        out: &mut Vec<u8>,
        w: &ValueWriter,
        nodes: &[Node<'_>],
        key: &str,
        index: Option<u32>,
    ) {
        if let Some(i) = index {
            let depth = self.depth + 1;
            self.member(out, w, key, |out| w.value(nodes, i as usize, out, depth));
        }
    }
}

/// True unless the value is null, an empty string, or an empty array/object (shallow: the
/// fallback rules of the table look no deeper).
fn present(nodes: &[Node<'_>], index: Option<u32>) -> Option<u32> {
    let i = index?;
    let empty = match nodes[i as usize] {
        Node::String(s) => s.is_empty(),
        Node::Static(StaticNode::Null) => true,
        Node::Array { len, .. } | Node::Object { len, .. } => len == 0,
        Node::Static(_) => false,
    };
    (!empty).then_some(i)
}

/// The first source IP, when it is a valid IP address.
pub(crate) fn source_ip<'i>(nodes: &[Node<'i>], f: &Fields) -> Option<&'i str> {
    let i = f.source_ips? as usize;
    match (nodes[i], nodes.get(i + 1)) {
        (Node::Array { len, .. }, Some(Node::String(ip))) if len > 0 => {
            ip.parse::<IpAddr>().is_ok().then_some(*ip)
        }
        _ => None,
    }
}

/// Writes the ECS document. `roles` is scratch space for sorting the groups (reused across
/// events, so sorting does not allocate once it has grown).
pub(crate) fn write(
    nodes: &[Node<'_>],
    f: &Fields,
    out: &mut Vec<u8>,
    limits: Limits,
    bulky_budget: &mut usize,
    roles: &mut Vec<u32>,
) {
    let w = ValueWriter {
        drop_empty: true,
        limits,
    };
    let w = &w;
    let mut root = Obj::root(out);

    let mut event = root.open(out, "event");
    event.field(out, w, nodes, "action", f.verb);
    event.field(out, w, nodes, "code", f.audit_id);
    event.field(out, w, nodes, "outcome", f.decision);
    event.field(out, w, nodes, "start", f.request_received);
    event.close(out, &mut root, w);

    let mut action = root.open(out, "action");
    action.field(out, w, nodes, "outcome", f.decision);
    action.close(out, &mut root, w);

    let mut http = root.open(out, "http");
    let mut response = http.open(out, "response");
    response.field(out, w, nodes, "status_code", f.status_code);
    response.close(out, &mut http, w);
    http.close(out, &mut root, w);

    let mut k8s = root.open(out, "kubernetes");
    let mut api = k8s.open(out, "api");
    api.field(out, w, nodes, "group", f.object_api_group);
    api.close(out, &mut k8s, w);
    k8s.field(out, w, nodes, "namespace", f.object_namespace);
    let mut object = k8s.open(out, "object");
    let name = present(nodes, f.object_name).or(f.response_name);
    object.field(out, w, nodes, "name", name);
    object.close(out, &mut k8s, w);
    k8s.field(out, w, nodes, "rbacreason", f.reason);
    k8s.field(out, w, nodes, "resource", f.object_resource);
    let mut role = k8s.open(out, "role");
    role.field(out, w, nodes, "name", f.role_ref_name);
    role.close(out, &mut k8s, w);
    let mut spec = k8s.open(out, "spec");
    for (key, index) in [
        ("containers", f.spec_containers),
        ("volumes", f.spec_volumes),
    ] {
        if let Some(i) = index {
            let depth = spec.depth + 1;
            spec.member(out, w, key, |out| {
                w.bulky_array(nodes, i as usize, out, depth, bulky_budget)
            });
        }
    }
    spec.field(out, w, nodes, "host_network", f.spec_host_network);
    spec.close(out, &mut k8s, w);
    k8s.field(out, w, nodes, "subresource", f.object_subresource);
    k8s.close(out, &mut root, w);

    let ip = source_ip(nodes, f);
    let user_name = present(nodes, f.impersonated_name).or(f.user_name);
    let mut related = root.open(out, "related");
    if let Some(ip) = ip {
        related.member(out, w, "ip", |out| {
            out.push(b'[');
            string(out, ip, w.limits.string_cap);
            out.push(b']');
            true
        });
    }
    if let Some(i) = user_name {
        let depth = related.depth + 2;
        related.member(out, w, "user", |out| {
            out.push(b'[');
            let kept = w.value(nodes, i as usize, out, depth);
            out.push(b']');
            kept
        });
    }
    related.close(out, &mut root, w);

    let mut source = root.open(out, "source");
    if let Some(ip) = ip {
        for key in ["address", "ip"] {
            source.member(out, w, key, |out| {
                string(out, ip, w.limits.string_cap);
                true
            });
        }
    }
    source.close(out, &mut root, w);

    let mut url = root.open(out, "url");
    url.field(out, w, nodes, "path", f.request_uri);
    url.close(out, &mut root, w);

    let mut user = root.open(out, "user");
    user.field(out, w, nodes, "id", f.user_uid);
    user.field(out, w, nodes, "name", user_name);
    let groups = present(nodes, f.impersonated_groups).or(f.user_groups);
    if let Some(g) = groups {
        user.member(out, w, "roles", |out| {
            sorted_strings(nodes, g as usize, out, w, roles)
        });
    }
    user.close(out, &mut root, w);

    let mut agent = root.open(out, "user_agent");
    agent.field(out, w, nodes, "original", f.user_agent);
    agent.close(out, &mut root, w);

    out.push(b'}');
}

/// Writes the non-empty strings of the array at `nodes[i]` sorted by code point, as the
/// intake shows `user.roles`. Returns `false` when there are none.
fn sorted_strings(
    nodes: &[Node<'_>],
    i: usize,
    out: &mut Vec<u8>,
    w: &ValueWriter,
    scratch: &mut Vec<u32>,
) -> bool {
    let Node::Array { count, .. } = nodes[i] else {
        return false;
    };
    scratch.clear();
    // Direct children only: a nested array or object is skipped with its whole span.
    let mut j = i + 1;
    while j <= i + count {
        if let Node::String(s) = nodes[j]
            && !s.is_empty()
        {
            scratch.push(j as u32);
        }
        j += super::json::span(nodes, j);
    }
    if scratch.is_empty() {
        return false;
    }
    let text = |j: &u32| match nodes[*j as usize] {
        Node::String(s) => s,
        _ => "",
    };
    scratch.sort_unstable_by(|a, b| text(a).cmp(text(b)));
    out.push(b'[');
    for (n, j) in scratch.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        string(out, text(j), w.limits.string_cap);
    }
    out.push(b']');
    true
}
