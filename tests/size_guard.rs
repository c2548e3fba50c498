//! No `audit` or `ecs` output exceeds the intake's per-event limit, 250,000 bytes as in
//! Sekoia's own senders (DESIGN.md §5): oversized events are trimmed and marked, never
//! dropped.

mod support;

use kube_audit_shipper::extract::{Extractor, Format, MAX_EVENT_BYTES};
use serde_json::{Value, json};
use support::{corpus, extract, json};

fn base() -> Value {
    json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
        "auditID": "11111111-2222-4333-8444-555555555555", "stage": "ResponseComplete",
        "requestURI": "/api/v1/namespaces/default/pods", "verb": "create",
        "user": {"username": "admin", "groups": ["system:masters"]},
        "sourceIPs": ["10.0.0.1"], "userAgent": "kubectl/v1.36.0",
        "objectRef": {"resource": "pods", "namespace": "default", "name": "big", "apiVersion": "v1"},
        "responseStatus": {"code": 201},
        "requestReceivedTimestamp": "2026-11-24T14:55:27.763391Z",
        "stageTimestamp": "2026-11-24T14:55:27.863391Z",
        "annotations": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": ""}
    })
}

fn containers(n: usize, each: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"name": format!("c{i}"), "image": "x", "command": ["sh", "-c", "é".repeat(each / 2)]}))
            .collect(),
    )
}

/// Extracts in both forms and checks the invariants of a trimmed event.
fn trimmed(line: &str) -> [Value; 2] {
    let mut x = Extractor::new();
    [Format::Audit, Format::Ecs].map(|format| {
        let (out, written) = extract(&mut x, line, format).unwrap();
        assert!(
            out.len() <= MAX_EVENT_BYTES,
            "{format:?}: {} bytes",
            out.len()
        );
        assert!(written.truncated, "{format:?} should be marked truncated");
        let v = json(&out);
        assert_eq!(
            v["kube_audit_shipper"],
            json!({"truncated": true, "original_bytes": line.len()}),
            "{format:?}"
        );
        v
    })
}

#[test]
fn many_containers_are_cut_to_fit_and_the_rest_is_kept() {
    let mut e = base();
    e["requestObject"] = json!({"spec": {"containers": containers(400, 1000), "hostNetwork": true,
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}]}});
    let line = e.to_string();
    assert!(line.len() > 400_000);
    let [audit, ecs] = trimmed(&line);
    // Everything but the containers array survives whole.
    assert_eq!(audit["auditID"], e["auditID"]);
    assert_eq!(
        audit["requestReceivedTimestamp"],
        e["requestReceivedTimestamp"]
    );
    assert_eq!(audit["requestObject"]["spec"]["hostNetwork"], json!(true));
    let kept = audit["requestObject"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let all = e["requestObject"]["spec"]["containers"].as_array().unwrap();
    assert!(
        kept.len() > 100 && kept.len() < all.len(),
        "{} containers kept",
        kept.len()
    );
    assert_eq!(kept[..], all[..kept.len()], "a prefix, elements intact");
    assert_eq!(ecs["event"]["code"], e["auditID"]);
    assert_eq!(ecs["kubernetes"]["spec"]["host_network"], json!(true));
    assert!(
        !ecs["kubernetes"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Trimming uses the room: not cut far below the limit.
    let audit_len = audit.to_string().len();
    assert!(audit_len > MAX_EVENT_BYTES - 8 * 1024, "{audit_len}");
}

#[test]
fn huge_strings_are_cut_when_arrays_are_not_enough() {
    let mut e = base();
    e["requestURI"] = json!(format!("/api/v1/pods?label={}", "a\"b".repeat(150_000)));
    e["userAgent"] = json!("日本".repeat(60_000));
    let line = e.to_string();
    let [audit, ecs] = trimmed(&line);
    assert_eq!(audit["auditID"], e["auditID"]);
    assert_eq!(audit["verb"], json!("create"));
    assert!(
        audit["requestURI"]
            .as_str()
            .unwrap()
            .starts_with("/api/v1/pods?label=a\"b")
    );
    assert_eq!(ecs["user"]["name"], json!("admin"));
}

#[test]
fn the_limit_is_the_250000_bytes_of_sekoias_sdk_not_250_kib() {
    // `sekoia-automation-sdk` drops events over 250,000 bytes before sending them; "250
    // KiB" read as 256,000 let events between the two through.
    assert_eq!(MAX_EVENT_BYTES, 250_000);
    let mut e = base();
    e["requestURI"] = json!(format!("/api/v1/pods?label={}", "a".repeat(253_000)));
    let line = e.to_string();
    assert!(line.len() < 256_000, "{}", line.len());
    let mut x = Extractor::new();
    let (out, written) = extract(&mut x, &line, Format::Audit).unwrap();
    assert!(written.truncated, "{} bytes, not trimmed", out.len());
    assert!(out.len() <= 250_000, "{} bytes", out.len());
    assert_eq!(
        json(&out)["kube_audit_shipper"],
        json!({"truncated": true, "original_bytes": line.len()})
    );
}

#[test]
fn thousands_of_groups_or_ips_still_fit() {
    let mut e = base();
    e["user"]["groups"] = Value::Array(
        (0..20_000)
            .map(|i| json!(format!("group-{i:08}")))
            .collect(),
    );
    e["sourceIPs"] = Value::Array(
        (0..20_000)
            .map(|i| json!(format!("10.0.{}.{}", i / 256 % 256, i % 256)))
            .collect(),
    );
    let line = e.to_string();
    let [audit, ecs] = trimmed(&line);
    assert_eq!(audit["auditID"], e["auditID"]);
    assert_eq!(ecs["source"]["ip"], json!("10.0.0.0"));
}

#[test]
fn events_at_or_under_the_limit_are_untouched() {
    let mut x = Extractor::new();
    for line in corpus::samples().iter().chain(&corpus::corpus(5, 2000)) {
        for format in [Format::Audit, Format::Ecs] {
            let (out, written) = extract(&mut x, line, format).unwrap();
            if out.len() <= MAX_EVENT_BYTES {
                assert!(!written.truncated && !out.contains("kube_audit_shipper"));
            }
        }
    }
}

#[test]
fn a_smaller_configured_limit_is_honoured_on_every_event() {
    // With a 1 KiB limit many events need trimming: each must still fit and parse.
    let mut x = Extractor::new().with_max_event_bytes(1024);
    let mut trimmed = 0;
    for line in corpus::samples().iter().chain(&corpus::corpus(9, 3000)) {
        for format in [Format::Audit, Format::Ecs] {
            let (out, written) = extract(&mut x, line, format).unwrap();
            assert!(out.len() <= 1024, "{} bytes: {out}", out.len());
            let v = json(&out);
            if written.truncated {
                trimmed += 1;
                assert_eq!(v["kube_audit_shipper"]["truncated"], json!(true));
            }
        }
    }
    eprintln!("{trimmed} trimmed");
    assert!(trimmed > 50, "{trimmed} trimmed");
}
