//! A second, deliberately naive implementation of the ECS mapping of DESIGN.md §4, written
//! over serde_json values straight from the table. The product's streaming writer is checked
//! against it on every generated shape; the seed samples check both.
#![allow(dead_code)]

use serde_json::{Map, Value, json};

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(*k))
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

/// Removes empty values recursively (an object or array emptied this way goes too).
pub fn prune(v: &Value) -> Option<Value> {
    let pruned = match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k.clone(), v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().filter_map(prune).collect()),
        other => other.clone(),
    };
    (!is_empty(&pruned)).then_some(pruned)
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !is_empty(v))
}

fn set(doc: &mut Value, path: &[&str], value: Option<Value>) {
    let Some(value) = value.as_ref().and_then(prune) else {
        return;
    };
    let mut cur = doc;
    for k in &path[..path.len() - 1] {
        cur = cur
            .as_object_mut()
            .unwrap()
            .entry(k.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    cur.as_object_mut()
        .unwrap()
        .insert(path[path.len() - 1].to_string(), value);
}

/// The ECS document for one audit event.
pub fn ecs(e: &Value) -> Value {
    let mut d = json!({});
    let f = |path: &[&str]| get(e, path).cloned();
    set(&mut d, &["event", "action"], f(&["verb"]));
    set(&mut d, &["event", "code"], f(&["auditID"]));
    let decision = get(e, &["annotations", "authorization.k8s.io/decision"]).cloned();
    set(&mut d, &["event", "outcome"], decision.clone());
    set(
        &mut d,
        &["event", "start"],
        f(&["requestReceivedTimestamp"]),
    );
    set(&mut d, &["action", "outcome"], decision);
    set(
        &mut d,
        &["http", "response", "status_code"],
        f(&["responseStatus", "code"]),
    );
    set(
        &mut d,
        &["kubernetes", "api", "group"],
        f(&["objectRef", "apiGroup"]),
    );
    set(
        &mut d,
        &["kubernetes", "namespace"],
        f(&["objectRef", "namespace"]),
    );
    let name = present(get(e, &["objectRef", "name"]))
        .or(get(e, &["responseObject", "metadata", "name"]))
        .cloned();
    set(&mut d, &["kubernetes", "object", "name"], name);
    set(
        &mut d,
        &["kubernetes", "rbacreason"],
        f(&["annotations", "authorization.k8s.io/reason"]),
    );
    set(
        &mut d,
        &["kubernetes", "resource"],
        f(&["objectRef", "resource"]),
    );
    set(
        &mut d,
        &["kubernetes", "role", "name"],
        f(&["requestObject", "roleRef", "name"]),
    );
    set(
        &mut d,
        &["kubernetes", "spec", "containers"],
        f(&["requestObject", "spec", "containers"]),
    );
    set(
        &mut d,
        &["kubernetes", "spec", "volumes"],
        f(&["requestObject", "spec", "volumes"]),
    );
    set(
        &mut d,
        &["kubernetes", "spec", "host_network"],
        f(&["requestObject", "spec", "hostNetwork"]),
    );
    set(
        &mut d,
        &["kubernetes", "subresource"],
        f(&["objectRef", "subresource"]),
    );
    let ip = get(e, &["sourceIPs"])
        .and_then(|v| v.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_str())
        .filter(|s| s.parse::<std::net::IpAddr>().is_ok());
    if let Some(ip) = ip {
        set(&mut d, &["related", "ip"], Some(json!([ip])));
        set(&mut d, &["source", "address"], Some(json!(ip)));
        set(&mut d, &["source", "ip"], Some(json!(ip)));
    }
    let user = present(get(e, &["impersonatedUser", "username"]))
        .or(get(e, &["user", "username"]))
        .cloned();
    if let Some(u) = present(user.as_ref()) {
        set(&mut d, &["related", "user"], Some(json!([u])));
    }
    set(&mut d, &["url", "path"], f(&["requestURI"]));
    set(&mut d, &["user", "id"], f(&["user", "uid"]));
    set(&mut d, &["user", "name"], user);
    let groups = present(get(e, &["impersonatedUser", "groups"])).or(get(e, &["user", "groups"]));
    if let Some(Value::Array(g)) = groups {
        let mut roles: Vec<&str> = g
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        roles.sort();
        set(&mut d, &["user", "roles"], Some(json!(roles)));
    }
    set(&mut d, &["user_agent", "original"], f(&["userAgent"]));
    d
}
