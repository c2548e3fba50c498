//! Records: the events this program writes itself, sent in-band to the intake next to the
//! audit events (DESIGN.md §2.5, §2.6).
//!
//! A **gap record** marks a loss where it happened, so an analyst searching the SIEM sees the
//! hole instead of a silent absence:
//!
//! ```json
//! {"kind":"KubeAuditShipperGap","message":"kube-audit-shipper on node-1: …",
//!  "kube_audit_shipper":{"record":"gap","reason":"deleted_before_read","host":"node-1",
//!   "file":"/var/log/kubernetes/audit/audit-2026-11-24T14-35-36.770.log",
//!   "lost_bytes":1048576,"exact":false,"detected_at":"2026-11-24T14:40:02.120000Z"}}
//! ```
//!
//! `reason` is one of `deleted_before_read` (rotated away and pruned before it was read; after
//! downtime also with `lost_from`/`lost_until`: every event of that log with a
//! `requestReceivedTimestamp` in this window that did not arrive is covered, since other
//! backups may have been pruned unseen with it),
//! `deleted_unseen` (files created, rotated and pruned while the reader was stalled, never
//! seen; `lost_bytes` 0 means unknown, the count is in `detail`),
//! `truncated` (copytruncate), `too_many_rotated`, `unreadable`, `line_too_long` (a line over
//! `max_line_bytes`, with `offset`), `evicted` (bulk events dropped under the spool cap,
//! with `lost_events` and `first_event_at`), and `refused_by_intake` ([`refused`]: events
//! the intake did not take, with `lost_events`, the `segment` and, for a dead-lettered event,
//! the HTTP `status`, the first 200 bytes of the `answer` and where it is kept). `exact: false` means `lost_bytes` is a lower
//! bound. A record is sent with the time of the loss (the evicted events' earliest time, else
//! the detection time): the `timestamp` of its own `/array` entry, or with `plain_batch` the
//! header time of the batch it is in.
//!
//! An **unparsed record** carries a line that is not an audit event (not JSON, not an object),
//! so that nothing read is dropped silently: `{"kind":"KubeAuditShipperUnparsed",
//! "kube_audit_shipper":{"record":"unparsed","error":…,"host":…,"file":…,"offset":…,
//! "line":"<the line, as a JSON string, cut so the record fits `MAX_EVENT_BYTES`>","line_bytes":N,"truncated":bool}}`.
//! Through `/array` it is cut to half that (escaped as the entry's `json` string, a record at
//! most doubles) and sent with the time its line was read; with `plain_batch` it takes the
//! time of the batch it is in.

use crate::extract::json_string;
use crate::timestamp::format_micros;
use std::io::Write;
use std::path::Path;

/// The node's name, for records.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// What was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss<'a> {
    pub reason: &'a str,
    pub file: &'a Path,
    pub bytes: u64,
    pub exact: bool,
    /// Events lost, when known (evicted batches).
    pub events: Option<u64>,
    /// Offset in the file where the loss starts (a too-long line, the unread rest of a
    /// deleted or truncated file).
    pub offset: Option<u64>,
    /// When the lost events happened, if known (unix µs).
    pub first_event_at: Option<i64>,
    /// Generations lost while the shipper was down: every event of the file's log with a
    /// time in `from..=until` (unix µs; `from` unknown when `None`) that did not arrive.
    pub window: Option<(Option<i64>, i64)>,
    pub detail: Option<&'a str>,
}

/// Appends a gap record (no newline).
pub fn gap(out: &mut Vec<u8>, host: &str, loss: &Loss<'_>, now_micros: i64) {
    let file = loss.file.to_string_lossy();
    let what = match loss.events {
        Some(n) => format!("{n} events"),
        None => format!(
            "{}{} bytes",
            if loss.exact { "" } else { "at least " },
            loss.bytes
        ),
    };
    let mut message = format!(
        "kube-audit-shipper on {host}: {what} of {file} lost ({})",
        loss.reason.replace('_', " ")
    );
    if let Some((from, until)) = loss.window {
        let from = from.map_or("an unknown time".to_string(), format_micros);
        let _ = std::fmt::Write::write_fmt(
            &mut message,
            format_args!(
                ", with any other events of this log from {from} to {}",
                format_micros(until)
            ),
        );
    }
    out.extend_from_slice(b"{\"kind\":\"KubeAuditShipperGap\",\"message\":");
    json_string(out, &message, usize::MAX);
    out.extend_from_slice(b",\"kube_audit_shipper\":{\"record\":\"gap\",\"reason\":");
    json_string(out, loss.reason, usize::MAX);
    out.extend_from_slice(b",\"host\":");
    json_string(out, host, usize::MAX);
    out.extend_from_slice(b",\"file\":");
    json_string(out, &file, 4096);
    let _ = write!(
        out,
        ",\"lost_bytes\":{},\"exact\":{}",
        loss.bytes, loss.exact
    );
    if let Some(n) = loss.events {
        let _ = write!(out, ",\"lost_events\":{n}");
    }
    if let Some(o) = loss.offset {
        let _ = write!(out, ",\"offset\":{o}");
    }
    if let Some(t) = loss.first_event_at {
        let _ = write!(out, ",\"first_event_at\":\"{}\"", format_micros(t));
    }
    if let Some((from, until)) = loss.window {
        if let Some(from) = from {
            let _ = write!(out, ",\"lost_from\":\"{}\"", format_micros(from));
        }
        let _ = write!(out, ",\"lost_until\":\"{}\"", format_micros(until));
    }
    if let Some(d) = loss.detail {
        out.extend_from_slice(b",\"detail\":");
        json_string(out, d, 4096);
    }
    let _ = write!(
        out,
        ",\"detected_at\":\"{}\"}}}}",
        format_micros(now_micros)
    );
}

