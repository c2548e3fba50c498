//! The `audit` form loses nothing the intake reads: `ecs(audit(e)) == ecs(e)`, for the seed,
//! the real samples and generated events of every shape. And it is what it claims to be:
//! valid JSON, original key order, only kept keys, smaller than the event.

mod support;

use kube_audit_shipper::extract::{Extractor, Format};
use serde_json::Value;
use support::{corpus, json, out};

/// The keys of `v` in order, recursively, as dotted paths (arrays not entered).
fn key_paths(v: &Value, prefix: &str, acc: &mut Vec<String>) {
    if let Value::Object(o) = v {
        for (k, v) in o {
            let p = format!("{prefix}{k}");
            acc.push(p.clone());
            key_paths(v, &format!("{p}."), acc);
        }
    }
}

fn check(x: &mut Extractor, line: &str) -> (usize, usize) {
    let audit = out(x, line, Format::Audit);
    let direct = out(x, line, Format::Ecs);
    let via_audit = out(x, &audit, Format::Ecs);
    assert_eq!(
        via_audit,
        direct,
        "ecs(audit(e)) != ecs(e) for {}",
        &line[..line.len().min(400)]
    );

    // Original order: the pruned key paths are a subsequence of the event's.
    // (serde_json is built with preserve_order off, so compare by re-reading raw key order.)
    let original: Value = json(line);
    let pruned: Value = json(&audit);
    let mut all = Vec::new();
    key_paths(&original, "", &mut all);
    let mut kept = Vec::new();
    key_paths(&pruned, "", &mut kept);
    for k in &kept {
        assert!(all.contains(k), "{k} is not in the event");
        let top = k.split('.').next().unwrap();
        assert!(
            [
                "kind",
                "apiVersion",
                "level",
                "auditID",
                "stage",
                "requestURI",
                "verb",
                "user",
                "impersonatedUser",
                "sourceIPs",
                "userAgent",
                "objectRef",
                "responseStatus",
                "requestObject",
                "responseObject",
                "requestReceivedTimestamp",
                "stageTimestamp",
                "annotations"
            ]
            .contains(&top),
            "{k} should have been pruned"
        );
    }
    assert!(
        audit.len() <= line.len() + 8,
        "pruned form is not larger than the event"
    );
    (line.len(), audit.len())
}

/// Top-level keys in document order, read from the text (serde_json's map is sorted).
fn top_level_order(s: &str) -> Vec<String> {
    let mut de = serde_json::Deserializer::from_str(s);
    let mut keys = Vec::new();
    struct Keys<'a>(&'a mut Vec<String>);
    impl<'de> serde::de::Visitor<'de> for Keys<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            while let Some(k) = m.next_key::<String>()? {
                self.0.push(k);
                m.next_value::<serde::de::IgnoredAny>()?;
            }
            Ok(())
        }
    }
    serde::Deserializer::deserialize_map(&mut de, Keys(&mut keys)).unwrap();
    keys
}

#[test]
fn pruned_events_parse_exactly_like_full_ones() {
    let mut x = Extractor::new();
    let (mut raw, mut pruned, mut big_raw, mut big_pruned, mut n) = (0, 0, 0, 0, 0);
    for line in corpus::seed_raw()
        .into_iter()
        .chain(corpus::samples())
        .chain(corpus::corpus(11, 5000))
    {
        let (r, p) = check(&mut x, &line);
        raw += r;
        pruned += p;
        if r > 20_000 {
            big_raw += r;
            big_pruned += p;
        }
        n += 1;
    }
    assert!(n > 6000);
    // Small metadata events have little to prune; request/response bodies are what goes.
    assert!(pruned * 4 < raw * 3, "pruned {pruned} of {raw} bytes");
    assert!(
        big_raw > 0 && big_pruned * 20 < big_raw,
        "large events: {big_pruned} of {big_raw} bytes"
    );
}

#[test]
fn every_shape_of_the_design_is_covered() {
    // Forced shapes, each at least once, beyond what random drawing gives.
    let mut rng = corpus::Rng::new(3);
    let mut x = Extractor::new();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..4000 {
        let mut shape = corpus::Shape::random(&mut rng);
        match i % 8 {
            0 => shape.v1beta1 = true,
            1 => {
                shape.stage = [
                    "RequestReceived",
                    "ResponseStarted",
                    "ResponseComplete",
                    "Panic",
                ][i / 8 % 4]
            }
            2 => {
                shape.resource = None;
                shape.non_resource_url = Some("/healthz");
            }
            3 => shape.impersonate = true,
            4 => shape.denied = true,
            5 => shape.escapes = true,
            6 => {
                shape.source_ip = None;
                shape.user_agent = None;
                shape.annotations = false;
            }
            _ => shape.payload = 30_000,
        }
        let line = corpus::event(&mut rng, &shape);
        let v = json(&line);
        seen.insert(format!("{} {}", v["apiVersion"], v["stage"]));
        check(&mut x, &line);
    }
    assert!(seen.len() >= 8, "{seen:?}");
}

