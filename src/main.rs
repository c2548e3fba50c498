//! Command line: `kube-audit-shipper COMMAND [OPTIONS]`. Arguments are parsed by hand with
//! lexopt (a few kilobytes) rather than a derive framework: the binary must stay small.

use kube_audit_shipper::cmd::{bench, extract};
use kube_audit_shipper::extract::Format;
use kube_audit_shipper::lines::DEFAULT_MAX_LINE;
use lexopt::prelude::*;
use std::process::ExitCode;

const USAGE: &str = "\
kube-audit-shipper — ships Kubernetes API-server audit logs to SEKOIA.IO

Usage:
  kube-audit-shipper run --config FILE
  kube-audit-shipper check --config FILE [--send-test-event]
  kube-audit-shipper extract [--format audit|ecs|raw] [--strict] [--max-line-bytes N] [FILE...]
  kube-audit-shipper bench [--rounds N] [--level 1-9] FILE
  kube-audit-shipper spool --config FILE list | resend [SEGMENT...] | drop SEGMENT...|--all
  kube-audit-shipper --help | --version

Commands:
  run       The service: follow the audit logs of FILE's `logfiles:` (across rotation and
            compression), keep batches in a crash-safe spool under `state_dir`, send them to
            the SEKOIA.IO intake. Stops cleanly on SIGTERM/SIGINT. FILE is the Sekoia agent's
            YAML (`logfiles:` with `filepath` and `intakekey`) plus optional keys (README).
  check     Validate FILE, list the files each entry matches, reach each intake (DNS, proxy,
            TLS: a GET, which stores nothing), print what `run` would do. Exit 1 on any
            problem. --send-test-event also posts one record of kind KubeAuditShipperCheck
            (host, version, time) to each intake and key: the only proof that the key is
            accepted, and it is stored in the SIEM.
  extract   Read audit-log lines from FILEs (or stdin, or -) and write one JSON line per
            event to stdout: `audit` (default) is the event pruned to what the SEKOIA.IO
            parser reads and the security context an analyst needs (annotations, user,
            objectRef, responseStatus, a binding's subjects), `ecs` the document the
            intake would produce, `raw` the line as read. gzip input is decompressed,
            every member of it (told by its first bytes, not by a .gz name). Lines that
            are not JSON objects are reported on stderr with file and line number and
            skipped; after 20 in a row from one input the rest of that input's are only
            counted. Corrupt gzip data is reported and the rest of that input skipped. A
            summary line on stderr ends the run. --strict stops at the first bad line or
            corrupt input.
  bench     Measure on this machine what shipping FILE would cost: extraction throughput,
            the SIMD implementation in use, bytes raw -> audit -> gzip, and the CPU share at
            the event rate found in FILE.

  spool     What waits in each entry's spool (segments, events, bytes, by class) and what
            the intake refused for good (the dead-letter folder `refused/`: each segment
            with its HTTP status and the start of the answer). `resend` moves dead-lettered
            segments (all, or those named) back into the queue after the cause is fixed;
            `drop` deletes them (name them, or --all). `list` may run beside the service;
            `resend` and `drop` refuse while the service runs (they take its state_dir lock).

Options:
  --config FILE         run, check, spool: the configuration file
  --send-test-event     check: post one labelled test record to verify the intake key
  --format F            output form of extract (audit, ecs, raw)
  --strict              extract: exit non-zero at the first line that is not an event
  --max-line-bytes N    longest line accepted (default 8MiB): bytes, or a number with
                        a unit: 512KiB, 8MiB, 1GiB (1024-based), 10MB (1000-based)
  --rounds N            bench: rounds per measurement, median reported (default 5)
  --level L             bench: gzip level of the full path (default 3, as shipped)
  -h, --help            this text
  -V, --version         version

Exit status:
  0  success; extract: every line read was an event (empty lines aside)
  1  check: a problem was found; extract: a line was skipped or an input had corrupt
     gzip data (with --strict, at the first one)
  2  usage error; a FILE that cannot be opened or read; extract: writing the output
     failed; run: the service could not start or stopped on an error

Logging: RUST_LOG=debug|info|warn|error (default info for run, warn otherwise).
";

/// The forms `--max-line-bytes` takes, as the config file's byte sizes.
const BYTE_FORMS: &str =
    "a size is a number of bytes, or a number with a unit: 512KiB, 8MiB, 1GiB, 10MB";

/// The largest `--max-line-bytes`: simd-json parses no document over 4 GiB, and a limit near
/// `usize::MAX` would overflow the line reader's arithmetic.
const MAX_LINE_LIMIT: u64 = 4 << 30;

fn main() -> ExitCode {
    let service = std::env::args().nth(1).is_some_and(|c| c == "run");
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if service {
            "info"
        } else {
            "warn"
        }));
    // Under systemd the journal stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logger.format_timestamp(None);
    }
    logger.init();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kube-audit-shipper: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let mut args = lexopt::Parser::from_env();
    let command = match args.next().map_err(|e| e.to_string())? {
        Some(Value(cmd)) => cmd.string().map_err(|e| e.to_string())?,
        Some(Short('h') | Long("help")) | None => {
            print!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        Some(Short('V') | Long("version")) => {
            println!("kube-audit-shipper {}", env!("CARGO_PKG_VERSION"));
            return Ok(ExitCode::SUCCESS);
        }
        Some(other) => return Err(format!("{}\n\n{USAGE}", other.unexpected())),
    };
    match command.as_str() {
        "run" => run_service(args),
        "check" => run_check(args),
        "extract" => run_extract(args),
        "bench" => run_bench(args),
        "spool" => run_spool(args),
        other => Err(format!("unknown command {other:?}; see --help")),
    }
}

