//! A SEKOIA.IO intake emulator for tests: HTTPS on 127.0.0.1 with certificates generated at
//! start (rcgen), with or without gzip:
//! - `POST /plain/batch`: events joined by newlines, the key in `X-SEKOIAIO-INTAKE-KEY`, the
//!   event time (if any) in `X-SEKOIAIO-EVENT-TIMESTAMP`, for every event of the request;
//! - `POST /array`: a JSON array of `{"intake_key", "json", "timestamp"}` entries, checked
//!   strictly: valid JSON, no other member, every key right, `json` a string holding a JSON
//!   object, `timestamp` (optional) RFC 3339 with a zone. A malformed body gets 400.
//!
//! A wrong key gets 401 or 422 as configured; a 2xx answers `{"event_ids":[…]}`, one id per
//! event it stored (or, as set in [`State::answer`], a body that is not that JSON); events
//! holding [`State::drop_marked`] are refused inside an accepted request (no id, not stored;
//! a 413 when every event is such); a request with an event holding [`State::poison`] gets a
//! 400 (a permanent refusal of its content); any path but the two gets 404 (a wrong
//! `intake_url`); 413 for an event
//! or a body over the intake's limits (for `/array`, the event as the escaped string, the
//! crate's reading of the limit); scripted faults: statuses, `Retry-After`, slow answers, a
//! connection reset mid-body; optionally mutual TLS. It records every request, every
//! accepted event and each event's time as the intake would take it.
#![allow(dead_code)]

use flate2::read::MultiGzDecoder;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The intake's limits, as the crate keeps to them: an event over 250,000 bytes or a body of
/// 10,485,760 bytes or more (before compression) is refused with a 413.
pub const MAX_EVENT: usize = kube_audit_shipper::extract::MAX_EVENT_BYTES;
pub const MAX_BODY: usize = kube_audit_shipper::config::MAX_BODY_BYTES as usize;

/// A scripted answer, used (once each, in order) before normal processing.
#[derive(Clone, Debug)]
pub enum Fault {
    Status(u16),
    RetryAfter(u16, u64),
    /// Read half the body, then close the connection without answering.
    ResetMidBody,
    /// Answer normally after this long.
    Delay(Duration),
    /// Answer normally (spaces faults apart, so the client's backoff starts over).
    Pass,
}

/// What a 2xx answer's body is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AnswerBody {
    /// `{"event_ids":[…]}`, one id per stored event (the intake's answer).
    #[default]
    EventIds,
    /// A body that is not JSON (`OK`).
    NotJson,
    /// No body at all.
    Empty,
}

/// The 400 answer to a request holding a poisoned event.
pub const POISON_ANSWER: &str = "{\"message\":\"invalid event: rejected by the parser\"}";

#[derive(Clone, Debug)]
pub struct Request {
    /// When the request had arrived (its body read; before any scripted delay).
    pub at: std::time::Instant,
    pub status: u16,
    /// The `Retry-After` seconds sent with the answer.
    pub retry_after: Option<u64>,
    pub events: usize,
    /// `/plain/batch` or `/array`.
    pub path: String,
    /// The `X-SEKOIAIO-EVENT-TIMESTAMP` header.
    pub timestamp: Option<String>,
    pub gzip: bool,
    pub body_bytes: usize,
}

pub struct State {
    pub key: String,
    pub wrong_key_status: u16,
    pub max_body: usize,
    pub events: Vec<String>,
    /// The time the intake would give each of `events` (same order): the `/array` entry's
    /// `timestamp`, or the `/plain/batch` request's header; `None`: reception time.
    pub event_times: Vec<Option<String>>,
    pub requests: Vec<Request>,
    pub script: VecDeque<Fault>,
    pub connections: usize,
    pub client_cert_seen: bool,
    /// While set, every request gets this status (an outage).
    pub forced_status: Option<u16>,
    pub answer: AnswerBody,
    /// Events containing this text are refused inside an accepted request.
    pub drop_marked: Option<String>,
    /// A request with an event containing this text is refused with a 400.
    pub poison: Option<String>,
    /// Events refused by `drop_marked`, and requests refused by `poison`.
    pub dropped: usize,
    pub poisoned: usize,
}

pub struct Emulator {
    pub url: String,
    pub ca_file: PathBuf,
    pub client_cert: (PathBuf, PathBuf),
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub struct Options {
    pub key: String,
    pub wrong_key_status: u16,
    pub require_client_cert: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            key: "test-intake-key-5f1c".into(),
            wrong_key_status: 401,
            require_client_cert: false,
        }
    }
}