/// Events the intake refused (DESIGN.md §7): fewer `event_ids` than events in an accepted
/// segment, or a single event refused with a permanent status and dead-lettered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused<'a> {
    /// The log file (the `logfiles:` entry's `filepath`).
    pub file: &'a str,
    /// The spool segment's name.
    pub segment: &'a str,
    pub events: u64,
    /// The segment's earliest event time (unix µs), if known.
    pub first_event_at: Option<i64>,
    /// Dead-lettered: the status, the start of the answer (without the key), and
    /// `Some(path)` where it is kept or `None` when the folder was full and it was dropped.
    pub dead_letter: Option<(u16, &'a str, Option<&'a str>)>,
}

/// Appends a `refused_by_intake` gap record (no newline).
pub fn refused(out: &mut Vec<u8>, host: &str, r: &Refused<'_>, now_micros: i64) {
    let how = match r.dead_letter {
        None => "not confirmed by the intake's answer (fewer event ids than events)".to_string(),
        Some((status, _, Some(kept))) => format!("refused with HTTP {status}; kept in {kept}"),
        Some((status, _, None)) => {
            format!("refused with HTTP {status}; not kept (the dead-letter folder is full)")
        }
    };
    let message = format!(
        "kube-audit-shipper on {host}: {} events of {} refused by the intake ({how})",
        r.events, r.file
    );
    out.extend_from_slice(b"{\"kind\":\"KubeAuditShipperGap\",\"message\":");
    json_string(out, &message, 4096);
    out.extend_from_slice(
        b",\"kube_audit_shipper\":{\"record\":\"gap\",\"reason\":\"refused_by_intake\",\"host\":",
    );
    json_string(out, host, 256);
    out.extend_from_slice(b",\"file\":");
    json_string(out, r.file, 4096);
    let _ = write!(out, ",\"lost_events\":{},\"segment\":", r.events);
    json_string(out, r.segment, 256);
    if let Some(t) = r.first_event_at {
        let _ = write!(out, ",\"first_event_at\":\"{}\"", format_micros(t));
    }
    if let Some((status, answer, kept)) = r.dead_letter {
        let _ = write!(out, ",\"status\":{status},\"answer\":");
        json_string(out, answer, 1024);
        out.extend_from_slice(b",\"dead_letter\":");
        match kept {
            Some(path) => json_string(out, path, 4096),
            None => out.extend_from_slice(b"null"),
        }
    }
    let _ = write!(
        out,
        ",\"detected_at\":\"{}\"}}}}",
        format_micros(now_micros)
    );
}

