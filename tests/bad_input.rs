//! Bad input never panics and is reported precisely; the `extract` command keeps every good
//! event, in order, and names the file and line of every bad one.

mod support;

use kube_audit_shipper::extract::{ExtractError, Extractor, Format, MAX_EVENT_BYTES};
use std::io::Write;
use std::process::{Command, Stdio};
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
    assert!(run.status.success(), "{run:?}");
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
    assert_eq!(stderr.lines().count(), 4, "{stderr}");

    // --strict: stops at the first bad line, after writing the good ones before it.
    let run = shipper()
        .args(["extract", "--strict", "--max-line-bytes", "20000"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert_eq!(String::from_utf8(run.stdout).unwrap().lines().count(), 1);
    assert!(
        String::from_utf8(run.stderr)
            .unwrap()
            .contains(":4: skipped")
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
    let mut child = shipper()
        .args(["extract", "--format", "raw", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let run = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(run.status.success());
    assert_eq!(
        String::from_utf8(run.stdout).unwrap(),
        samples[..50].join("\n") + "\n"
    );
}
