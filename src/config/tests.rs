//! Tests of the whole parse: YAML text in, a `Config` or the operator's message out.

use super::*;

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("/etc/kas/config.yaml"))
}

#[test]
fn the_seed_snippet_works_with_a_real_key() {
    let cfg = parse(
        "logfiles:\n    - filepath: /var/log/kubernetes/apiserver/audit.log  # Path to the file to watch\n      intakekey: 0a1b2c3d-key  # Intake key to use to send the events\n",
    )
    .unwrap();
    assert_eq!(cfg.logfiles.len(), 1);
    assert_eq!(cfg.logfiles[0].key, "0a1b2c3d-key");
    assert_eq!(cfg.intake_url, "https://intake.sekoia.io");
    assert_eq!(cfg.spool_max_bytes, 256 << 20);
    assert_eq!(
        cfg.metrics_address,
        Some(SocketAddr::from(([127, 0, 0, 1], 9880)))
    );
    assert!(!format!("{cfg:?}").contains("0a1b2c3d-key"));
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn a_key_that_yaml_reads_as_another_scalar_is_refused_without_echoing_it() {
    // Found by fuzz/fuzz_targets/config.rs: serde's own message quoted the float.
    for value in ["12345.678", "1234567890123", "true", "1e300", "-42"] {
        let e = parse(&format!(
            "logfiles:\n  - filepath: /x/audit.log\n    intakekey: {value}\n"
        ))
        .unwrap_err();
        assert!(!e.contains(value), "{value}: {e}");
        assert!(e.contains("quote the key"), "{value}: {e}");
    }
}

#[test]
fn the_seed_placeholder_gets_a_helpful_error() {
    let e =
        parse("logfiles:\n  - filepath: /x/audit.log\n    intakekey: {intake key}\n").unwrap_err();
    assert!(e.contains("placeholder"), "{e}");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn unknown_keys_and_bad_values_name_key_and_line() {
    let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\nspool_max: 1\n").unwrap_err();
    assert!(e.contains("spool_max") && e.contains("line 4"), "{e}");
    let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\n\ngzip_level: 12\n").unwrap_err();
    assert!(
        e.contains("gzip_level") && e.contains("got 12") && e.contains("line 5"),
        "{e}"
    );
    let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\nregion: mars1\n").unwrap_err();
    assert!(e.contains("mars1") && e.contains("line 4"), "{e}");
    let e = parse(
        "logfiles:\n  - filepath: /x\n    intakekey: k\nOptimizationRules:\n  - action: 1\n    filters:\n      - {field: user.nam, operator: \"==\", value: x}\n",
    )
    .unwrap_err();
    assert!(e.contains("user.nam") && e.contains("line 7"), "{e}");
    let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\nspool_max_bytes: 1MiB\n")
        .unwrap_err();
    assert!(e.contains("spool_max_bytes") && e.contains("line 4"), "{e}");
}

#[test]
fn options_and_rules() {
    let cfg = parse(
        r#"
logfiles:
  - filepath: /var/lib/rancher/k3s/server/logs/audit.log
    intakekey: "k1"
    OptimizationRules:
      - action: 1
        filters:
          - field: http.response.status_code
            operator: "<"
            value: 300
  - filepath: /other/audit*.log
    intakekey: k2
region: usa1
spool_max_bytes: 64MiB
batch_max_bytes: 512KiB
batch_linger_secs: 0.5
output: ecs
start_at: end
metrics_address: "off"
HTTPProxyURL: http://proxy:3128
OptimizationRules:
  - name: kube-proxy reads
    action: 1
    filters:
      - field: user.name
        operator: "=="
        value: system:kube-proxy
      - field: event.action
        operator: "not contains"
        value: delete
"#,
    )
    .unwrap();
    assert_eq!(
        cfg.intake_url,
        "https://intake.usa1.sekoia.io/api/v1/intake-http"
    );
    assert_eq!(cfg.batch.max_bytes, 512 * 1024);
    assert_eq!(cfg.batch.linger, Duration::from_millis(500));
    assert_eq!(cfg.format, Format::Ecs);
    assert_eq!(cfg.start_at, StartAt::End);
    assert_eq!(cfg.metrics_address, None);
    assert_eq!(cfg.proxy.as_deref(), Some("http://proxy:3128"));
    assert_eq!(cfg.spool_share(), 32 << 20);
    assert_eq!(cfg.logfiles[0].rules.len(), 2);
    assert_eq!(cfg.logfiles[0].rules[0].name, "kube-proxy reads");
    assert_eq!(
        cfg.logfiles[0].rules[1].name,
        "logfiles[0].OptimizationRules[0]"
    );
    assert_eq!(cfg.logfiles[1].rules.len(), 1);
}

#[test]
fn keys_from_a_file_or_the_environment() {
    let dir = std::env::temp_dir().join(format!("kas-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), "file-key\n").unwrap();
    let path = dir.join("config.yaml");
    let cfg = Config::parse(
        "logfiles:\n  - filepath: /x\n    intakekey_file: key\n",
        &path,
    )
    .unwrap();
    assert_eq!(cfg.logfiles[0].key, "file-key");
    let e = Config::parse(
        "logfiles:\n  - filepath: /x\n    intakekey_env: KAS_TEST_UNSET_VARIABLE\n",
        &path,
    )
    .unwrap_err();
    assert!(e.contains("KAS_TEST_UNSET_VARIABLE is not set"), "{e}");
    let e = Config::parse(
        "logfiles:\n  - filepath: /x\n    intakekey: a\n    intakekey_file: key\n",
        &path,
    )
    .unwrap_err();
    assert!(e.contains("not several"), "{e}");
    let e = Config::parse("logfiles:\n  - filepath: /x\n", &path).unwrap_err();
    assert!(e.contains("no intake key"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

const AT: &str = "config /etc/kas/config.yaml: ";

#[test]
fn a_quoted_placeholder_gets_the_same_explanation_as_the_unquoted_one() {
    let explanation = "not a key: `{intake key}` is the placeholder of Sekoia's page; \
                       replace it with your intake key (quoted if it starts with a special \
                       character) at line 3 column 16";
    for quoted in ["\"{intake key}\"", "'{intake key}'"] {
        let e = parse(&format!(
            "logfiles:\n  - filepath: /x/audit.log\n    intakekey: {quoted}\n"
        ))
        .unwrap_err();
        assert_eq!(
            e,
            format!("{AT}logfiles[0].intakekey: intakekey is {explanation}")
        );
    }
    let e =
        parse("logfiles:\n  - filepath: /x/audit.log\n    intakekey: {intake key}\n").unwrap_err();
    assert_eq!(
        e,
        format!("{AT}logfiles[0].intakekey: intakekey is a YAML mapping, {explanation}")
    );
}

#[test]
fn a_misspelled_key_has_its_line_and_column() {
    // The first key: yaml_serde's own message leaves out "line 1 column 1".
    let e = parse("logfile:\n  - filepath: /x\n    intakekey: k\n").unwrap_err();
    assert!(
        e.starts_with(&format!(
            "{AT}logfile: unknown key, did you mean `logfiles`? (the keys here are \
             `logfiles`, `region`, `intake_url`, "
        )),
        "{e}"
    );
    assert!(
        e.ends_with("`OptimizationRules`) at line 1 column 1"),
        "{e}"
    );
    let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\n\nregoin: fra1\n").unwrap_err();
    assert!(
        e.starts_with(&format!("{AT}regoin: unknown key, did you mean `region`? ")),
        "{e}"
    );
    assert!(e.ends_with(") at line 5 column 1"), "{e}");
    // Nothing close: no suggestion.
    let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\n    color: red\n").unwrap_err();
    assert_eq!(
        e,
        format!(
            "{AT}logfiles[0].color: unknown key (the keys here are `filepath`, \
             `intakekey`, `intakekey_file`, `intakekey_env`, `OptimizationRules`) at line 4 \
             column 5"
        )
    );
}

#[test]
fn errors_in_the_second_logfiles_entry_are_at_its_lines() {
    let two = |second: &str| {
        parse(&format!(
            "logfiles:\n  - filepath: /x\n    intakekey: k1\n  - filepath: {second}\n"
        ))
        .unwrap_err()
    };
    assert_eq!(
        two("/y\n    intakeky: k2"),
        format!(
            "{AT}logfiles[1].intakeky: unknown key, did you mean `intakekey`? (the keys \
             here are `filepath`, `intakekey`, `intakekey_file`, `intakekey_env`, \
             `OptimizationRules`) at line 5 column 5"
        )
    );
    assert_eq!(
        two("/y"),
        format!(
            "{AT}logfiles[1]: /y: no intake key; add `intakekey: <key>` (or \
             `intakekey_file: PATH`, or `intakekey_env: VARIABLE`) at line 4 column 5"
        )
    );
    assert_eq!(
        two("/x\n    intakekey: k2"),
        format!(
            "{AT}logfiles[1].filepath: \"/x\" is listed twice (also logfiles[0]); give \
             each file once at line 4 column 5"
        )
    );
    assert_eq!(
        two("/y\n    intakekey_env: KAS_TEST_UNSET_VARIABLE"),
        format!(
            "{AT}logfiles[1].intakekey_env: the environment variable \
             KAS_TEST_UNSET_VARIABLE is not set at line 5 column 5"
        )
    );
    assert_eq!(
        two("/y\n    intakekey: k2\n    intakekey_file: key"),
        format!(
            "{AT}logfiles[1].intakekey_file: give one of intakekey, intakekey_file, \
             intakekey_env, not several at line 6 column 5"
        )
    );
    assert_eq!(
        two("/y\n    intakekey: k2\n    OptimizationRules: []\n    intakekey: k3"),
        format!("{AT}logfiles[1].intakekey: given twice; keep one at line 7 column 5")
    );
    assert_eq!(
        two("/y\n    intakekey: \" k2\""),
        format!(
            "{AT}logfiles[1].intakekey: intakekey holds spaces or characters that cannot \
             go in an HTTP header; copy the intake key again from Sekoia's intake page at \
             line 5 column 16"
        )
    );
}

#[test]
fn a_bad_value_in_a_rule_of_the_second_entry_is_at_its_line() {
    let rule = |filter: &str| {
        format!("      - action: 1\n        filters:\n          - field: user.name\n{filter}")
    };
    let good = rule("            operator: \"==\"\n            value: a\n");
    let two = |filter: &str| {
        parse(&format!(
            "logfiles:\n  - filepath: /x\n    intakekey: k\n    OptimizationRules:\n{good}  \
             - filepath: /y\n    intakekey: k\n    OptimizationRules:\n{}",
            rule(filter)
        ))
        .unwrap_err()
    };
    // Line 16 is the second entry's operator; line 8 the first's.
    let e = two("            operator: \"=~\"\n            value: a\n");
    assert!(
        e.starts_with(&format!(
            "{AT}logfiles[1].OptimizationRules[0].filters[0].operator: operator \"=~\" is \
             unknown; known: ==, !=, "
        )),
        "{e}"
    );
    assert!(e.ends_with(" at line 16 column 23"), "{e}");
    assert_eq!(
        two("            operator: exists\n            value: a\n"),
        format!(
            "{AT}logfiles[1].OptimizationRules[0].filters[0].value: operator \"exists\" \
             takes no `value`; remove it at line 17 column 13"
        )
    );
    assert_eq!(
        two("            operator: \"==\"\n"),
        format!(
            "{AT}logfiles[1].OptimizationRules[0].filters[0]: operator \"==\" needs a \
             `value` at line 15 column 13"
        )
    );
}

#[test]
fn checks_of_several_keys_are_where_the_parser_finds_the_key() {
    // The comment mentions `intake_url` first: a text search found line 1.
    let e = parse(
        "# intake_url: set region or intake_url, not both\nregion: fra1\nlogfiles:\n  - \
         filepath: /x\n    intakekey: k\nintake_url: https://intake.example\n",
    )
    .unwrap_err();
    assert_eq!(
        e,
        format!(
            "{AT}intake_url: give either `intake_url` or `region`, not both at line 6 \
             column 1"
        )
    );
    let e =
        parse("logfiles:\n  - filepath: /x\n    intakekey: k\nclient_key: /k.pem\n").unwrap_err();
    assert_eq!(
        e,
        format!("{AT}client_key: needs `client_cert` too at line 4 column 1")
    );
    let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\nbatch_max_bytes: 20MiB\n")
        .unwrap_err();
    assert_eq!(
        e,
        format!(
            "{AT}batch_max_bytes: 20971520 bytes: expected 1 KiB to 10 MiB (the intake's \
             request limit) at line 4 column 18"
        )
    );
    let e = parse(
        "spool_max_bytes: 6MiB\nlogfiles:\n  - filepath: /x\n    intakekey: k\n  - \
         filepath: /y\n    intakekey: k\n",
    )
    .unwrap_err();
    assert_eq!(
        e,
        format!(
            "{AT}spool_max_bytes: a spool of 6291456 bytes for 2 log file(s) leaves \
             3145728 each; each needs at least 4 × batch_max_bytes = 4194304: raise \
             spool_max_bytes or lower batch_max_bytes at line 1 column 1"
        )
    );
    let e = parse("region: fra1\nlogfiles:\n  - filepath: /x\n    intakekey: k\nregion: usa1\n")
        .unwrap_err();
    assert_eq!(
        e,
        format!("{AT}region: given twice; keep one at line 5 column 1")
    );
    let e = parse("logfiles: []\n").unwrap_err();
    assert_eq!(
        e,
        format!(
            "{AT}logfiles: at least one entry is needed (`- filepath: ...` with \
             `intakekey: ...`), unless a `webhook:` section is the input at line 1 column 1"
        )
    );
}

#[test]
fn a_key_file_that_holds_no_key_is_named_and_not_echoed() {
    let dir = std::env::temp_dir().join(format!("kas-config-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("config.yaml");
    let text = "logfiles:\n  - filepath: /x\n    intakekey: k\n  - filepath: /y\n    \
                intakekey_file: key\n";
    let at = format!("config {}: logfiles[1].intakekey_file: ", path.display());
    let line = " at line 5 column 5";
    let key = dir.join("key");
    std::fs::write(&key, "{intake key}\n").unwrap();
    let e = Config::parse(text, &path).unwrap_err();
    assert_eq!(
        e,
        format!(
            "{at}the key in {} is not a key: `{{intake key}}` is the placeholder of \
             Sekoia's page; replace it with your intake key (quoted if it starts with a \
             special character){line}",
            key.display()
        )
    );
    std::fs::write(&key, "secret with spaces\n").unwrap();
    let e = Config::parse(text, &path).unwrap_err();
    assert!(!e.contains("secret"), "{e}");
    assert!(e.starts_with(&at) && e.ends_with(line), "{e}");
    std::fs::remove_file(&key).unwrap();
    let e = Config::parse(text, &path).unwrap_err();
    assert!(
        e.starts_with(&format!("{at}cannot read {}: ", key.display())),
        "{e}"
    );
    assert!(e.ends_with(line), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `logfiles` with one entry, then `rest`: the key given in `rest` is on line 4.
fn with(rest: &str) -> Result<Config, String> {
    parse(&format!(
        "logfiles:\n  - filepath: /x\n    intakekey: k\n{rest}"
    ))
}

#[test]
fn every_region_is_in_the_one_table_and_sgp1_has_no_path_prefix() {
    let url = |region: &str| with(&format!("region: {region}\n")).map(|c| c.intake_url);
    assert_eq!(url("sgp1").as_deref(), Ok("https://intake.sgp1.sekoia.io"));
    assert_eq!(url("SGP1").as_deref(), Ok("https://intake.sgp1.sekoia.io"));
    assert_eq!(
        url("fra2").as_deref(),
        Ok("https://intake.fra2.sekoia.io/api/v1/intake-http")
    );
    for (region, base) in REGIONS {
        assert_eq!(url(region).as_deref(), Ok(*base));
    }
    assert_eq!(
        url("mars1"),
        Err(format!(
            "{AT}region: \"mars1\" is not a region: expected fra1, fra2, mco1, sgp1, uae1 or \
             usa1 (or set intake_url) at line 4 column 9"
        ))
    );
}

#[test]
fn plain_http_is_refused_unless_the_intake_is_on_a_loopback_address() {
    let url = |u: &str| with(&format!("intake_url: {u}\n")).map(|c| c.intake_url);
    for remote in [
        "http://intake.sekoia.io",
        "http://10.0.0.1:8080/relay",
        "http://127.0.0.1.nip.io",
    ] {
        let host = values::url_host(remote);
        assert_eq!(
            url(remote),
            Err(format!(
                "{AT}intake_url: plain http:// to {host:?} would send the intake key in clear \
                 text; http:// is accepted only for a loopback address (127.0.0.0/8, ::1, \
                 localhost: tests, a local relay): use https:// at line 4 column 1"
            ))
        );
    }
    for local in [
        "http://127.0.0.1:8443",
        "http://127.0.0.53/relay",
        "http://localhost:9000",
        "http://[::1]:8080",
        "https://intake.example.com",
    ] {
        assert_eq!(url(local).as_deref(), Ok(local));
    }
}

#[test]
fn a_rule_may_carry_the_agents_uuid_which_names_it() {
    let cfg = with(
        "OptimizationRules:\n  - uuid: 30bb044d-f7ba-448a-81c2-7f3c41a1fbf9\n    action: 1\n    \
         filters:\n      - {field: user.name, operator: ==, value: a}\n  - uuid: u2\n    \
         name: named\n    action: 1\n    filters:\n      - {field: user.name, operator: ==, \
         value: b}\n",
    )
    .unwrap();
    let names: Vec<&str> = cfg.logfiles[0]
        .rules
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(names, ["30bb044d-f7ba-448a-81c2-7f3c41a1fbf9", "named"]);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
}

#[test]
fn the_agents_own_keys_load_with_one_warning_each_and_others_stay_errors() {
    let cfg = with("LogCompress: false\nRemoteOptimizationRules: true\nroles: [event-collector]\n")
        .unwrap();
    let agent = "a key of the Sekoia Endpoint Agent; it has no effect here";
    assert_eq!(
        cfg.warnings,
        [
            format!(
                "{AT}LogCompress: {agent} (this program logs to stderr, for journald or the \
                 container runtime) at line 4 column 1"
            ),
            format!(
                "{AT}RemoteOptimizationRules: {agent} (rules are not fetched from the \
                 platform; copy them into `OptimizationRules`) at line 5 column 1"
            ),
            format!(
                "{AT}roles: {agent} (only the files in `logfiles` are shipped) at line 6 \
                 column 1"
            ),
        ]
    );
    // Not the agent's: an error, at its place; the agent's keys are not offered.
    let e = with("EventBufferCacheSize: 200\nAgentMode: fast\n").unwrap_err();
    assert!(
        e.starts_with(&format!(
            "{AT}AgentMode: unknown key (the keys here are `logfiles`, `region`, "
        )),
        "{e}"
    );
    assert!(
        e.ends_with("`OptimizationRules`) at line 5 column 1"),
        "{e}"
    );
    // Inside a `logfiles` entry the agent's keys are not accepted.
    let e = parse("logfiles:\n  - filepath: /x\n    intakekey: k\n    LogCompress: true\n")
        .unwrap_err();
    assert!(
        e.starts_with(&format!("{AT}logfiles[0].LogCompress: unknown key")),
        "{e}"
    );
}

#[test]
fn the_agent_config_file_loads_with_one_warning_per_agent_key() {
    let path = Path::new("tests/fixtures/agent-config.yaml");
    let cfg = Config::parse(include_str!("../../tests/fixtures/agent-config.yaml"), path)
        .unwrap_or_else(|e| panic!("{e}"));
    let at = "config tests/fixtures/agent-config.yaml: ";
    let agent = "a key of the Sekoia Endpoint Agent; it has no effect here";
    let log = "(this program logs to stderr, for journald or the container runtime)";
    assert_eq!(
        cfg.warnings,
        [
            format!(
                "{at}roles: {agent} (only the files in `logfiles` are shipped) at line 8 \
                 column 1"
            ),
            format!(
                "{at}EventBufferCacheSize: {agent} (the on-disk buffer here is \
                 `spool_max_bytes`) at line 11 column 1"
            ),
            format!("{at}EnableDNSResolutions: {agent} at line 13 column 1"),
            format!("{at}HashesExcludedPaths: {agent} at line 14 column 1"),
            format!("{at}LogMaxSize: {agent} {log} at line 16 column 1"),
            format!("{at}LogMaxBackups: {agent} {log} at line 17 column 1"),
            format!("{at}LogCompress: {agent} {log} at line 18 column 1"),
            format!(
                "{at}RemoteOptimizationRules: {agent} (rules are not fetched from the \
                 platform; copy them into `OptimizationRules`) at line 19 column 1"
            ),
        ]
    );
    // What does work here.
    assert_eq!(
        cfg.logfiles[0].filepath,
        "/var/log/kubernetes/apiserver/audit.log"
    );
    assert_eq!(
        cfg.proxy.as_deref(),
        Some("http://user:pass@proxy.example:3128")
    );
    let rule = &cfg.logfiles[0].rules[0];
    assert_eq!(rule.name, "30bb044d-f7ba-448a-81c2-7f3c41a1fbf9");
    assert_eq!(rule.filters.len(), 2);
}

#[test]
fn the_intake_format_defaults_to_array_and_plain_batch_takes_a_spread() {
    let cfg = with("").unwrap();
    assert_eq!(cfg.intake_format, IntakeFormat::Array);
    assert_eq!(cfg.batch.max_spread, Duration::from_secs(1));
    let cfg = with("intake_format: plain_batch\n").unwrap();
    assert_eq!(cfg.intake_format, IntakeFormat::PlainBatch);
    assert_eq!(cfg.batch.max_spread, Duration::from_secs(1));
    let cfg = with("intake_format: plain_batch\nevent_time_spread: 2.5\n").unwrap();
    assert_eq!(cfg.batch.max_spread, Duration::from_millis(2500));
    let cfg = with("intake_format: array\n").unwrap();
    assert_eq!(cfg.intake_format, IntakeFormat::Array);
    // Bad values and a spread that would do nothing: the key, the line and the column.
    let e = with("intake_format: jsons\n").unwrap_err();
    assert!(
        e.contains("intake_format") && e.contains("array or plain_batch") && e.contains("line 4"),
        "{e}"
    );
    let e = with("intake_format: plain_batch\nevent_time_spread: -1\n").unwrap_err();
    assert!(
        e.contains("event_time_spread") && e.contains("0 to 3600") && e.contains("line 5"),
        "{e}"
    );
    let e = with("event_time_spread: 1\n").unwrap_err();
    assert_eq!(
        e,
        format!(
            "{AT}event_time_spread: `event_time_spread` only applies with `intake_format: \
             plain_batch` (with the default `array` every event carries its own time); remove \
             it or set the format at line 4 column 1"
        )
    );
}

#[test]
fn the_webhook_section_alone_is_a_configuration_and_its_mistakes_are_named() {
    let cfg = parse("webhook:\n  intakekey: wh-key\n  OptimizationRules:\n    - name: r\n      action: 1\n      filters:\n        - {field: event.action, operator: \"==\", value: watch}\n")
        .unwrap();
    let w = cfg.webhook.as_ref().unwrap();
    assert_eq!(w.listen, SocketAddr::from(([127, 0, 0, 1], 9881)));
    assert_eq!((w.entry.key.as_str(), w.entry.rules.len()), ("wh-key", 1));
    assert_eq!(w.max_body_bytes, 64 << 20);
    assert!(cfg.logfiles.is_empty());
    assert_eq!(cfg.spool_share(), 256 << 20);
    assert!(!format!("{cfg:?}").contains("wh-key"));
    // With a log file too, the spool is shared.
    let both = parse(
        "logfiles:\n  - filepath: /x/audit.log\n    intakekey: k\nwebhook:\n  intakekey: k2\n",
    )
    .unwrap();
    assert_eq!(both.spool_share(), 128 << 20);
    let cases = [
        (
            "webhook:\n  listen: 0.0.0.0:9881\n  intakekey: k\n",
            "clear text",
            "line 2",
        ),
        (
            "webhook:\n  cert_file: /c.pem\n  intakekey: k\n",
            "key_file",
            "line 2",
        ),
        (
            "webhook:\n  client_ca_file: /ca.pem\n  intakekey: k\n",
            "need TLS",
            "line 2",
        ),
        (
            "webhook:\n  listen: localhost\n  intakekey: k\n",
            "IP:PORT",
            "line 2",
        ),
        (
            "webhook:\n  listen: 127.0.0.1:1\n",
            "no intake key",
            "line 1",
        ),
        (
            "webhook:\n  intakekey: k\n  max_body_bytes: 10\n",
            "1 KiB to 1 GiB",
            "line 3",
        ),
        (
            "webhook:\n  intakekey: k\n  lisen: 127.0.0.1:1\n",
            "lisen",
            "line 3",
        ),
    ];
    for (text, says, at) in cases {
        let e = parse(text).unwrap_err();
        assert!(e.contains(says) && e.contains(at), "{text}: {e}");
    }
    let tls = parse("webhook:\n  listen: 10.0.0.5:9881\n  cert_file: /c.pem\n  key_file: /k.pem\n  client_ca_file: /ca.pem\n  intakekey: k\n").unwrap();
    let w = tls.webhook.unwrap();
    assert!(w.tls.is_some() && w.client_ca.is_some());
}
