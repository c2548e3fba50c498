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
