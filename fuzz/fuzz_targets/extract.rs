//! Any bytes as one audit-log line, through both output forms with a small size limit (so
//! trimming runs too). The extractor must not panic, and what it writes must be one JSON
//! object within the limit; the pruned form must parse to the same ECS document.
#![no_main]

use kube_audit_shipper::extract::{Extractor, Format};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 2048;

fn extract(x: &mut Extractor, line: &[u8], format: Format) -> Option<Vec<u8>> {
    let mut buf = line.to_vec();
    let len = buf.len();
    buf.resize(len + 64, 0);
    let mut out = Vec::new();
    x.extract(&mut buf, len, format, &mut out).ok()?;
    Some(out)
}

fuzz_target!(|line: &[u8]| {
    let mut x = Extractor::new().with_max_event_bytes(LIMIT);
    for format in [Format::Audit, Format::Ecs] {
        if let Some(out) = extract(&mut x, line, format) {
            assert!(out.len() <= LIMIT, "{} bytes", out.len());
            let v: serde_json::Value = serde_json::from_slice(&out).expect("output is JSON");
            assert!(v.is_object());
        }
    }
    // Without trimming, the pruned form must carry everything the ECS mapping reads.
    let mut x = Extractor::new();
    if let (Some(audit), Some(ecs)) = (
        extract(&mut x, line, Format::Audit),
        extract(&mut x, line, Format::Ecs),
    ) {
        let again = extract(&mut x, &audit, Format::Ecs).expect("pruned form parses");
        assert_eq!(again, ecs);
    }
});
