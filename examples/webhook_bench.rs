//! The audit webhook input against the file input, on the same events:
//! `cargo run --release --example webhook_bench` (`benches/webhook.sh` runs it).
//!
//! Each run makes BENCH_LISTS × BENCH_LIST_EVENTS events from the real samples of
//! `tests/fixtures/` (fresh auditIDs and times, as `examples/demo.rs` does) and ships them
//! three ways, each time with a fresh release service (`kube-audit-shipper run`), state
//! directory and HTTPS intake emulator:
//!
//! - `file`: the service tails an audit log; the events are appended to it as fast as the
//!   writer goes, one EventList's worth (BENCH_LIST_EVENTS lines) per write;
//! - `webhook-http`: the same events as `audit.k8s.io/v1` EventLists of BENCH_LIST_EVENTS
//!   items, POSTed over plain HTTP on 127.0.0.1 by BENCH_CLIENTS concurrent keep-alive clients
//!   (the API server in batch mode posts one batch per request, several in flight);
//! - `webhook-tls`: the same over TLS with a client certificate (`client_ca_file`), as the
//!   API server reaches the webhook in production.
//!
//! `batch_linger_secs: 1` for every input (default 5 s): the file input seals its last, partial
//! batch after the linger, the webhook at each request, and the tail would otherwise weigh on
//! the file's figure. A 503 is retried after 100 ms (the API server would wait its backoff, 10 s by default)
//! and counted. Per input: events/s from the first byte written or posted to the last event
//! accepted by the intake, events/s until the last 200 (webhook: every event in an fsynced
//! spool segment), the service's CPU time over that span (utime + stime from /proc/PID/stat,
//! taken once the service listens and again when the intake has everything) per GB of events
//! (the events' own bytes, the same for every input), intake requests, and the mean time to a
//! durable answer from the service's `kas_webhook_durable_seconds`. Every event must reach the
//! intake exactly once (checked by auditID and stage). The order of the inputs alternates
//! between runs; the table shows medians over BENCH_RUNS runs (default 3).

#[path = "../tests/support/mod.rs"]
mod support;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::intake::{Emulator, Options};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Input {
    File,
    WebhookHttp,
    WebhookTls,
}

impl Input {
    fn name(self) -> &'static str {
        match self {
            Input::File => "file",
            Input::WebhookHttp => "webhook-http",
            Input::WebhookTls => "webhook-tls",
        }
    }
}

/// What one input did in one run.
#[derive(Clone, Debug)]
struct Figures {
    events: usize,
    event_bytes: u64,
    /// First byte written or posted → last 200 (webhook only).
    accepted_secs: Option<f64>,
    /// First byte → every event at the intake.
    delivered_secs: f64,
    cpu_secs: f64,
    intake_requests: usize,
    http_requests: u64,
    busy_503: u64,
    /// Mean time to a durable answer (webhook only), seconds.
    durable_mean: Option<f64>,
    peak_rss_mib: f64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The TLS material of the `webhook-tls` input: a CA, a server certificate for 127.0.0.1,
/// a client certificate (the API server's).
struct Certs {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: ClientConfig,
}

fn make_certs(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench webhook CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let server = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&server.0, server_cert.pem()).unwrap();
    std::fs::write(&server.1, server_key.serialize_pem()).unwrap();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(client_key.serialize_der()));
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![client_cert.der().clone()], key)
        .unwrap();
    Certs { ca, server, client }
}