/// Appends an unparsed record for `line` (no newline), at most `max_bytes` long.
pub fn unparsed(
    out: &mut Vec<u8>,
    host: &str,
    file: &Path,
    offset: u64,
    error: &str,
    line: &[u8],
    max_bytes: usize,
) {
    let start = out.len();
    out.extend_from_slice(b"{\"kind\":\"KubeAuditShipperUnparsed\",\"kube_audit_shipper\":{\"record\":\"unparsed\",\"error\":");
    json_string(out, error, 1024);
    out.extend_from_slice(b",\"host\":");
    json_string(out, host, 256);
    out.extend_from_slice(b",\"file\":");
    json_string(out, &file.to_string_lossy(), 4096);
    let _ = write!(
        out,
        ",\"offset\":{offset},\"line_bytes\":{},\"line\":",
        line.len()
    );
    let text = String::from_utf8_lossy(line);
    // Escaping can grow the text up to 6×; cut it so the record fits (closing bytes kept).
    let room = max_bytes.saturating_sub(out.len() - start + 40);
    let mut cap = room.min(text.len());
    loop {
        let mark = out.len();
        json_string(out, &text, cap);
        if out.len() - start + 40 <= max_bytes || cap == 0 {
            break;
        }
        out.truncate(mark);
        cap /= 2;
    }
    let _ = write!(out, ",\"truncated\":{}}}}}", cap < text.len());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::MAX_EVENT_BYTES;

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
    }

    #[test]
    fn a_gap_record_is_json_and_says_what_was_lost() {
        let mut out = Vec::new();
        let loss = Loss {
            reason: "evicted",
            file: Path::new("/var/log/k\"8s/audit.log"),
            bytes: 5000,
            exact: true,
            events: Some(42),
            offset: None,
            first_event_at: Some(1_795_000_000_000_000),
            window: None,
            detail: None,
        };
        gap(&mut out, "node-1", &loss, 1_795_000_100_000_000);
        let v = json(&out);
        assert_eq!(v["kind"], "KubeAuditShipperGap");
        let k = &v["kube_audit_shipper"];
        assert_eq!(k["reason"], "evicted");
        assert_eq!(k["lost_events"], 42);
        assert_eq!(k["file"], "/var/log/k\"8s/audit.log");
        assert!(v["message"].as_str().unwrap().contains("42 events"));
        assert!(k["first_event_at"].as_str().unwrap().starts_with("2026-"));
    }

    #[test]
    fn a_gap_after_downtime_names_its_time_window() {
        let mut out = Vec::new();
        let loss = Loss {
            reason: "deleted_before_read",
            file: Path::new("/var/log/audit/audit-2026-11-24T14-35-36.770.log.gz"),
            bytes: 1200,
            exact: true,
            events: None,
            offset: None,
            first_event_at: None,
            window: Some((Some(1_795_000_000_000_000), 1_795_000_060_000_000)),
            detail: None,
        };
        gap(&mut out, "node-1", &loss, 1_795_000_100_000_000);
        let v = json(&out);
        let k = &v["kube_audit_shipper"];
        assert_eq!(k["lost_from"], "2026-11-18T11:06:40.000000Z");
        assert_eq!(k["lost_until"], "2026-11-18T11:07:40.000000Z");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains("from 2026-11-18T11:06:40"), "{message}");
        out.clear();
        let unknown_start = Loss {
            window: Some((None, 1_795_000_060_000_000)),
            ..loss
        };
        gap(&mut out, "node-1", &unknown_start, 1_795_000_100_000_000);
        let v = json(&out);
        assert!(v["kube_audit_shipper"].get("lost_from").is_none());
        assert!(v["message"].as_str().unwrap().contains("an unknown time"));
    }

    #[test]
    fn a_refusal_record_names_the_segment_the_count_and_the_answer() {
        let mut out = Vec::new();
        let short = Refused {
            file: "/var/log/audit.log",
            segment: "00000000000000000003-c-1795000000000000-10.array.gz",
            events: 2,
            first_event_at: Some(1_795_000_000_000_000),
            dead_letter: None,
        };
        refused(&mut out, "node-1", &short, 1_795_000_100_000_000);
        let v = json(&out);
        let k = &v["kube_audit_shipper"];
        assert_eq!(k["reason"], "refused_by_intake");
        assert_eq!(k["lost_events"], 2);
        assert_eq!(k["segment"], short.segment);
        assert!(k.get("status").is_none());
        out.clear();
        let dead = Refused {
            events: 1,
            dead_letter: Some((
                400,
                "{\"message\":\"bad \\\"event\\\"\"}",
                Some("/s/refused/x.gz"),
            )),
            ..short
        };
        refused(&mut out, "node-1", &dead, 1_795_000_100_000_000);
        let v = json(&out);
        let k = &v["kube_audit_shipper"];
        assert_eq!(k["status"], 400);
        assert_eq!(k["answer"], "{\"message\":\"bad \\\"event\\\"\"}");
        assert_eq!(k["dead_letter"], "/s/refused/x.gz");
        assert!(v["message"].as_str().unwrap().contains("HTTP 400"));
    }

    #[test]
    fn an_unparsed_record_keeps_the_line_within_the_limit() {
        let mut out = Vec::new();
        let line = b"not json \"quoted\" \x01\xff";
        unparsed(
            &mut out,
            "n",
            Path::new("/a.log"),
            7,
            "expected an object",
            line,
            MAX_EVENT_BYTES,
        );
        let v = json(&out);
        assert_eq!(
            v["kube_audit_shipper"]["line"],
            "not json \"quoted\" \u{1}\u{fffd}"
        );
        assert_eq!(v["kube_audit_shipper"]["truncated"], false);
        // A huge line of characters that escape to 6 bytes each still fits.
        let big = vec![1u8; 1 << 20];
        out.clear();
        unparsed(
            &mut out,
            "n",
            Path::new("/a.log"),
            0,
            "e",
            &big,
            MAX_EVENT_BYTES,
        );
        assert!(out.len() <= MAX_EVENT_BYTES, "{}", out.len());
        let v = json(&out);
        assert_eq!(v["kube_audit_shipper"]["truncated"], true);
        assert_eq!(v["kube_audit_shipper"]["line_bytes"], 1 << 20);
    }
}
