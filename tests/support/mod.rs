//! Shared by the integration tests: the corpus generator, the ECS model, and helpers.
#![allow(dead_code)]

pub mod apiserver;
pub mod corpus;
pub mod intake;
pub mod model;

use kube_audit_shipper::extract::{ExtractError, Extractor, Format, Written};

/// Runs one line through a fresh-enough extractor (callers reuse theirs when they can).
pub fn extract(
    x: &mut Extractor,
    line: &str,
    format: Format,
) -> Result<(String, Written), ExtractError> {
    let mut buf = line.as_bytes().to_vec();
    let len = buf.len();
    buf.resize(len + simd_json_padding(), 0);
    let mut out = Vec::new();
    let written = x.extract(&mut buf, len, format, &mut out)?;
    Ok((String::from_utf8(out).expect("output is UTF-8"), written))
}

/// Same as `extract`, for lines known to be events.
pub fn out(x: &mut Extractor, line: &str, format: Format) -> String {
    extract(x, line, format)
        .unwrap_or_else(|e| panic!("{e} in {}", &line[..line.len().min(200)]))
        .0
}

fn simd_json_padding() -> usize {
    64
}

/// Parses output that must be a single JSON value.
pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("output is not JSON ({e}): {s}"))
}