impl Emulator {
    pub fn start(dir: &Path, opts: Options) -> Emulator {
        std::fs::create_dir_all(dir).unwrap();
        // A CA, a server certificate for 127.0.0.1/localhost, a client certificate.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "test intake CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let client_key = KeyPair::generate().unwrap();
        let mut client_params = CertificateParams::new(vec!["shipper".to_string()]).unwrap();
        client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();

        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let client = (dir.join("client.pem"), dir.join("client.key"));
        std::fs::write(&client.0, client_cert.pem()).unwrap();
        std::fs::write(&client.1, client_key.serialize_pem()).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if opts.require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(ca_cert.der().clone()).unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let certs: Vec<CertificateDer<'static>> = vec![server_cert.der().clone()];
        let config = Arc::new(builder.with_single_cert(certs, key).unwrap());

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let state = Arc::new(Mutex::new(State {
            key: opts.key,
            wrong_key_status: opts.wrong_key_status,
            max_body: MAX_BODY,
            events: Vec::new(),
            event_times: Vec::new(),
            requests: Vec::new(),
            script: VecDeque::new(),
            connections: 0,
            client_cert_seen: false,
            forced_status: None,
            answer: AnswerBody::default(),
            drop_marked: None,
            poison: None,
            dropped: 0,
            poisoned: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            tcp.set_nonblocking(false).unwrap();
                            tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                            state.lock().unwrap().connections += 1;
                            let (state, config) = (state.clone(), config.clone());
                            std::thread::spawn(move || serve(tcp, config, state));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Emulator {
            url,
            ca_file,
            client_cert: client,
            state,
            stop,
        }
    }

    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().script.extend(faults);
    }

    /// Starts (`Some(status)`) or ends (`None`) an outage.
    pub fn force_status(&self, status: Option<u16>) {
        self.state.lock().unwrap().forced_status = status;
    }

    pub fn events(&self) -> Vec<String> {
        self.state.lock().unwrap().events.clone()
    }

    /// Each accepted event with the time the intake gives it.
    pub fn timed_events(&self) -> Vec<(String, Option<String>)> {
        let st = self.state.lock().unwrap();
        st.events
            .iter()
            .cloned()
            .zip(st.event_times.iter().cloned())
            .collect()
    }

    /// TLS connections accepted (each one a handshake).
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }
}

fn serve(tcp: TcpStream, config: Arc<ServerConfig>, state: Arc<Mutex<State>>) {
    let Ok(conn) = ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    loop {
        // Headers.
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 8192];
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        if tls.conn.peer_certificates().is_some() {
            state.lock().unwrap().client_cert_seen = true;
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let path = head
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        let header = |name: &str| {
            head.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
        };
        let len: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let fault = state.lock().unwrap().script.pop_front();
        if let Some(Fault::ResetMidBody) = fault {
            // Take half the body, then drop the connection without an answer.
            let mut chunk = [0u8; 4096];
            while buf.len() < head_end + len / 2 {
                match tls.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = tls.sock.shutdown(std::net::Shutdown::Both);
            return;
        }
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 65536];
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let at = std::time::Instant::now();
        let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let gzip = header("content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let timestamp = header("x-sekoiaio-event-timestamp");
        let key = header("x-sekoiaio-intake-key");
        let req = Incoming {
            path: &path,
            key,
            timestamp: timestamp.clone(),
            body: &body,
            gzip,
        };
        let (status, extra, events) = match fault {
            Some(Fault::Status(s)) => (s, String::new(), 0),
            Some(Fault::RetryAfter(s, secs)) => (s, format!("Retry-After: {secs}\r\n"), 0),
            Some(Fault::Delay(d)) => {
                std::thread::sleep(d);
                handle(&state, &req)
            }
            _ => handle(&state, &req),
        };
        state.lock().unwrap().requests.push(Request {
            at,
            status,
            retry_after: match fault {
                Some(Fault::RetryAfter(_, secs)) => Some(secs),
                _ => None,
            },
            events,
            path,
            timestamp,
            gzip,
            body_bytes: body.len(),
        });
        let answer_body = state.lock().unwrap().answer;
        let answer = if (200..300).contains(&status) {
            match answer_body {
                AnswerBody::EventIds => {
                    let ids: Vec<String> = (0..events).map(|i| format!("\"{i:08x}\"")).collect();
                    format!("{{\"event_ids\":[{}]}}", ids.join(","))
                }
                AnswerBody::NotJson => "OK".to_string(),
                AnswerBody::Empty => String::new(),
            }
        } else if status == 400 && extra == POISON {
            POISON_ANSWER.to_string()
        } else {
            format!("{{\"message\":\"status {status}\"}}")
        };
        let extra = if extra == POISON {
            String::new()
        } else {
            extra
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{answer}",
            answer.len()
        );
        if tls
            .write_all(response.as_bytes())
            .and_then(|()| tls.flush())
            .is_err()
        {
            return;
        }
    }
}

/// One request as read.
struct Incoming<'a> {
    path: &'a str,
    key: Option<String>,
    timestamp: Option<String>,
    body: &'a [u8],
    gzip: bool,
}

/// Stands for "answer with [`POISON_ANSWER`]" in `handle`'s extra headers (no header).
const POISON: &str = "\0poison";

/// Normal processing: (status, extra headers, events accepted).
fn handle(state: &Mutex<State>, req: &Incoming<'_>) -> (u16, String, usize) {
    let mut st = state.lock().unwrap();
    if let Some(status) = st.forced_status {
        return (status, String::new(), 0);
    }
    let array = match req.path {
        "/array" => true,
        "/plain/batch" => false,
        _ => return (404, String::new(), 0),
    };
    if !array && req.key.as_deref() != Some(st.key.as_str()) {
        return (st.wrong_key_status, String::new(), 0);
    }
    let mut text = Vec::new();
    if req.gzip {
        let limit = st.max_body as u64 + 1;
        if MultiGzDecoder::new(req.body)
            .take(limit)
            .read_to_end(&mut text)
            .is_err()
        {
            return (400, String::new(), 0);
        }
    } else {
        text = req.body.to_vec();
    }
    if text.len() > st.max_body {
        return (413, String::new(), 0);
    }
    let timed = if array {
        match array_events(&text, &st.key) {
            Ok(timed) => timed,
            Err(status) => {
                let status = if status == 0 {
                    st.wrong_key_status
                } else {
                    status
                };
                return (status, String::new(), 0);
            }
        }
    } else {
        let text = String::from_utf8_lossy(&text).to_string();
        text.split('\n')
            .filter(|l| !l.is_empty())
            .map(|e| (e.to_owned(), req.timestamp.clone()))
            .collect()
    };
    if timed.iter().any(|(e, _)| escaped_len(e, array) > MAX_EVENT) {
        return (413, String::new(), 0);
    }
    if let Some(p) = &st.poison
        && timed.iter().any(|(e, _)| e.contains(p.as_str()))
    {
        st.poisoned += 1;
        return (400, POISON.to_string(), 0);
    }
    let all = timed.len();
    let timed: Vec<_> = match &st.drop_marked {
        Some(m) => timed
            .into_iter()
            .filter(|(e, _)| !e.contains(m.as_str()))
            .collect(),
        None => timed,
    };
    st.dropped += all - timed.len();
    // As the intake does: the other events of a batch are stored, a 413 when none is.
    if timed.is_empty() && all > 0 {
        return (413, String::new(), 0);
    }
    let n = timed.len();
    for (event, time) in timed {
        st.events.push(event);
        st.event_times.push(time);
    }
    (200, String::new(), n)
}

/// An event's size as the limit reads it: as sent in `/plain/batch`, escaped in `/array`.
fn escaped_len(event: &str, array: bool) -> usize {
    if array {
        serde_json::to_string(event).map_or(usize::MAX, |s| s.len() - 2)
    } else {
        event.len()
    }
}

/// The events of an `/array` body with their times. `Err(0)`: a wrong key (the caller's
/// configured status); `Err(400)`: not a well-formed body.
fn array_events(text: &[u8], key: &str) -> Result<Vec<(String, Option<String>)>, u16> {
    let Ok(serde_json::Value::Array(entries)) = serde_json::from_slice(text) else {
        return Err(400);
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let serde_json::Value::Object(mut entry) = entry else {
            return Err(400);
        };
        match entry.remove("intake_key") {
            Some(serde_json::Value::String(k)) if k == key => {}
            Some(serde_json::Value::String(_)) => return Err(0),
            _ => return Err(400),
        }
        let Some(serde_json::Value::String(event)) = entry.remove("json") else {
            return Err(400);
        };
        // What is sent is an event: a JSON object.
        if !serde_json::from_str::<serde_json::Value>(&event).is_ok_and(|v| v.is_object()) {
            return Err(400);
        }
        let time = match entry.remove("timestamp") {
            None => None,
            Some(serde_json::Value::String(t)) if has_zone(&t) => Some(t),
            Some(_) => return Err(400),
        };
        if !entry.is_empty() {
            return Err(400);
        }
        out.push((event, time));
    }
    Ok(out)
}

/// An RFC 3339 date-time with its zone (`Z` or `±hh:mm`), as the intake needs.
fn has_zone(t: &str) -> bool {
    let zoned = t.ends_with('Z')
        || t.len() > 6 && {
            let z = &t.as_bytes()[t.len() - 6..];
            matches!(z[0], b'+' | b'-') && z[3] == b':'
        };
    zoned && kube_audit_shipper::timestamp::parse_micros(t).is_some()
}
