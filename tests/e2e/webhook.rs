//! The audit webhook input through the binary: EventLists built from the real samples,
//! posted like the API server posts them (over HTTP on loopback, over TLS with a client
//! certificate), with the answers' contract checked: 200 only for what is durable.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::TcpStream;

/// An EventList of `items` (JSON texts), as the API server writes it.
fn event_list(items: &[String]) -> Vec<u8> {
    format!(
        "{{\"kind\":\"EventList\",\"apiVersion\":\"audit.k8s.io/v1\",\"metadata\":{{}},\"items\":[{}]}}",
        items.join(",")
    )
    .into_bytes()
}

/// `n` fresh events (tag `tag`, from `first`) and their identities.
fn fresh(samples: &[String], tag: u32, first: u64, n: u64) -> (Vec<String>, Vec<String>) {
    (first..first + n)
        .map(|i| fresh_event(samples, tag, i))
        .unzip()
}

/// What the API server's side needs for TLS: the CA of our server certificate, and its own
/// client certificate (signed by the CA the webhook trusts).
struct Pki {
    server: (PathBuf, PathBuf),
    ca: PathBuf,
    client: rustls::ClientConfig,
    /// A client with no certificate.
    anonymous: rustls::ClientConfig,
}

fn pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "test webhook CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(vec!["kube-apiserver".to_string()]).unwrap();
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &issuer).unwrap();
    let files = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&files.0, server.pem()).unwrap();
    std::fs::write(&files.1, server_key.serialize_pem()).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
    };
    let key = PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes()).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(client.pem().as_bytes()).unwrap()];
    Pki {
        server: files,
        ca,
        client: builder().with_client_auth_cert(chain, key).unwrap(),
        anonymous: builder().with_no_client_auth(),
    }
}

/// One `POST` of `body` (chunked when asked), `Connection: close`; the status and the
/// answer's head and body. TLS with `tls`.
fn post(
    port: u16,
    tls: Option<&rustls::ClientConfig>,
    body: &[u8],
    chunked: bool,
) -> std::io::Result<(u16, String)> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request =
        b"POST /audit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
        Connection: close\r\n"
            .to_vec();
    if chunked {
        request.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for part in body.chunks(1000) {
            request.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            request.extend_from_slice(part);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
    } else {
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body);
    }
    let mut answer = Vec::new();
    match tls {
        None => {
            let mut s = tcp;
            s.write_all(&request)?;
            s.read_to_end(&mut answer)?;
        }
        Some(cfg) => {
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let conn = rustls::ClientConnection::new(Arc::new(cfg.clone()), name)
                .map_err(std::io::Error::other)?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            s.write_all(&request)?;
            s.flush()?;
            match s.read_to_end(&mut answer) {
                Ok(_) => {}
                // The server closes without close_notify after `Connection: close`.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
                Err(e) => return Err(e),
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))?;
    Ok((status, text))
}