#[test]
fn audit_form_keeps_original_key_order() {
    let mut x = Extractor::new();
    for line in corpus::samples()
        .iter()
        .take(300)
        .chain(&corpus::seed_raw())
    {
        let audit = out(&mut x, line, Format::Audit);
        let original = top_level_order(line);
        let kept = top_level_order(&audit);
        let mut it = original.iter();
        for k in &kept {
            assert!(
                it.any(|o| o == k),
                "{k} out of order: {kept:?} vs {original:?}"
            );
        }
    }
}

#[test]
fn raw_form_is_the_line_as_read() {
    let mut x = Extractor::new();
    for line in corpus::samples().iter().take(200) {
        assert_eq!(&out(&mut x, line, Format::Raw), line);
    }
}

/// The security context an investigation reads from the stored event (DESIGN.md §4), which the
/// parser does not map: it must come through the `audit` form unchanged.
const CONTEXT: &[&[&str]] = &[
    &["annotations"],
    &["user"],
    &["impersonatedUser"],
    &["objectRef"],
    &["responseStatus"],
    &["requestObject", "subjects"],
    &["requestObject", "roleRef"],
];

fn at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// Checks `CONTEXT` for one event; returns which paths it had.
fn context_is_kept(x: &mut Extractor, line: &str) -> Vec<&'static [&'static str]> {
    let original = json(line);
    let pruned = json(&out(x, line, Format::Audit));
    let mut had = Vec::new();
    for path in CONTEXT {
        assert_eq!(
            at(&pruned, path),
            at(&original, path),
            "{} not kept whole in {}",
            path.join("."),
            &line[..line.len().min(300)]
        );
        if at(&original, path).is_some() {
            had.push(*path);
        }
    }
    // The bodies around the context are still cut.
    assert_eq!(at(&pruned, &["requestObject", "metadata"]), None);
    assert_eq!(at(&pruned, &["responseObject", "status"]), None);
    had
}

#[test]
fn security_context_is_kept_whole() {
    let mut x = Extractor::new();
    let mut seen = std::collections::BTreeSet::new();
    let (mut extra, mut psa, mut denial) = (0, 0, 0);
    for line in corpus::samples() {
        seen.extend(context_is_kept(&mut x, &line));
        let pruned = json(&out(&mut x, &line, Format::Audit));
        extra += usize::from(at(&pruned, &["user", "extra"]).is_some());
        psa += usize::from(
            at(
                &pruned,
                &["annotations", "pod-security.kubernetes.io/enforce-policy"],
            )
            .is_some(),
        );
        denial += usize::from(
            at(&pruned, &["responseStatus", "reason"]) == Some(&Value::from("Forbidden")),
        );
    }
    // The real log holds every kind of context, so the loop above compared each of them.
    assert_eq!(seen.len(), CONTEXT.len(), "paths seen: {seen:?}");
    assert!(extra > 0 && psa > 0 && denial > 0, "{extra} {psa} {denial}");
}

#[test]
fn security_context_of_a_hand_written_event_is_kept() {
    // Shapes the sample does not hold: a pod-security violation in audit mode, an
    // impersonated user with `extra`, a denial with details, a ClusterRoleBinding of a user
    // and a service account, with `\u` escapes and non-ASCII text in the kept values.
    let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"6b0c2a5e-1f0e-4d43-9a55-0c8e1d0f3b11","stage":"ResponseComplete","requestURI":"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings","verb":"create","user":{"username":"system:serviceaccount:ci:deployer","uid":"41a0","groups":["system:serviceaccounts","system:authenticated"],"extra":{"authentication.kubernetes.io/pod-name":["runner-7f9"],"authentication.kubernetes.io/node-name":["node-3"],"authentication.kubernetes.io/credential-id":["JTI=9e1c"]}},"impersonatedUser":{"username":"eve","uid":"e-1","groups":["ops"],"extra":{"scopes":["view","\u00e9dit"]}},"sourceIPs":["10.0.0.7"],"userAgent":"kubectl/v1.36.0","objectRef":{"resource":"clusterrolebindings","name":"eve-admin","apiGroup":"rbac.authorization.k8s.io","apiVersion":"v1","uid":"c1","resourceVersion":"991"},"responseStatus":{"metadata":{},"status":"Failure","message":"clusterrolebindings.rbac.authorization.k8s.io is forbidden: user \"eve\" (groups=[\"ops\"]) is attempting to grant RBAC permissions not currently held","reason":"Forbidden","details":{"group":"rbac.authorization.k8s.io","kind":"clusterrolebindings","name":"eve-admin"},"code":403},"requestObject":{"kind":"ClusterRoleBinding","apiVersion":"rbac.authorization.k8s.io/v1","metadata":{"name":"eve-admin","creationTimestamp":null},"subjects":[{"kind":"User","apiGroup":"rbac.authorization.k8s.io","name":"eve"},{"kind":"ServiceAccount","name":"deployer","namespace":"ci"}],"roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"cluster-admin"}},"responseObject":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","code":403},"requestReceivedTimestamp":"2026-11-28T10:00:00.000000Z","stageTimestamp":"2026-11-28T10:00:00.004000Z","annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by ClusterRoleBinding \"ci-deployer\"","pod-security.kubernetes.io/enforce-policy":"restricted:latest","pod-security.kubernetes.io/audit-violations":"would violate PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"x\" must set securityContext.allowPrivilegeEscalation=false)"}}"#;
    let mut x = Extractor::new();
    assert_eq!(context_is_kept(&mut x, line).len(), CONTEXT.len());
    check(&mut x, line);
}

