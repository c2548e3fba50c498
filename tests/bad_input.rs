//! Bad input never panics and is reported precisely; the `extract` command keeps every good
//! event, in order, and names the file and line of every bad one.

mod support;

use flate2::Compression;
use flate2::write::GzEncoder;
use kube_audit_shipper::extract::{ExtractError, Extractor, Format, MAX_EVENT_BYTES};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use support::{corpus, extract, json};

#[test]
fn malformed_lines_are_rejected_with_the_reason() {
    let deep = format!("{}{}", "[".repeat(600), "]".repeat(600));
    let deep_object = format!("{{\"a\":{}1{}}}", "{\"b\":".repeat(700), "}".repeat(700));
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not valid JSON"),
        (b"{\"a\":".to_vec(), "truncated"),
        (
            b"{\"verb\":\"get\",\"user\":{\"username\":\"x\"".to_vec(),
            "truncated",
        ),
        (b"{\"a\" 1}".to_vec(), "':'"),
        (b"{\"a\":1}}".to_vec(), "not valid JSON"),
        (b"{\"a\":1} {\"b\":2}".to_vec(), "not valid JSON"),
        (b"{\"a\":\"\\x\"}".to_vec(), "escape"),
        (b"{\"a\":\"\\ud800\"}".to_vec(), "not valid JSON"),
        (b"{\"a\":\"\xff\xfe\"}".to_vec(), "UTF-8"),
        (b"{\"a\":\"\xc3\"}".to_vec(), "UTF-8"),
        (b"{\"a\":\"tab\there\"}".to_vec(), "not valid JSON"),
        (b"{\"a\":01}".to_vec(), "not valid JSON"),
        (b"{1:2}".to_vec(), "not valid JSON"),
        (b"{\"a\":1,}".to_vec(), "not valid JSON"),
        (
            b"\"just a string\"".to_vec(),
            "a JSON string, not an object",
        ),
        (b"[1,2,3]".to_vec(), "a JSON array, not an object"),
        (b"42".to_vec(), "a JSON number, not an object"),
        (b"null".to_vec(), "a JSON null, not an object"),
        (b"true".to_vec(), "a JSON boolean, not an object"),
        (deep.into_bytes(), "nested deeper"),
        (deep_object.into_bytes(), "nested deeper"),
        (b"{\"a\":\"\0\"}".to_vec(), "not valid JSON"),
        // Beyond f64: valid JSON, but simd-json rejects it (no API server writes one).
        (b"{\"big\":1e400}".to_vec(), "invalid number"),
    ];
    let mut x = Extractor::new();
    for (line, want) in &cases {
        for format in [Format::Audit, Format::Ecs, Format::Raw] {
            let mut buf = line.clone();
            let len = buf.len();
            buf.resize(len + 64, b' ');
            let mut out = b"previous".to_vec();
            let err: ExtractError = x
                .extract(&mut buf, len, format, &mut out)
                .expect_err(&String::from_utf8_lossy(line));
            assert!(
                err.to_string().contains(want),
                "{:?}: got {err:?} = {err}",
                String::from_utf8_lossy(line)
            );
            assert_eq!(out, b"previous", "output untouched on error");
        }
    }
    // The extractor is still fine afterwards.
    assert!(support::out(&mut x, r#"{"verb":"get"}"#, Format::Ecs).contains("get"));
}

#[test]
fn mutated_events_never_panic_and_any_output_is_valid() {
    let mut rng = corpus::Rng::new(99);
    let events: Vec<String> = corpus::seed_raw()
        .into_iter()
        .chain(corpus::samples().into_iter().take(300))
        .collect();
    let mut x = Extractor::new();
    let mut ok = 0;
    let mut rejected = 0;
    for i in 0..20_000 {
        let mut line = events[i % events.len()].as_bytes().to_vec();
        corpus::mutate(&mut rng, &mut line);
        let len = line.len();
        line.resize(len + 64, 0);
        let format = rng.pick(&[Format::Audit, Format::Ecs, Format::Raw]);
        let mut out = Vec::new();
        match x.extract(&mut line, len, format, &mut out) {
            Ok(_) => {
                ok += 1;
                let text = std::str::from_utf8(&out).expect("UTF-8 output");
                let v = json(text);
                assert!(v.is_object());
                if format != Format::Raw {
                    assert!(out.len() <= MAX_EVENT_BYTES);
                }
            }
            Err(_) => rejected += 1,
        }
    }
    assert!(ok > 1000 && rejected > 1000, "ok {ok}, rejected {rejected}");
}

#[test]
fn unusual_but_valid_events_are_handled() {
    let mut x = Extractor::new();
    for line in [
        r#"{}"#,
        r#"{"user":"not-an-object","objectRef":[1,2],"sourceIPs":"1.2.3.4","annotations":null}"#,
        r#"{"verb":"get","verb":"delete"}"#,
        r#"{"sourceIPs":[],"user":{"groups":[1,null,{"a":"b"},"x"]}}"#,
        r#"{"responseStatus":{"code":1e3},"requestObject":{"spec":{"containers":{"not":"an array"}}}}"#,
        "{\"requestURI\":\"/\\u00e9\\u65e5\\ud83d\\ude80\\\"\\\\\\/\\b\\f\\n\\r\\t\\u0001\"}",
        " \t{\"verb\":\"get\"} \r",
        r#"{"n":18446744073709551615,"m":-9223372036854775808,"f":1.5e-300,"g":-0.0}"#,
        r#"{"requestObject":{"spec":{"containers":[{"n":123456789012345678901234567890}]}}}"#,
    ] {
        for format in [Format::Audit, Format::Ecs] {
            let (out, _) = extract(&mut x, line, format).unwrap_or_else(|e| panic!("{line}: {e}"));
            json(&out);
        }
        // The pruned form parses like the original.
        let audit = support::out(&mut x, line, Format::Audit);
        assert_eq!(
            support::out(&mut x, &audit, Format::Ecs),
            support::out(&mut x, line, Format::Ecs),
            "{line}"
        );
    }
    // Last duplicate wins, as in the intake's parser.
    let ecs = support::out(&mut x, r#"{"verb":"get","verb":"delete"}"#, Format::Ecs);
    assert_eq!(json(&ecs)["event"]["action"], "delete");
    // Escapes come back as the same text.
    let ecs = support::out(
        &mut x,
        "{\"requestURI\":\"/\\u00e9\\\"\\u0001\"}",
        Format::Ecs,
    );
    assert_eq!(json(&ecs)["url"]["path"], "/é\"\u{1}");
}

fn shipper() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kube-audit-shipper"))
}

/// `extract ARGS` with `input` on stdin (written from a thread: the output pipes must be
/// drained meanwhile).
fn extract_stdin(args: &[&str], input: Vec<u8>) -> std::process::Output {
    let mut child = shipper()
        .arg("extract")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let run = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    run
}

#[test]
fn extract_command_keeps_good_lines_in_order_and_names_bad_ones() {
    let dir = std::env::temp_dir().join(format!("kas-extract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("audit.log");
    let seed = corpus::seed_raw();
    let mut content = Vec::new();
    content.extend(format!("{}\r\n", seed[0]).as_bytes()); // CRLF
    content.extend(b"\n   \n"); // empty lines: ignored
    content.extend(b"{\"verb\":\"get\"\n"); // line 4: truncated
    content.extend(format!("{}\n", seed[1]).as_bytes());
    content.extend(b"{\"a\":\"\xff\"}\n"); // line 6: invalid UTF-8
    content.extend(b"[1]\n"); // line 7: not an object
    content.extend(format!("{}\n", "x".repeat(30_000)).as_bytes()); // line 8: over --max-line-bytes
    content.extend(seed[2].as_bytes()); // last line without newline
    std::fs::write(&file, &content).unwrap();

    let run = shipper()
        .args(["extract", "--format", "ecs", "--max-line-bytes", "20000"])
        .arg(&file)
        .output()
        .unwrap();
    // Lines were skipped: exit status 1, the good events written all the same.
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let stdout = String::from_utf8(run.stdout).unwrap();
    let ids: Vec<String> = stdout
        .lines()
        .map(|l| json(l)["event"]["code"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = seed[..3]
        .iter()
        .map(|l| json(l)["auditID"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, want);
    let stderr = String::from_utf8(run.stderr).unwrap();
    let name = file.display().to_string();
    for (line, why) in [
        (4, "truncated"),
        (6, "UTF-8"),
        (7, "array"),
        (8, "30000 bytes is over"),
    ] {
        assert!(
            stderr.contains(&format!("{name}:{line}: skipped")),
            "line {line} in {stderr}"
        );
        assert!(stderr.contains(why), "{why} in {stderr}");
    }
    assert_eq!(
        stderr.lines().last(),
        Some(
            "kube-audit-shipper: extract: 3 events written; 4 lines skipped \
             (1 cut short, 1 not UTF-8, 1 not a JSON object, 1 too long)"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 5, "{stderr}");

    // --strict: stops at the first bad line, after writing the good ones before it.
    let run = shipper()
        .args(["extract", "--strict", "--max-line-bytes", "20000"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(String::from_utf8(run.stdout).unwrap().lines().count(), 1);
    let stderr = String::from_utf8(run.stderr).unwrap();
    assert!(stderr.contains(":4: skipped"), "{stderr}");
    assert!(
        stderr.ends_with(
            "kube-audit-shipper: extract: 1 event written; 1 line skipped (1 cut short); \
             stopped there (--strict)\n"
        ),
        "{stderr}"
    );

    // A missing file is an error naming it; usage errors exit 2 too.
    let run = shipper()
        .args(["extract", "/nonexistent/audit.log"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8(run.stderr)
            .unwrap()
            .contains("/nonexistent/audit.log")
    );
    let run = shipper()
        .args(["extract", "--format", "xml"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8(run.stderr)
            .unwrap()
            .contains("--format \"xml\"")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn extract_command_reads_stdin_and_keeps_raw_lines_verbatim() {
    let samples = corpus::samples();
    let input = samples[..50].join("\n") + "\n";
    let run = extract_stdin(&["--format", "raw", "-"], input.into_bytes());
    assert!(run.status.success());
    assert_eq!(
        String::from_utf8(run.stdout).unwrap(),
        samples[..50].join("\n") + "\n"
    );
    assert_eq!(
        String::from_utf8(run.stderr).unwrap(),
        "kube-audit-shipper: extract: 50 events written; no lines skipped\n"
    );
}

/// A fresh directory for one test (tests run in parallel in one process).
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kas-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn extract_files(args: &[&str], files: &[&Path]) -> Output {
    shipper()
        .arg("extract")
        .args(args)
        .args(files)
        .output()
        .unwrap()
}

fn stderr_of(run: &Output) -> String {
    String::from_utf8(run.stderr.clone()).unwrap()
}

#[test]
fn extract_command_reads_gzip_told_by_content_with_every_member() {
    let dir = scratch("extract-gz");
    let events = corpus::samples()[..40].join("\n") + "\n";
    let plain = dir.join("audit.log");
    std::fs::write(&plain, &events).unwrap();
    let want = extract_files(&[], &[&plain]);
    assert_eq!(want.status.code(), Some(0), "{want:?}");
    assert_eq!(String::from_utf8_lossy(&want.stdout).lines().count(), 40);

    // One member, named .gz as by `--audit-log-compress`.
    let single = dir.join("audit-2026-01-01T00-00-00.000.log.gz");
    std::fs::write(&single, gzip(events.as_bytes())).unwrap();
    // A gzip file whose name does not say so.
    let renamed = dir.join("audit.log.1");
    std::fs::write(&renamed, gzip(events.as_bytes())).unwrap();
    // Two members, the boundary in the middle of a line (as `cat a.gz b.gz` makes).
    let multi = dir.join("multi.log.gz");
    let cut = events.len() / 2 + 7;
    let mut both = gzip(&events.as_bytes()[..cut]);
    both.extend(gzip(&events.as_bytes()[cut..]));
    std::fs::write(&multi, &both).unwrap();
    for file in [&single, &renamed, &multi] {
        let run = extract_files(&[], &[file]);
        assert_eq!(run.status.code(), Some(0), "{}: {run:?}", file.display());
        assert_eq!(run.stdout, want.stdout, "{}", file.display());
        assert_eq!(
            stderr_of(&run),
            "kube-audit-shipper: extract: 40 events written; no lines skipped\n"
        );
    }

    // Through stdin too.
    let run = extract_stdin(&["-"], both);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(run.stdout, want.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn extract_command_reports_corrupt_gzip_naming_the_file_counts_it_and_goes_on() {
    let dir = scratch("extract-gz-corrupt");
    let events = corpus::corpus(7, 2000).join("\n") + "\n";
    let whole = gzip(events.as_bytes());
    let broken = dir.join("audit.log.2.gz");
    std::fs::write(&broken, &whole[..whole.len() / 2]).unwrap();
    let after = dir.join("audit.log");
    std::fs::write(&after, corpus::seed_raw()[0].clone() + "\n").unwrap();

    let run = extract_files(&[], &[&broken, &after]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let stdout = String::from_utf8(run.stdout.clone()).unwrap();
    let written = stdout.lines().count();
    // What came before the damage is written, then the next file.
    assert!(written > 500 && written < 2000, "{written}");
    let stderr = stderr_of(&run);
    let name = broken.display().to_string();
    assert!(
        stderr.starts_with(&format!(
            "kube-audit-shipper: {name}: corrupt gzip data after line {}",
            written - 1
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("; the rest of this input is skipped\n"),
        "{stderr}"
    );
    assert!(
        stderr.ends_with(&format!(
            "kube-audit-shipper: extract: {written} events written; no lines skipped; \
             1 input with corrupt gzip data, read up to the damage\n"
        )),
        "{stderr}"
    );
    // Corrupt from its header on.
    std::fs::write(&broken, b"\x1f\x8bnot really gzip").unwrap();
    let run = extract_files(&["--strict"], &[&broken, &after]);
    assert_eq!(run.status.code(), Some(1));
    assert!(run.stdout.is_empty(), "--strict stops at the corrupt input");
    assert!(
        stderr_of(&run).starts_with(&format!(
            "kube-audit-shipper: {name}: corrupt gzip data before its first line"
        )),
        "{}",
        stderr_of(&run)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn extract_command_ends_with_a_summary_and_exits_1_only_when_a_line_was_skipped() {
    let dir = scratch("extract-summary");
    let seed = corpus::seed_raw();
    let clean = dir.join("clean.log");
    std::fs::write(&clean, format!("{}\n\n{}\n{}\n", seed[0], seed[1], seed[2])).unwrap();
    let run = extract_files(&[], &[&clean]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(
        stderr_of(&run),
        "kube-audit-shipper: extract: 3 events written; no lines skipped\n"
    );

    let bad = dir.join("bad.log");
    let cut = &seed[1][..seed[1].find("\"verb\":\"").unwrap() + 10];
    std::fs::write(&bad, format!("{}\n{cut}\n{}\nnot json\n", seed[0], seed[2])).unwrap();
    let run = extract_files(&[], &[&bad]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert_eq!(String::from_utf8_lossy(&run.stdout).lines().count(), 2);
    let name = bad.display();
    assert_eq!(
        stderr_of(&run),
        format!(
            "kube-audit-shipper: {name}:2: skipped: ends inside a string (truncated line?)\n\
             kube-audit-shipper: {name}:4: skipped: not valid JSON (unexpected character at byte 0)\n\
             kube-audit-shipper: extract: 2 events written; 2 lines skipped (1 not JSON, 1 cut short)\n"
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn extract_command_lists_20_bad_lines_in_a_row_then_counts_the_rest_per_input() {
    let dir = scratch("extract-junk");
    // A binary file given by mistake: 500 lines of bytes that are not even UTF-8.
    let mut rng = corpus::Rng::new(5);
    let mut junk = Vec::new();
    for _ in 0..500 {
        junk.push(0xff);
        junk.extend((0..80).map(|_| (rng.below(255) as u8).max(b'\n' + 1)));
        junk.push(b'\n');
    }
    let binary = dir.join("audit.log.bin");
    std::fs::write(&binary, &junk).unwrap();
    // Bad lines among good ones are never "in a row": each is listed.
    let seed = corpus::seed_raw();
    let mut mixed = String::new();
    for i in 0..30 {
        mixed += if i == 15 { &seed[0] } else { "[]" };
        mixed.push('\n');
    }
    let mixed_file = dir.join("mixed.log");
    std::fs::write(&mixed_file, &mixed).unwrap();

    let run = extract_files(&[], &[&binary, &mixed_file]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let stderr = stderr_of(&run);
    let lines: Vec<&str> = stderr.lines().collect();
    let (bin, mix) = (binary.display(), mixed_file.display());
    for (i, line) in lines[..20].iter().enumerate() {
        assert_eq!(
            *line,
            format!(
                "kube-audit-shipper: {bin}:{}: skipped: not valid UTF-8",
                i + 1
            )
        );
    }
    assert_eq!(
        lines[20],
        format!(
            "kube-audit-shipper: {bin}: 20 bad lines in a row; the rest of this input's bad \
             lines are counted, not listed"
        )
    );
    assert_eq!(
        lines[21],
        format!("kube-audit-shipper: {bin}: 480 more bad lines not listed (lines 21 to 500)")
    );
    // The next input is listed again, all 29 of its bad lines.
    assert_eq!(
        lines[22],
        format!("kube-audit-shipper: {mix}:1: skipped: a JSON array, not an object")
    );
    assert_eq!(
        lines[22..51]
            .iter()
            .filter(|l| l.starts_with(&format!("kube-audit-shipper: {mix}:")))
            .count(),
        29
    );
    assert_eq!(
        lines[51..],
        [
            "kube-audit-shipper: extract: 1 event written; 529 lines skipped \
          (500 not UTF-8, 29 not a JSON object)"
        ]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_lines_say_where_they_were_cut() {
    let in_string = "ends inside a string (truncated line?)";
    let in_object = "ends before the JSON object closes (truncated line?)";
    let in_array = "ends before the JSON array closes (truncated line?)";
    let cases: &[(&[u8], &str)] = &[
        (br#"{"verb":"get","user":{"username":"x"#, in_string),
        (br#"{"verb":"ge"#, in_string),
        (br#"{"verb"#, in_string),
        (br#"{""#, in_string),
        (br#"{"a":"x\"#, in_string),
        (br#"{"a":"x\""#, in_string),
        (br#""abc"#, in_string),
        (b"{\"a\":\"caf\xc3", in_string), // inside a multi-byte character
        (br#"{"a":"#, in_object),
        (br#"{"a":1"#, in_object),
        (br#"{"a":1,"#, in_object),
        (br#"{"a":"x""#, in_object),
        (br#"{"a":[1,2"#, in_object),
        (br#"{"a":{"b":"c"}"#, in_object),
        (br#"{"a":tru"#, in_object),
        (br#" {"#, in_object),
        (br#"[1,"#, in_array),
        (br#"[{"a":1}"#, in_array),
        // Not cut: what is wrong is said instead.
        (
            b"{\"a\":\"tab\there\"}",
            "not valid JSON (unescaped control character in a string at byte 9)",
        ),
        (
            br#"{"a":1 "b":2}"#,
            "not valid JSON (expected a string key, ',' or '}' in an object at byte 7)",
        ),
        (
            br#"[1 2]"#,
            "not valid JSON (expected ',' or ']' in an array at byte 3)",
        ),
        (br#"x"y"#, "not valid JSON (unexpected character at byte 0)"),
        (b"{\"a\":\"\xff\xfe", "not valid UTF-8"),
    ];
    let mut x = Extractor::new();
    for (line, want) in cases {
        for format in [Format::Audit, Format::Ecs, Format::Raw] {
            let mut buf = line.to_vec();
            let len = buf.len();
            buf.resize(len + 64, b' ');
            let err = x
                .extract(&mut buf, len, format, &mut Vec::new())
                .expect_err(&String::from_utf8_lossy(line));
            assert_eq!(
                err.to_string(),
                *want,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
    // simd-json's scalar first stage (32-bit ARM) checks UTF-8 before quotes: a cut inside a
    // multi-byte character reaches `pinpoint` as bad UTF-8, and is still a cut.
    let cut = b"{\"a\":\"caf\xc3";
    assert_eq!(
        ExtractError::InvalidUtf8.pinpoint(cut).to_string(),
        in_string
    );
    let bad = b"{\"a\":\"caf\xc3\"}";
    assert_eq!(
        ExtractError::InvalidUtf8.pinpoint(bad).to_string(),
        "not valid UTF-8"
    );
    let bad = b"{\"a\":\"\xff\x01";
    assert_eq!(
        ExtractError::OpenStringOrControl.pinpoint(bad).to_string(),
        "not valid UTF-8"
    );
}

/// Every cut of real events, at every byte, multi-block lines included: reported as cut,
/// inside a string exactly where serde_json says the input ended inside one.
#[test]
fn every_cut_of_an_event_is_reported_as_truncated() {
    let mut x = Extractor::new();
    let events = corpus::seed_raw();
    for event in events.iter().take(3) {
        let bytes = event.as_bytes();
        for cut in 1..bytes.len() {
            let line = &bytes[..cut];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let serde = serde_json::from_slice::<serde_json::Value>(line).unwrap_err();
            let mut buf = line.to_vec();
            buf.resize(cut + 64, b' ');
            let err = x
                .extract(&mut buf, cut, Format::Audit, &mut Vec::new())
                .expect_err("a cut event is not an event")
                .to_string();
            if serde.to_string().contains("while parsing a string") {
                assert_eq!(
                    err, "ends inside a string (truncated line?)",
                    "cut at {cut}"
                );
            } else if !matches!(bytes[cut - 1], b'0'..=b'9' | b'.' | b'-' | b'e' | b'E') {
                // (A number cut after `-`, `.` or `e` is reported as an invalid number.)
                assert_eq!(
                    err,
                    "ends before the JSON object closes (truncated line?)",
                    "cut at {cut}: {}",
                    String::from_utf8_lossy(line)
                );
            }
        }
    }
}

#[test]
fn max_line_bytes_takes_the_units_of_the_config_file() {
    let dir = scratch("extract-max-line");
    let file = dir.join("audit.log");
    let seed = corpus::seed_raw();
    let long = seed
        .iter()
        .find(|l| l.len() > 1024)
        .expect("an event over 1 KiB");
    std::fs::write(&file, format!("{}\n{long}\n", seed[0])).unwrap();
    for ok in ["8MiB", "8 MiB", "10MB", "8388608", "1GiB"] {
        let run = extract_files(&["--max-line-bytes", ok], &[&file]);
        assert_eq!(run.status.code(), Some(0), "{ok}: {run:?}");
    }
    let run = extract_files(&["--max-line-bytes", "1KiB"], &[&file]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        stderr_of(&run).contains(&format!(
            ":2: skipped: line of {} bytes is over the maximum of 1024 bytes",
            long.len()
        )),
        "{}",
        stderr_of(&run)
    );
    for (bad, why) in [
        (
            "8XB",
            "a size is a number of bytes, or a number with a unit: 512KiB, 8MiB, 1GiB, 10MB",
        ),
        ("lots", "a size is a number of bytes"),
        ("18446744073709551615", "expected 1 byte to 4GiB"),
        ("0", "expected 1 byte to 4GiB"),
    ] {
        let run = extract_files(&["--max-line-bytes", bad], &[&file]);
        assert_eq!(run.status.code(), Some(2), "{bad}: {run:?}");
        let stderr = stderr_of(&run);
        assert!(
            stderr.starts_with(&format!("kube-audit-shipper: --max-line-bytes \"{bad}\"")),
            "{stderr}"
        );
        assert!(stderr.contains(why), "{bad}: {stderr}");
        assert!(run.stdout.is_empty());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
