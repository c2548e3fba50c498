//! The `ecs` form against what the intake really produces (the seed's transformed samples),
//! and against the naive model of DESIGN.md §4 on every generated and real event.

mod support;

use kube_audit_shipper::extract::{Extractor, Format};
use serde_json::Value;
use support::{corpus, json, model, out};

/// Drops what the intake adds that the shipper does not produce: `message` (the raw event)
/// and the user-agent fields the platform infers; sorts `user.roles` (compared as a set).
fn comparable(mut doc: Value) -> Value {
    let o = doc.as_object_mut().unwrap();
    o.remove("message");
    if let Some(Value::Object(ua)) = o.get_mut("user_agent") {
        for inferred in ["device", "name", "os"] {
            ua.remove(inferred);
        }
    }
    if let Some(Value::Array(roles)) = o.get_mut("user").and_then(|u| u.get_mut("roles")) {
        roles.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
    }
    doc
}

#[test]
fn seed_events_give_exactly_the_intakes_documents() {
    let raw = corpus::seed_raw();
    let expected: Vec<Value> = include_str!("fixtures/seed/ecs.jsonl")
        .lines()
        .map(|l| comparable(json(l)))
        .collect();
    assert_eq!(raw.len(), 8);
    assert_eq!(expected.len(), 8);
    let mut x = Extractor::new();
    for (i, (line, want)) in raw.iter().zip(&expected).enumerate() {
        let got = comparable(json(&out(&mut x, line, Format::Ecs)));
        assert_eq!(got, *want, "seed event {i}");
    }
}

#[test]
fn the_model_agrees_with_the_seed_too() {
    // Guards the model itself: if it drifted from the intake, the next test would prove little.
    let expected: Vec<Value> = include_str!("fixtures/seed/ecs.jsonl")
        .lines()
        .map(|l| comparable(json(l)))
        .collect();
    for (i, line) in corpus::seed_raw().iter().enumerate() {
        assert_eq!(
            comparable(model::ecs(&json(line))),
            expected[i],
            "seed event {i}"
        );
    }
}

#[test]
fn ecs_matches_the_model_on_real_and_generated_events() {
    let mut x = Extractor::new();
    let events = corpus::samples().into_iter().chain(corpus::corpus(7, 5000));
    let mut n = 0;
    for line in events {
        let got = json(&out(&mut x, &line, Format::Ecs));
        let want = model::ecs(&json(&line));
        assert_eq!(got, want, "event {n}: {}", &line[..line.len().min(300)]);
        n += 1;
    }
    assert!(n >= 6000, "{n} events checked");
}

#[test]
fn ecs_keeps_the_documented_special_cases() {
    let mut x = Extractor::new();
    let line = r#"{"verb":"get","user":{"username":"sa","uid":"u-1","groups":["b","a",""]},
        "impersonatedUser":{"username":"","groups":[]},"sourceIPs":["not-an-ip","1.1.1.1"],
        "objectRef":{"name":"","resource":"pods"},"responseObject":{"metadata":{"name":"from-response"}},
        "annotations":{"authorization.k8s.io/reason":"","authorization.k8s.io/decision":null},
        "responseStatus":{"code":403},"requestObject":{"spec":{"hostNetwork":false,"containers":[{"resources":{},"env":[]}]}}}"#
        .replace('\n', "");
    let got = json(&out(&mut x, &line, Format::Ecs));
    assert_eq!(
        got,
        serde_json::json!({
            "event": {"action": "get"},
            "http": {"response": {"status_code": 403}},
            // objectRef.name is empty: the response object's name is used.
            "kubernetes": {"object": {"name": "from-response"}, "resource": "pods",
                           // false is a value; a container of empties is not.
                           "spec": {"host_network": false}},
            // No source.* or related.ip: the first source IP is not an IP.
            "related": {"user": ["sa"]},
            // Impersonation fields are empty, so the authenticated user's apply.
            "user": {"id": "u-1", "name": "sa", "roles": ["a", "b"]},
        })
    );
}
