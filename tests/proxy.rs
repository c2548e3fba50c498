//! The intake through a real HTTP CONNECT proxy (DESIGN.md §7: `HTTPProxyURL` in the config,
//! `HTTPS_PROXY` in the environment). The proxy is Debian's `tinyproxy`, started by each test
//! on 127.0.0.1 with a generated configuration, in front of the HTTPS intake emulator; the
//! service is the real binary, as in `tests/e2e.rs`.
//!
//! - A proxy that tunnels: every event is delivered exactly once, from the config key and from
//!   the environment alike, and TLS runs end to end: the proxy is asked for tunnels only
//!   (`CONNECT`), never handed a request, and every connection the intake accepted was one of
//!   those tunnels.
//! - A proxy that refuses the tunnel (403 to `CONNECT`): retried with backoff and reported the
//!   way an unreachable intake is (the `failed` attempt counter, the `sending failed` log line,
//!   `/healthz` failing once the spool has not drained for `unhealthy_after_secs`), never as a
//!   refused intake key, and nothing reaches the intake; once a proxy lets the tunnel through,
//!   everything is delivered exactly once.
//!
//! `tinyproxy` must be installed (`apt-get install -y tinyproxy`; `.ci/run` does it). Without
//! it these tests fail with that instruction: a proxy test that passes without a proxy would
//! test nothing.
//!
//! Under qemu (the aarch64 suite of `cross/ci.sh`) the test process is emulated, but what it
//! starts is not: `tinyproxy` is the host's x86_64 binary, run by the kernel natively, and
//! the aarch64 service binary runs through binfmt_misc as in `tests/e2e.rs`. Nothing here
//! measures time or memory, so the tests run the same way there.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::apiserver::{AuditWriter, fresh_event};
use support::corpus::samples;
use support::intake::{Emulator, Options};

/// The binary under test: the one cargo built with this test, or `KAS_E2E_BIN` (as in
/// `tests/e2e.rs`).
fn bin() -> PathBuf {
    std::env::var_os("KAS_E2E_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_kube-audit-shipper")),
        PathBuf::from,
    )
}

fn workdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kas-proxy-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Where `tinyproxy` is: on `PATH`, or where Debian puts it.
fn tinyproxy() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin"].map(PathBuf::from))
        .map(|d| d.join("tinyproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "tinyproxy is not installed, and these tests need a real CONNECT proxy: \
                 install it with `apt-get update && apt-get install -y tinyproxy` \
                 (.ci/run does this)"
            )
        })
}