/// The `audit` writer that copies kept members from the line as byte ranges (the default)
/// writes the same JSON value as the one that re-serialises them from the tape, in the same
/// key order; for a compact line without escapes, the same bytes.
#[test]
fn byte_ranges_write_the_same_event_as_the_tape() {
    let mut ranges = Extractor::new();
    let mut tape = Extractor::new().with_byte_ranges(false);
    let seed = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/pods?x=\u003c1\u003e\u0026y=\\u0026\\\u0026","verb":"create","user":{"username":"u","groups":["g"]},"sourceIPs":["10.0.0.1"],"objectRef":{"resource":"pods","namespace":"n"},"requestObject":{"spec":{"containers":[{"name":"c"}],"hostPID":true},"big":"x"},"requestReceivedTimestamp":"2026-01-01T00:00:00.000000Z","annotations":{"authorization.k8s.io/reason":"RBAC: allowed by \"x\""}}"#;
    let odd = [
        // Whitespace everywhere, CRLF at the end, pretty-printed members.
        " { \"kind\" : \"Event\" ,\n \"verb\":\t\"get\" , \"x\" : 1 , \"level\" : \"Metadata\" } \r".to_string(),
        // A kept key spelled with an escape, an unkept one with escapes, duplicates.
        r#"{"ki\u006ed":"Event","a\"b":1,"verb":"get","verb":"list","user":{"u\\":"\\"}}"#
            .to_string(),
        // Nothing kept; only kept; kept last and first; numbers in odd spellings (`-0` is
        // left out: ranges keep it as written, the tape writes `0`; serde_json reads the
        // first as a float, though both are the same JSON number).
        r#"{"x":{"y":[1,2]}}"#.to_string(),
        r#"{"verb":"get"}"#.to_string(),
        r#"{"user":{"n":1.0E+2,"m":-5,"k":1e-7},"x":[],"stageTimestamp":"t"}"#.to_string(),
        r#"{"responseObject":{"metadata":{"name":"n","uid":"u"}},"responseStatus":{"code":200}}"#
            .to_string(),
        seed.to_string(),
    ];
    let compact = odd.len();
    for (i, line) in odd
        .into_iter()
        .chain(corpus::seed_raw())
        .chain(corpus::samples())
        .chain(corpus::corpus(12, 3000))
        .enumerate()
    {
        let a = out(&mut ranges, &line, Format::Audit);
        let b = out(&mut tape, &line, Format::Audit);
        assert_eq!(json(&a), json(&b), "{line}");
        assert_eq!(top_level_order(&a), top_level_order(&b), "{line}");
        // Compact lines (the API server's and the generator's): the same bytes. The ranges
        // write Go's `\u0026`, `\u003c` and `\u003e` as the characters, as the tape does.
        if i >= compact {
            assert_eq!(a, b);
        }
    }
    // Whitespace between every token, and keys in another order (serde_json's pretty form
    // of the real samples, its keys sorted): the ranges carry the whitespace along, and runs
    // of kept members fall elsewhere; the value is the same.
    for line in corpus::samples() {
        let pretty = serde_json::to_string_pretty(&json(&line)).expect("a value");
        let a = out(&mut ranges, &pretty, Format::Audit);
        let b = out(&mut tape, &pretty, Format::Audit);
        assert_eq!(json(&a), json(&b), "{pretty}");
        assert_eq!(top_level_order(&a), top_level_order(&b), "{pretty}");
    }
}