fn main() {
    let lists = env_or("BENCH_LISTS", 150) as usize;
    let per_list = env_or("BENCH_LIST_EVENTS", 400).max(1) as usize;
    let clients = env_or("BENCH_CLIENTS", 4).max(1) as usize;
    let runs = env_or("BENCH_RUNS", 3).max(1) as usize;
    let work = std::env::temp_dir().join(format!(
        "kube-audit-shipper-webhook-bench-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let binary = build_binary();
    let certs = make_certs(&work.join("certs"));
    let samples = support::corpus::samples();

    let inputs = [Input::File, Input::WebhookHttp, Input::WebhookTls];
    let mut results: HashMap<&'static str, Vec<Figures>> = HashMap::new();
    for run in 0..runs {
        let events: Vec<String> = (0..(lists * per_list) as u64)
            .map(|i| support::apiserver::fresh_event(&samples, 0x7eb0_0000 + run as u32, i).0)
            .collect();
        let mut order = inputs.to_vec();
        if run % 2 == 1 {
            order.reverse();
        }
        for input in order {
            let dir = work.join(format!("run{run}-{}", input.name()));
            let f = run_one(&binary, input, &dir, &events, per_list, clients, &certs);
            eprintln!(
                "run {run} {:13} {:>8.0} events/s delivered, {:>8} accepted, {:.2} CPU-s/GB, {} intake requests, {} × 503",
                input.name(),
                f.events as f64 / f.delivered_secs,
                f.accepted_secs
                    .map_or("-".into(), |s| format!("{:.0}/s", f.events as f64 / s)),
                f.cpu_secs / (f.event_bytes as f64 / 1e9),
                f.intake_requests,
                f.busy_503
            );
            results.entry(input.name()).or_default().push(f);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let _ = std::fs::remove_dir_all(&work);

    let first = &results["file"][0];
    println!();
    println!(
        "webhook bench: {} events per run ({} EventLists of {per_list}), {:.1} MB of events, {clients} clients, median of {runs} runs",
        first.events,
        first.events / per_list,
        first.event_bytes as f64 / 1e6
    );
    println!(
        "| input | events/s (to the intake) | events/s (to the last 200) | CPU-s per GB | intake requests | webhook requests | 503s | mean time to durable 200 | peak RSS |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for input in inputs {
        let r = &results[input.name()];
        let events = r[0].events as f64;
        let gb = r[0].event_bytes as f64 / 1e9;
        let delivered = median(r.iter().map(|f| events / f.delivered_secs));
        let accepted = r
            .iter()
            .map(|f| f.accepted_secs.map(|s| events / s))
            .collect::<Option<Vec<f64>>>()
            .map(|v| median(v.into_iter()));
        let cpu = median(r.iter().map(|f| f.cpu_secs / gb));
        let intake = median(r.iter().map(|f| f.intake_requests as f64));
        let http = median(r.iter().map(|f| f.http_requests as f64));
        let busy = median(r.iter().map(|f| f.busy_503 as f64));
        let durable = r
            .iter()
            .map(|f| f.durable_mean)
            .collect::<Option<Vec<f64>>>()
            .map(|v| median(v.into_iter()));
        let rss = median(r.iter().map(|f| f.peak_rss_mib));
        println!(
            "| {} | {delivered:.0} | {} | {cpu:.2} | {intake:.0} | {} | {busy:.0} | {} | {rss:.1} MiB |",
            input.name(),
            accepted.map_or("—".into(), |a| format!("{a:.0}")),
            if input == Input::File {
                "—".into()
            } else {
                format!("{http:.0}")
            },
            durable.map_or("—".into(), |d| format!("{:.1} ms", d * 1e3)),
        );
    }
    println!();
    println!("per run (events/s to the intake; CPU-s per GB):");
    for input in inputs {
        let r = &results[input.name()];
        let gb = r[0].event_bytes as f64 / 1e9;
        let each: Vec<String> = r
            .iter()
            .map(|f| {
                format!(
                    "{:.0} ev/s {:.2} CPU-s/GB",
                    f.events as f64 / f.delivered_secs,
                    f.cpu_secs / gb
                )
            })
            .collect();
        println!("  {:13} {}", input.name(), each.join(" · "));
    }
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn run_one(
    binary: &Path,
    input: Input,
    dir: &Path,
    events: &[String],
    per_list: usize,
    clients: usize,
    certs: &Certs,
) -> Figures {
    std::fs::create_dir_all(dir).unwrap();
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let key = Options::default().key;
    let metrics_port = free_port();
    let webhook_port = free_port();
    let log = dir.join("logs").join("audit.log");
    let source = match input {
        Input::File => {
            std::fs::create_dir_all(log.parent().unwrap()).unwrap();
            std::fs::write(&log, "").unwrap();
            format!(
                "logfiles:\n  - filepath: {}\n    intakekey: {key}\nstart_at: beginning\n",
                log.display()
            )
        }
        Input::WebhookHttp => {
            format!("webhook:\n  listen: 127.0.0.1:{webhook_port}\n  intakekey: {key}\n")
        }
        Input::WebhookTls => format!(
            "webhook:\n  listen: 127.0.0.1:{webhook_port}\n  intakekey: {key}\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n",
            certs.server.0.display(),
            certs.server.1.display(),
            certs.ca.display()
        ),
    };
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "{source}intake_url: {}\nca_file: {}\nstate_dir: {}\nmetrics_address: 127.0.0.1:{metrics_port}\nbatch_linger_secs: 1\n",
            intake.url,
            intake.ca_file.display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut child = Command::new(binary)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start kube-audit-shipper");
    let pid = child.id() as libc::pid_t;

    // Ready: the metrics endpoint answers (and the webhook listens).
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        let up = !http_get(metrics_port, "/livez").is_empty()
            && (input == Input::File || TcpStream::connect(("127.0.0.1", webhook_port)).is_ok());
        if up {
            break;
        }
        assert!(Instant::now() < ready_by, "the service did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));

    // The request bodies are made before the clock starts.
    let bodies: Vec<Vec<u8>> = events
        .chunks(per_list)
        .map(|items| {
            let mut b =
                br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":["#
                    .to_vec();
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(e.as_bytes());
            }
            b.extend_from_slice(b"]}");
            b
        })
        .collect();
    let event_bytes: u64 = events.iter().map(|e| e.len() as u64).sum();

    let cpu0 = proc_cpu(pid);
    let started = Instant::now();
    let http_requests = AtomicU64::new(0);
    let busy = AtomicU64::new(0);
    let accepted_secs = match input {
        Input::File => {
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            for items in events.chunks(per_list) {
                let mut chunk = String::new();
                for e in items {
                    chunk.push_str(e);
                    chunk.push('\n');
                }
                f.write_all(chunk.as_bytes()).unwrap();
            }
            None
        }
        Input::WebhookHttp | Input::WebhookTls => {
            let next = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..clients {
                    s.spawn(|| {
                        let mut conn = Conn::open(input, webhook_port, certs);
                        loop {
                            let i = next.fetch_add(1, Ordering::SeqCst);
                            let Some(body) = bodies.get(i) else { break };
                            loop {
                                http_requests.fetch_add(1, Ordering::SeqCst);
                                match conn.post(body) {
                                    Ok(200) => break,
                                    Ok(503) => {
                                        busy.fetch_add(1, Ordering::SeqCst);
                                        std::thread::sleep(Duration::from_millis(100));
                                    }
                                    Ok(other) => panic!("webhook answered {other}"),
                                    Err(e) => {
                                        eprintln!("webhook connection: {e}; reconnecting");
                                        conn = Conn::open(input, webhook_port, certs);
                                    }
                                }
                            }
                        }
                    });
                }
            });
            Some(started.elapsed().as_secs_f64())
        }
    };

    let deadline = Instant::now() + Duration::from_secs(600);
    let accepted = || -> usize {
        intake
            .requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| r.events)
            .sum()
    };
    while accepted() < events.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let delivered_secs = started.elapsed().as_secs_f64();
    let cpu_secs = proc_cpu(pid) - cpu0;
    let metrics = http_get(metrics_port, "/metrics");
    // The service's own high-water mark (wait4's ru_maxrss would count this process's
    // memory, which the child had until it exec'd).
    let peak_rss_mib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0);
    // SAFETY: signalling and reaping our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (status, _usage) = wait4(pid);
    let _ = child.try_wait();
    assert_eq!(status, 0, "{}: the service exited {status}", input.name());

    // Every event once.
    let mut received: HashMap<String, u32> = HashMap::new();
    for e in intake.events() {
        let v = support::json(&e);
        let id = v["auditID"].as_str().unwrap_or_default();
        let stage = v["stage"].as_str().unwrap_or_default();
        *received.entry(format!("{id}/{stage}")).or_default() += 1;
    }
    let mut lost = 0;
    for e in events {
        let id = support::apiserver::get_string(e, "auditID").unwrap_or_default();
        let stage = support::apiserver::get_string(e, "stage").unwrap_or_default();
        if !received.contains_key(&format!("{id}/{stage}")) {
            lost += 1;
        }
    }
    let dups: u32 = received.values().map(|n| n.saturating_sub(1)).sum();
    assert_eq!(lost, 0, "{}: {lost} events lost", input.name());
    if dups > 0 {
        eprintln!("{}: {dups} duplicates", input.name());
    }

    let metric = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let durable_mean = match (
        metric("kas_webhook_durable_seconds_sum"),
        metric("kas_webhook_durable_seconds_count"),
    ) {
        (Some(sum), Some(n)) if n > 0.0 && input != Input::File => Some(sum / n),
        _ => None,
    };
    Figures {
        events: events.len(),
        event_bytes,
        accepted_secs,
        delivered_secs,
        cpu_secs,
        intake_requests: intake
            .requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .count(),
        http_requests: http_requests.load(Ordering::SeqCst),
        busy_503: busy.load(Ordering::SeqCst),
        durable_mean,
        peak_rss_mib,
    }
}

/// A keep-alive HTTP/1.1 connection to the webhook, plain or TLS.
enum Conn {
    Plain(BufReader<TcpStream>),
    Tls(Box<BufReader<StreamOwned<ClientConnection, TcpStream>>>),
}

impl Conn {
    fn open(input: Input, port: u16, certs: &Certs) -> Conn {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        match input {
            Input::WebhookTls => {
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let tls = ClientConnection::new(Arc::new(certs.client.clone()), name).unwrap();
                Conn::Tls(Box::new(BufReader::new(StreamOwned::new(tls, tcp))))
            }
            _ => Conn::Plain(BufReader::new(tcp)),
        }
    }

    /// Posts one body; the answer's status (its body is read and dropped).
    fn post(&mut self, body: &[u8]) -> std::io::Result<u16> {
        match self {
            Conn::Plain(r) => exchange(r, body),
            Conn::Tls(r) => exchange(r, body),
        }
    }
}

fn exchange<S: Read + Write>(r: &mut BufReader<S>, body: &[u8]) -> std::io::Result<u16> {
    let head = format!(
        "POST /audit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let s = r.get_mut();
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut rest = vec![0; length];
    r.read_exact(&mut rest)?;
    Ok(status)
}

/// utime + stime of a process, seconds.
fn proc_cpu(pid: libc::pid_t) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// Builds the release binary with the cargo that runs this example (as `examples/demo.rs`).
fn build_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    eprintln!(
        "webhook bench: building the service (cargo build --release --bin kube-audit-shipper)"
    );
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "kube-audit-shipper"])
        .current_dir(manifest)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "cargo build failed");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| manifest.join("target"), PathBuf::from);
    target.join("release").join("kube-audit-shipper")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn http_get(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Waits for the child; its exit status and resource usage.
fn wait4(pid: libc::pid_t) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    (code, usage)
}