/// A `tinyproxy` on 127.0.0.1 that accepts clients from 127.0.0.1 only and opens tunnels
/// (`CONNECT`) to one port only; a tunnel to any other port is refused with a 403.
struct Proxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Proxy {
    fn start(dir: &Path, connect_port: u16) -> Proxy {
        let port = free_port();
        let conf = dir.join(format!("tinyproxy-{port}.conf"));
        let log = dir.join(format!("tinyproxy-{port}.log"));
        let out = dir.join(format!("tinyproxy-{port}.out"));
        // `LogLevel Connect` logs each request line (`Request (file descriptor N): CONNECT
        // host:port HTTP/1.1`), which is how the tests see what the proxy was asked.
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nConnectPort {connect_port}\n\
                 Timeout 60\nMaxClients 64\nLogFile \"{}\"\nLogLevel Connect\n",
                log.display()
            ),
        )
        .unwrap();
        let mut child = Command::new(tinyproxy())
            .arg("-d")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&out).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting tinyproxy: {e}"));
        // Listening is the readiness signal; an early exit (the port taken meanwhile, a
        // config it rejects) is reported with its output.
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "tinyproxy exited ({status}) before listening: {}{}",
                    std::fs::read_to_string(&out).unwrap_or_default(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "tinyproxy did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Proxy { child, port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The request lines the proxy was given, in order (`CONNECT 127.0.0.1:443 HTTP/1.1`).
    fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once("Request (file descriptor "))
            .filter_map(|(_, rest)| rest.split_once("): "))
            .map(|(_, request)| request.trim().to_string())
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every variable through which the service (ureq) would pick a proxy from the environment:
/// removed from the service's environment so that each test sets exactly what it tests.
const PROXY_ENV: [&str; 8] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The service as a child process, its log (stderr) in a file; killed if a test fails first.
struct Service {
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    fn start(config: &Path, env: &[(&str, &str)], log: &Path) -> Service {
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--config"]).arg(config);
        for var in PROXY_ENV {
            cmd.env_remove(var);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        Service {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A test's intake, audit log (with events already written) and metrics port.
struct Rig {
    dir: PathBuf,
    intake: Emulator,
    writer: AuditWriter,
    ids: Vec<String>,
    port: u16,
}

impl Rig {
    fn new(name: &str, events: u64) -> Rig {
        let dir = workdir(name);
        let intake = Emulator::start(&dir.join("intake"), Options::default());
        let mut writer = AuditWriter::new(&dir.join("logs"), 1024 * 1024, 20, false);
        let samples = samples();
        let ids = (0..events)
            .map(|i| {
                let (line, id) = fresh_event(&samples, 15, i);
                writer.write_line(&line);
                id
            })
            .collect();
        Rig {
            dir,
            intake,
            writer,
            ids,
            port: free_port(),
        }
    }

    /// Writes the config (to `intake_url`, with `extra` appended) and returns its path.
    fn config(&self, intake_url: &str, extra: &str) -> PathBuf {
        let path = self.dir.join("config.yaml");
        let text = format!(
            "logfiles:\n  - filepath: {}\n    intakekey: {}\nintake_url: {intake_url}\n\
             ca_file: {}\nstate_dir: {}\nbatch_linger_secs: 0.3\n\
             metrics_address: 127.0.0.1:{}\n{extra}",
            self.writer.path().display(),
            Options::default().key,
            self.intake.ca_file.display(),
            self.dir.join("state").display(),
            self.port
        );
        std::fs::write(&path, text).unwrap();
        let mut perms = std::fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&path, perms).unwrap();
        path
    }

    /// Audit events received, by identity (`auditID/stage`), with their number of copies.
    fn received(&self) -> HashMap<String, u32> {
        let mut events = HashMap::new();
        for e in self.intake.events() {
            let v = support::json(&e);
            if let (Some(id), Some(stage)) = (v["auditID"].as_str(), v["stage"].as_str()) {
                *events.entry(format!("{id}/{stage}")).or_default() += 1;
            }
        }
        events
    }

    fn all_delivered(&self) -> bool {
        let got = self.received();
        self.ids.iter().all(|id| got.contains_key(id))
    }

    fn http(&self, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = write!(s, "GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// A metric's value summed over the series whose labels contain `labels`; `None` while
    /// the service does not answer yet, or when no such series exists (so a renamed metric
    /// fails the tests instead of reading as 0).
    fn metric(&self, name: &str, labels: &str) -> Option<u64> {
        TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let text = self.http("/metrics");
        let values: Vec<u64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series, ""));
                n == name && rest.contains(labels)
            })
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum())
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One run of the service through `proxy` until every event has arrived; returns the
/// proxy's request lines that this run added.
fn deliver_through(rig: &Rig, proxy: &Proxy, cfg: &Path, env: &[(&str, &str)]) -> Vec<String> {
    let before = proxy.requests().len();
    let service = Service::start(cfg, env, &rig.dir.join("service.log"));
    wait_for("every event", Duration::from_secs(60), || {
        rig.all_delivered()
    });
    let log = service.log();
    assert_eq!(service.stop(), Some(0), "{log}");
    proxy.requests()[before..].to_vec()
}

#[test]
fn everything_is_delivered_through_a_connect_proxy_with_tls_end_to_end() {
    let rig = Rig::new("tunnel", 600);
    let intake_port = port_of(&rig.intake.url);
    let proxy = Proxy::start(&rig.dir, intake_port);
    let tunnel = format!("CONNECT 127.0.0.1:{intake_port} HTTP/1.1");

    // From the config (`HTTPProxyURL`), then from the environment (`HTTPS_PROXY`) for events
    // written in between.
    let by_config = rig.config(&rig.intake.url, &format!("HTTPProxyURL: {}\n", proxy.url()));
    let asked = deliver_through(&rig, &proxy, &by_config, &[]);
    assert!(!asked.is_empty(), "the proxy was not used");
    assert!(asked.iter().all(|r| *r == tunnel), "{asked:?}");
    let through_config = rig.intake.state.lock().unwrap().connections;

    let mut rig = rig;
    let samples = samples();
    for i in 600..1200 {
        let (line, id) = fresh_event(&samples, 15, i);
        rig.writer.write_line(&line);
        rig.ids.push(id);
    }
    let by_env = rig.config(&rig.intake.url, "");
    let asked_env = deliver_through(&rig, &proxy, &by_env, &[("HTTPS_PROXY", &proxy.url())]);
    assert!(!asked_env.is_empty(), "HTTPS_PROXY was not used");
    assert!(asked_env.iter().all(|r| *r == tunnel), "{asked_env:?}");

    // Every connection the intake accepted came out of a tunnel: none went around the
    // proxy. The emulator speaks only TLS and the service checked its certificate against
    // `ca_file`, so the TLS session ran from the service to the intake, through the tunnel;
    // the proxy was never given a request it could read (only `CONNECT` lines above).
    let connections = rig.intake.state.lock().unwrap().connections;
    assert!(through_config >= 1 && connections > through_config);
    assert!(
        asked.len() + asked_env.len() >= connections,
        "{connections} connections to the intake, {} tunnels",
        asked.len() + asked_env.len()
    );
    let got = rig.received();
    assert_eq!(got.len(), rig.ids.len());
    assert!(got.values().all(|&n| n == 1), "duplicates");
    let proxy_log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(!proxy_log.contains(&Options::default().key));
    let _ = std::fs::remove_dir_all(&rig.dir);
}

/// Runs the service until it has failed `attempts` times and `/healthz` fails for the
/// undrained spool; returns the service's log. Nothing may reach the intake meanwhile.
fn fails_like_an_unreachable_intake(
    rig: &Rig,
    what: &str,
    cfg: &Path,
    env: &[(&str, &str)],
) -> String {
    let log = rig.dir.join(format!("service-{what}.log"));
    let service = Service::start(cfg, env, &log);
    wait_for(
        &format!("{what}: two failed attempts"),
        Duration::from_secs(30),
        || {
            rig.metric("kas_send_attempts_total", "outcome=\"failed\"")
                .is_some_and(|n| n >= 2)
        },
    );
    wait_for(
        &format!("{what}: /healthz failing"),
        Duration::from_secs(30),
        || rig.http("/healthz").starts_with("HTTP/1.1 503"),
    );
    let health = rig.http("/healthz");
    assert!(health.contains("has not drained"), "{what}: {health}");
    assert!(!health.contains("intake key"), "{what}: {health}");
    assert_eq!(rig.metric("kas_intake_key_refused", ""), Some(0), "{what}");
    for outcome in ["accepted", "key_refused", "busy", "too_large"] {
        let label = format!("outcome=\"{outcome}\"");
        assert_eq!(
            rig.metric("kas_send_attempts_total", &label),
            Some(0),
            "{what}: {outcome}"
        );
    }
    let text = service.log();
    assert_eq!(service.stop(), Some(0), "{text}");
    assert!(text.contains("sending failed ("), "{what}: {text}");
    assert!(
        !text.contains(&Options::default().key),
        "the key is in the log"
    );
    assert!(
        rig.intake.events().is_empty(),
        "{what}: events reached the intake"
    );
    text
}

#[test]
fn a_proxy_refusing_the_tunnel_is_retried_and_reported_like_an_unreachable_intake() {
    let rig = Rig::new("refused", 300);
    let intake_port = port_of(&rig.intake.url);
    let health = "unhealthy_after_secs: 1\n";

    // The reference: an intake nobody listens on, no proxy.
    let nobody = format!("https://127.0.0.1:{}", free_port());
    let unreachable =
        fails_like_an_unreachable_intake(&rig, "unreachable", &rig.config(&nobody, health), &[]);
    assert!(unreachable.contains("sending failed ("), "{unreachable}");

    // A real proxy whose policy excludes the intake's port: it answers the CONNECT with 403.
    let refusing = Proxy::start(&rig.dir, intake_port.wrapping_add(1).max(1));
    let extra = format!("{health}HTTPProxyURL: {}\n", refusing.url());
    let text = fails_like_an_unreachable_intake(
        &rig,
        "proxy 403",
        &rig.config(&rig.intake.url, &extra),
        &[],
    );
    // The log names the proxy's answer, so the operator looks at the proxy, not the key.
    assert!(
        text.contains("CONNECT proxy failed") && text.contains("403"),
        "{text}"
    );
    let asked = refusing.requests();
    assert!(asked.len() >= 2, "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|r| *r == format!("CONNECT 127.0.0.1:{intake_port} HTTP/1.1")),
        "{asked:?}"
    );
    assert_eq!(
        rig.intake.state.lock().unwrap().connections,
        0,
        "the service went around the refusing proxy"
    );

    // The same through the environment.
    let env_cfg = rig.config(&rig.intake.url, health);
    let url = refusing.url();
    fails_like_an_unreachable_intake(
        &rig,
        "proxy 403 from HTTPS_PROXY",
        &env_cfg,
        &[("HTTPS_PROXY", &url)],
    );
    assert_eq!(rig.intake.state.lock().unwrap().connections, 0);

    // A proxy that lets the tunnel through: everything spooled meanwhile arrives once.
    let open = Proxy::start(&rig.dir, intake_port);
    let cfg = rig.config(
        &rig.intake.url,
        &format!("{health}HTTPProxyURL: {}\n", open.url()),
    );
    deliver_through(&rig, &open, &cfg, &[]);
    let got = rig.received();
    assert_eq!(got.len(), rig.ids.len());
    assert!(got.values().all(|&n| n == 1), "duplicates");
    let _ = std::fs::remove_dir_all(&rig.dir);
}

/// `check --config FILE` with only `env` as proxy environment: exit status and stdout.
fn check(cfg: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["check", "--config"]).arg(cfg);
    for var in PROXY_ENV {
        cmd.env_remove(var);
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_reaches_the_intake_through_the_proxy_and_names_a_refusing_one() {
    let rig = Rig::new("check", 1);
    let intake_port = port_of(&rig.intake.url);
    let tunnel = format!("CONNECT 127.0.0.1:{intake_port} HTTP/1.1");
    let open = Proxy::start(&rig.dir, intake_port);

    let cfg = rig.config(&rig.intake.url, &format!("HTTPProxyURL: {}\n", open.url()));
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!(", proxy {})", open.url())), "{out}");
    assert!(
        out.contains("  intake: reachable over TLS (HTTP 200"),
        "{out}"
    );
    assert_eq!(open.requests(), std::slice::from_ref(&tunnel));

    let cfg = rig.config(&rig.intake.url, "");
    let (code, out) = check(&cfg, &[("HTTPS_PROXY", &open.url())]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(", proxy {}/ from the environment)", open.url())),
        "{out}"
    );
    assert_eq!(open.requests(), [tunnel.clone(), tunnel.clone()]);
    let connections = rig.intake.state.lock().unwrap().connections;
    assert_eq!(
        connections, 2,
        "a connection that did not come through the proxy"
    );

    // A proxy that answers the CONNECT with 403: a problem that names the proxy's answer.
    let refusing = Proxy::start(&rig.dir, intake_port.wrapping_add(1).max(1));
    let cfg = rig.config(
        &rig.intake.url,
        &format!("HTTPProxyURL: {}\n", refusing.url()),
    );
    let (code, out) = check(&cfg, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("intake {}: unreachable (", rig.intake.url))
            && out.contains("CONNECT proxy failed")
            && out.contains("403"),
        "{out}"
    );
    assert_eq!(refusing.requests(), [tunnel]);
    assert_eq!(rig.intake.state.lock().unwrap().connections, connections);
    assert!(rig.intake.events().is_empty(), "check stored something");
    let _ = std::fs::remove_dir_all(&rig.dir);
}