/// `--config FILE`, the option of `run` and `check`; `send_test_event` is `check`'s flag,
/// accepted only when given.
fn config_arg(
    mut args: lexopt::Parser,
    mut send_test_event: Option<&mut bool>,
) -> Result<Option<std::path::PathBuf>, String> {
    let mut config = None;
    while let Some(arg) = args.next().map_err(|e| e.to_string())? {
        match arg {
            Long("send-test-event") if send_test_event.is_some() => {
                if let Some(flag) = send_test_event.as_deref_mut() {
                    *flag = true;
                }
            }
            Long("config") | Short('c') => {
                config = Some(std::path::PathBuf::from(
                    args.value().map_err(|e| e.to_string())?,
                ))
            }
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(None);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    config
        .map(Some)
        .ok_or_else(|| "--config FILE is required (the YAML with `logfiles:`)".to_string())
}

fn run_service(args: lexopt::Parser) -> Result<ExitCode, String> {
    let Some(path) = config_arg(args, None)? else {
        return Ok(ExitCode::SUCCESS);
    };
    let cfg = kube_audit_shipper::config::Config::load(&path)?;
    for w in &cfg.warnings {
        log::warn!("{w}");
    }
    kube_audit_shipper::run::run(&cfg)?;
    Ok(ExitCode::SUCCESS)
}

fn run_check(args: lexopt::Parser) -> Result<ExitCode, String> {
    use kube_audit_shipper::cmd::check::{self, IntakeCheck};
    let mut send_test_event = false;
    let Some(path) = config_arg(args, Some(&mut send_test_event))? else {
        return Ok(ExitCode::SUCCESS);
    };
    let mode = if send_test_event {
        IntakeCheck::SendTestEvent
    } else {
        IntakeCheck::Reach
    };
    match check::run(&path, mode) {
        Ok(true) => Ok(ExitCode::SUCCESS),
        Ok(false) => Ok(ExitCode::from(1)),
        Err(e) => {
            println!("{e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn run_spool(mut args: lexopt::Parser) -> Result<ExitCode, String> {
    use kube_audit_shipper::cmd::spool::{self, Action};
    let (mut config, mut words, mut all) = (None, Vec::new(), false);
    while let Some(arg) = args.next().map_err(|e| e.to_string())? {
        match arg {
            Long("config") | Short('c') => {
                config = Some(std::path::PathBuf::from(
                    args.value().map_err(|e| e.to_string())?,
                ))
            }
            Long("all") => all = true,
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(v) => words.push(v.string().map_err(|e| e.to_string())?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let config = config.ok_or("--config FILE is required (the YAML with `logfiles:`)")?;
    let (verb, names) = words
        .split_first()
        .ok_or("spool: say list, resend or drop")?;
    let names = names.to_vec();
    let action = match verb.as_str() {
        "list" if names.is_empty() && !all => Action::List,
        "list" => return Err("spool list takes no segment names nor --all".to_string()),
        "resend" => Action::Resend(if all { Vec::new() } else { names }),
        "drop" => Action::Drop { names, all },
        _ => return Err(format!("spool: unknown action {verb:?}; see --help")),
    };
    match spool::run(&config, &action) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("kube-audit-shipper: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn run_extract(mut args: lexopt::Parser) -> Result<ExitCode, String> {
    let mut opts = extract::Options {
        format: Format::Audit,
        strict: false,
        max_line: DEFAULT_MAX_LINE,
        files: Vec::new(),
    };
    while let Some(arg) = args.next().map_err(|e| e.to_string())? {
        match arg {
            Long("format") => opts.format = parse(&mut args, "--format")?,
            Long("strict") => opts.strict = true,
            Long("max-line-bytes") => opts.max_line = byte_size(&mut args, "--max-line-bytes")?,
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(file) => opts.files.push(file.string().map_err(|e| e.to_string())?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    match extract::run(&opts) {
        Ok(summary) if summary.clean() => Ok(ExitCode::SUCCESS),
        Ok(_) => Ok(ExitCode::from(1)),
        // The reader went away (`| head`): not an error of ours.
        Err(extract::Failure::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn run_bench(mut args: lexopt::Parser) -> Result<ExitCode, String> {
    let mut file = None;
    let mut rounds = 5;
    let mut level = kube_audit_shipper::batch::BatchLimits::default().level;
    while let Some(arg) = args.next().map_err(|e| e.to_string())? {
        match arg {
            Long("rounds") => rounds = parse(&mut args, "--rounds")?,
            Long("level") => level = parse(&mut args, "--level")?,
            Short('h') | Long("help") => {
                print!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            Value(f) if file.is_none() => file = Some(f.string().map_err(|e| e.to_string())?),
            other => return Err(other.unexpected().to_string()),
        }
    }
    let file = file.ok_or("bench needs a FILE (an audit log)")?;
    if !(1..=9).contains(&level) {
        return Err(format!("--level {level}: expected 1 to 9"));
    }
    if rounds == 0 {
        return Err("--rounds 0: expected at least 1".into());
    }
    bench::run(&bench::Options {
        file,
        rounds,
        level,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The value of option `name`, a line length as the config file's `max_line_bytes` is
/// written (the same parser).
fn byte_size(args: &mut lexopt::Parser, name: &str) -> Result<usize, String> {
    let raw = args.value().map_err(|e| e.to_string())?;
    let text = raw
        .string()
        .map_err(|_| format!("{name}: value is not valid UTF-8"))?;
    let bytes = kube_audit_shipper::config::parse_bytes(&text).map_err(|e| {
        // The config file's message may start with the value itself; it is said once.
        let why = e.strip_prefix(&format!("{text:?}: ")).unwrap_or(&e);
        format!("{name} {text:?}: {why}; {BYTE_FORMS}")
    })?;
    if !(1..=MAX_LINE_LIMIT).contains(&bytes) {
        return Err(format!("{name} {text:?}: expected 1 byte to 4GiB"));
    }
    usize::try_from(bytes).map_err(|_| format!("{name} {text:?}: too large for this machine"))
}

/// The value of option `name`, parsed.
fn parse<T: std::str::FromStr>(args: &mut lexopt::Parser, name: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let raw = args.value().map_err(|e| e.to_string())?;
    let text = raw
        .string()
        .map_err(|_| format!("{name}: value is not valid UTF-8"))?;
    text.parse().map_err(|e| format!("{name} {text:?}: {e}"))
}