/// A config with the webhook as the only input, on `port`; `extra` is appended.
fn webhook_config(dir: &Path, intake: &Emulator, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    let text = format!(
        "webhook:\n  listen: 127.0.0.1:{port}\n  intakekey: {}\n{extra}intake_url: {}\nca_file: {}\n\
         state_dir: {}\nbatch_linger_secs: 0.3\n",
        Options::default().key,
        intake.url,
        intake.ca_file.display(),
        dir.join("state").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until the webhook answers (the service is starting).
fn wait_listening(port: u16) {
    wait_for("the webhook to listen", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

#[test]
fn the_webhook_delivers_each_event_once_and_refuses_what_is_not_an_event_list() {
    let dir = workdir("webhook");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let (port, metrics_port) = (free_port(), free_port());
    let cfg = webhook_config(
        &dir,
        &intake,
        port,
        &format!("metrics_address: 127.0.0.1:{metrics_port}\n"),
    );
    let service = start(&cfg);
    wait_listening(port);
    let samples = samples();
    let mut ids = Vec::new();
    for (n, chunked) in [(400, false), (1, false), (57, true), (400, true)] {
        let (items, more) = fresh(&samples, 0x3eb0, ids.len() as u64, n);
        let (status, answer) = post(port, None, &event_list(&items), chunked).unwrap();
        assert_eq!(status, 200, "{answer}");
        ids.extend(more);
    }
    // Not an EventList: refused whole, nothing forwarded.
    let bad: [&[u8]; 4] = [
        b"not json",
        br#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","items":[]}"#,
        br#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[{"a":1}"#,
        br#"{"kind":"EventList","apiVersion":"v1","items":[]}"#,
    ];
    for body in bad {
        let (status, answer) = post(port, None, body, false).unwrap();
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains("not an audit EventList"), "{answer}");
    }
    // One bad item inside a good list: forwarded as an unparsed record, the rest as events.
    let (mut items, more) = fresh(&samples, 0x3eb1, 0, 3);
    items.insert(1, r#"{"kind":"Event","auditID":tru}"#.to_string());
    let (status, _) = post(port, None, &event_list(&items), false).unwrap();
    assert_eq!(status, 200);
    ids.extend(more);
    let get = http(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(get.starts_with("HTTP/1.1 405"), "{get}");

    wait_delivered(
        "every answered event",
        &intake,
        &ids,
        Duration::from_secs(60),
    );
    let m = metrics(metrics_port);
    let (events, records) = received(&intake);
    assert_eq!(events.len(), ids.len());
    assert_eq!(duplicates(&events), 0);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["kube_audit_shipper"]["record"], "unparsed");
    assert_eq!(m["kas_webhook_requests_total{status=\"200\"}"], 5);
    assert_eq!(m["kas_webhook_requests_total{status=\"400\"}"], 4);
    assert_eq!(m["kas_webhook_requests_total{status=\"405\"}"], 1);
    assert_eq!(m["kas_webhook_events_received_total"], ids.len() as u64 + 1);
    assert_eq!(m["kas_lines_read_total"], ids.len() as u64 + 1);
    assert_eq!(m["kas_lines_rejected_total"], 1);
    assert_eq!(m["kas_webhook_durable_seconds_count"], 5);
    let (code, _) = stop(service);
    assert_eq!(code, Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_webhook_over_tls_requires_the_api_servers_client_certificate() {
    let dir = workdir("webhook-tls");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let pki = pki(&dir.join("pki"));
    let port = free_port();
    let tls = format!(
        "  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\nmetrics_address: \"off\"\n",
        pki.server.0.display(),
        pki.server.1.display(),
        pki.ca.display()
    );
    let cfg = webhook_config(&dir, &intake, port, &tls);
    let service = start(&cfg);
    wait_listening(port);
    let samples = samples();
    let (items, ids) = fresh(&samples, 0x3eb2, 0, 200);
    let (status, answer) = post(port, Some(&pki.client), &event_list(&items), false).unwrap();
    assert_eq!(status, 200, "{answer}");
    // Without a client certificate the handshake fails: nothing is read.
    let (more, other) = fresh(&samples, 0x3eb3, 0, 5);
    assert!(post(port, Some(&pki.anonymous), &event_list(&more), false).is_err());
    // Plain HTTP to a TLS port is no request either.
    assert!(post(port, None, &event_list(&more), false).is_err());
    wait_delivered(
        "the events posted over TLS",
        &intake,
        &ids,
        Duration::from_secs(60),
    );
    let (events, _) = received(&intake);
    assert_eq!(events.len(), ids.len());
    assert!(other.iter().all(|id| !events.contains_key(id)));
    stop(service);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The API server's side of a kill: it posts, and posts again what got no 200.
#[test]
fn sigkill_while_the_api_server_posts_loses_no_answered_event() {
    let kills: usize = std::env::var("KAS_E2E_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = workdir("webhook-kill");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let port = free_port();
    let cfg = webhook_config(&dir, &intake, port, "metrics_address: \"off\"\n");
    let done = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = {
        let (done, answers) = (done.clone(), answers.clone());
        std::thread::spawn(move || {
            let samples = samples();
            let (mut answered, mut retried) = (Vec::new(), HashSet::new());
            let mut i = 0u64;
            while !done.load(Ordering::SeqCst) {
                let (items, ids) = fresh(&samples, 0x3eb4, i, 20);
                i += 20;
                let body = event_list(&items);
                let mut tries = 0;
                loop {
                    tries += 1;
                    match post(port, None, &body, false) {
                        Ok((200, _)) => break,
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                if tries > 1 {
                    retried.extend(ids.iter().cloned());
                }
                answered.extend(ids);
                answers.fetch_add(1, Ordering::SeqCst);
            }
            (answered, retried)
        })
    };
    let mut rng = Rng::new(0x5eed_3eb4);
    // Each kill lands at a random moment once requests are being answered (however slowly
    // the service starts, under an emulator say).
    let answered_since = |n: usize, what: &str| {
        wait_for(what, Duration::from_secs(60), || {
            answers.load(Ordering::SeqCst) > n
        })
    };
    for _ in 0..kills {
        let before = answers.load(Ordering::SeqCst);
        let mut child = start(&cfg).0.take().unwrap();
        answered_since(before, "an answer after a restart");
        std::thread::sleep(Duration::from_millis(rng.below(700)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    let before = answers.load(Ordering::SeqCst);
    let service = start(&cfg);
    answered_since(before + 10, "answers after the last restart");
    done.store(true, Ordering::SeqCst);
    let (answered, retried) = client.join().unwrap();
    wait_delivered(
        "every answered event",
        &intake,
        &answered,
        Duration::from_secs(120),
    );
    stop(service);
    let (events, _) = received(&intake);
    // Copies of events whose request was never posted twice: only a segment in flight to the
    // intake at a kill (posted, not yet removed) is sent again, at most one per kill.
    let resent: u32 = events
        .iter()
        .filter(|(id, _)| !retried.contains(*id))
        .map(|(_, n)| n - 1)
        .sum();
    eprintln!(
        "webhook sigkill: {kills} kills, {} events answered 200, all delivered; {} duplicates, \
         {resent} of them outside the {} events of retried requests",
        answered.len(),
        duplicates(&events),
        retried.len()
    );
    assert!(resent as usize <= kills * 1000, "{resent} copies");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_spool_answers_503_and_what_it_refused_is_delivered_when_posted_again() {
    let dir = workdir("webhook-full");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    intake.force_status(Some(503));
    let (port, metrics_port) = (free_port(), free_port());
    let extra = format!(
        "metrics_address: 127.0.0.1:{metrics_port}\nspool_max_bytes: 64KiB\nbatch_max_bytes: 16KiB\n"
    );
    let cfg = webhook_config(&dir, &intake, port, &extra);
    let service = start(&cfg);
    wait_listening(port);
    let samples = samples();
    // Deletes of secrets: critical, never evicted, so the spool fills.
    let (mut answered, mut refused) = (Vec::new(), Vec::new());
    for k in 0..200u64 {
        let (mut items, ids) = fresh(&samples, 0x3eb5, k * 10, 10);
        for line in &mut items {
            set_string(line, "verb", "delete");
            set_string(line, "resource", "secrets");
        }
        let body = event_list(&items);
        let (status, answer) = post(port, None, &body, false).unwrap();
        match status {
            200 => answered.extend(ids),
            503 => {
                assert!(answer.contains("Retry-After: 5"), "{answer}");
                refused.push((body, ids));
                if refused.len() >= 3 {
                    break;
                }
            }
            s => panic!("status {s}: {answer}"),
        }
    }
    assert!(!refused.is_empty(), "the spool never filled");
    assert!(!answered.is_empty());
    let m = metrics(metrics_port);
    assert_eq!(m["kas_events_evicted_total"], 0);
    // The intake comes back; the API server posts again what was refused.
    intake.force_status(None);
    for (body, ids) in &refused {
        wait_for(
            "a refused request to be taken",
            Duration::from_secs(60),
            || matches!(post(port, None, body, false), Ok((200, _))),
        );
        answered.extend(ids.iter().cloned());
    }
    wait_delivered(
        "everything answered",
        &intake,
        &answered,
        Duration::from_secs(120),
    );
    stop(service);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slow_idle_or_oversized_clients_do_not_hold_up_the_others() {
    let dir = workdir("webhook-slow");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let (port, metrics_port) = (free_port(), free_port());
    let extra = format!("  max_body_bytes: 64KiB\nmetrics_address: 127.0.0.1:{metrics_port}\n");
    let cfg = webhook_config(&dir, &intake, port, &extra);
    let service = start(&cfg);
    wait_listening(port);
    // Idle connections, and clients stuck inside a head or a body.
    let mut held = Vec::new();
    for k in 0..6 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        match k % 3 {
            0 => {}
            1 => s.write_all(b"POST / HTTP/1.1\r\nContent-Le").unwrap(),
            _ => s
                .write_all(b"POST / HTTP/1.1\r\nContent-Length: 1000\r\n\r\n{\"kind\"")
                .unwrap(),
        }
        held.push(s);
    }
    let samples = samples();
    let (items, ids) = fresh(&samples, 0x3eb6, 0, 20);
    let (status, answer) = post(port, None, &event_list(&items), false).unwrap();
    assert_eq!(status, 200, "{answer}");
    // Over `max_body_bytes`: 413 before the body is read.
    let (big, _) = fresh(&samples, 0x3eb7, 0, 200);
    let (status, _) = post(port, None, &event_list(&big), false).unwrap();
    assert_eq!(status, 413);
    wait_delivered(
        "the events of the prompt client",
        &intake,
        &ids,
        Duration::from_secs(60),
    );
    let m = metrics(metrics_port);
    assert_eq!(m["kas_webhook_requests_total{status=\"413\"}"], 1);
    drop(held);
    stop(service);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_validates_the_webhook_certificates_and_address() {
    let dir = workdir("webhook-check");
    let intake = Emulator::start(&dir.join("intake"), Options::default());
    let pki = pki(&dir.join("pki"));
    let run_check = |cfg: &Path| {
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        (out.status.code(), text)
    };
    let port = free_port();
    let tls = |cert: &Path| {
        format!(
            "  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n",
            cert.display(),
            pki.server.1.display(),
            pki.ca.display()
        )
    };
    let cfg = webhook_config(&dir, &intake, port, &tls(&pki.server.0));
    let (code, out) = run_check(&cfg);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "webhook: https://127.0.0.1:{port} (key from intakekey"
        )),
        "{out}"
    );
    assert!(out.contains("client certificate required"), "{out}");
    assert!(out.contains("TLS: certificate"), "{out}");
    assert!(
        out.contains(&format!("listen: 127.0.0.1:{port} is free")),
        "{out}"
    );
    // A certificate that is not PEM, and an address someone else holds.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap().port();
    let cfg = webhook_config(&dir, &intake, taken, &tls(&pki.ca.with_extension("nope")));
    let (code, out) = run_check(&cfg);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("no usable certificate"), "{out}");
    assert!(
        out.contains(&format!("cannot listen on 127.0.0.1:{taken}")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
