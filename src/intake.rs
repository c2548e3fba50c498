//! Intake: sends spooled segments to the SEKOIA.IO HTTP intake (DESIGN.md §7).
//!
//! Each segment is POSTed as spooled (`Content-Encoding: gzip`), to the endpoint of the body
//! it holds ([`IntakeFormat`], from the segment's name):
//! - `POST <base>/array` (the default format): a JSON array whose entries carry the intake
//!   key, the event as a JSON string and the event's own time; no key header.
//! - `POST <base>/plain/batch` (`intake_format: plain_batch`, and every segment spooled
//!   before `/array` existed): events joined by newlines, the key in
//!   `X-SEKOIAIO-INTAKE-KEY`, the batch's earliest event time in
//!   `X-SEKOIAIO-EVENT-TIMESTAMP`.
//!
//! One attempt per [`Sender::deliver_next`]; what to do next is decided here and returned
//! as a [`Step`], so the caller's loop stays trivial:
//!
//! | answer | action |
//! |---|---|
//! | 2xx with `{"event_ids":[…]}`, one id per event | delete the segment |
//! | 2xx with fewer ids than events | delete the segment; the difference is counted (`kas_events_refused_by_intake_total`), logged once and reported in-band (a `refused_by_intake` gap record) |
//! | 2xx with any other body (not that JSON, empty) | delete the segment (the intake did accept it) but count it as unconfirmed (`kas_segments_unconfirmed_total`) and log it: a 2xx is not silently taken as proof |
//! | 413 | split the segment in two, durably, and send the halves (a single event that is still refused is quarantined: the extractor keeps events within 250,000 bytes, so this means the intake's limit changed) |
//! | 429, 503 | wait `Retry-After` (seconds or an HTTP date), else back off |
//! | 401, 403, 422 | the key or subscription is refused: loud error, health fails, retry slowly; nothing is dropped |
//! | other 4xx (400, 404, 405, 415, …; not 408), 3xx (redirects are not followed) | a permanent refusal, judged by [`Judge`] over the answers: about this segment's content (other segments pass) → isolate it: split like a 413 down to single events, and a single event refused twice with other segments accepted in between goes to `refused/` (kept, counted, reported in-band with the status and the first 200 bytes of the answer); about the configuration (every request refused with the same status: a wrong `intake_url`, a proxy's page) → loud error naming the URL and status, health fails, retry every minute, nothing split further or dead-lettered |
//! | 5xx, 408, timeouts, resets, TLS errors | exponential backoff with jitter, forever |
//!
//! TLS is rustls with the ring provider and webpki roots built in (minimal hosts often lack
//! a CA bundle); a CA file, a client certificate and a proxy are optional. The key is a
//! secret: it is never logged or put in an error message.
//!
//! One [`ureq::Agent`] per sender, so one kept-alive TLS connection serves request after
//! request. ureq resolves the host before it looks in its connection pool, on every
//! request, and with a timeout set (we always set one) its resolver does each lookup on a
//! new thread: a thread per POST, even over a reused connection. [`CachingResolver`] keeps
//! the last answer for [`DNS_TTL`] and forgets it when a request fails at the transport
//! level (the address may have moved), so a lookup — and its thread — happens once per
//! TTL, not once per request.

use crate::batch::{BatchLimits, Batcher, IntakeFormat, Sealed};
use crate::spool::{Class, DeadLettered, Refusal, Segment, Spool, Stored};
use std::collections::VecDeque;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::NextTimeout;

/// How long a resolved intake address is reused (a failed request forgets it sooner).
pub const DNS_TTL: Duration = Duration::from_secs(300);

/// ureq's resolver with a one-entry cache (a sender talks to one host, or one proxy).
#[derive(Debug, Default)]
pub struct CachingResolver {
    inner: DefaultResolver,
    /// `host:port`, its addresses, when they were looked up.
    last: Mutex<Option<(String, ResolvedSocketAddrs, Instant)>>,
    lookups: AtomicU64,
}

impl CachingResolver {
    /// Drops the cached answer: the next request looks the host up again.
    pub fn forget(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Lookups done (cache misses) since start.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }
}

/// The agent owns its resolver; the sender keeps a handle to forget and count.
#[derive(Debug)]
struct SharedResolver(Arc<CachingResolver>);

impl Resolver for SharedResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = match (uri.scheme(), uri.authority()) {
            (Some(scheme), Some(authority)) => DefaultResolver::host_and_port(scheme, authority),
            _ => None,
        };
        let cache = &self.0;
        if let Some(key) = &key {
            let last = cache.last.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((k, addrs, at)) = last.as_ref()
                && k == key
                && at.elapsed() < DNS_TTL
            {
                return Ok(addrs.clone());
            }
        }
        cache.lookups.fetch_add(1, Ordering::Relaxed);
        let addrs = cache.inner.resolve(uri, config, timeout)?;
        if let Some(key) = key {
            *cache.last.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((key, addrs.clone(), Instant::now()));
        }
        Ok(addrs)
    }
}

#[derive(Clone)]
pub struct IntakeConfig {
    /// Base URL (a region's, or any other); `/array` or `/plain/batch` is appended.
    pub url: String,
    pub key: String,
    /// PEM CA bundle to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain and key, for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `http://` or `https://` proxy; `None`: from `HTTPS_PROXY`/`ALL_PROXY`/`NO_PROXY`.
    pub proxy: Option<String>,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// gzip level used when a refused segment is split.
    pub level: u32,
}

impl std::fmt::Debug for IntakeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntakeConfig")
            .field("url", &self.url)
            .field("key", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("proxy", &self.proxy)
            .finish()
    }
}

/// The answer to one POST, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    TooLarge,
    /// 429/503, with the server's `Retry-After` if it gave one.
    Busy(Option<Duration>),
    /// 401/403/422: the key or the subscription is refused.
    KeyRefused(u16),
    /// Any other HTTP status.
    Status(u16),
    /// A transport error: connection, TLS, timeout (the text has no secrets).
    Failed(String),
}

/// What the caller should do after [`Sender::deliver_next`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A segment was delivered (or split, or quarantined): go on at once.
    Progress,
    /// Nothing to send.
    Idle,
    /// Wait this long before the next attempt.
    Wait(Duration),
}

/// What the intake has shown of itself, for metrics and `/healthz`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// The last answer refused the key (401/403/422); cleared by a success.
    pub key_refused: Option<u16>,
    pub consecutive_failures: u32,
    pub delivered_segments: u64,
    pub delivered_events: u64,
    /// Compressed bytes delivered.
    pub delivered_bytes: u64,
    pub split_segments: u64,
    /// Events of accepted segments that got no id in the answer (fewer ids than events).
    pub events_refused: u64,
    /// Accepted segments whose answer was not `{"event_ids":[…]}`.
    pub segments_unconfirmed: u64,
    /// Single events refused twice and moved out of the queue (kept or, past the folder's
    /// cap, deleted).
    pub events_dead_lettered: u64,
    /// Gap records this sender wrote into the spool (refusals).
    pub records_spooled: u64,
    /// Every request is refused with this status: configuration (see [`Judge`]).
    pub intake_refusing: Option<u16>,
    /// Attempts by outcome: 2xx, 413, 429/503, key refused, other failures, refused.
    pub attempts: [u64; 6],
}

/// How many refusals in a row, with the same status and no success between, make it a
/// matter of configuration rather than of content (see [`Judge`]).
pub const CONFIG_AFTER: u32 = 3;

/// While every request is refused, retry this slowly (a different segment each time).
pub const CONFIG_RETRY: Duration = Duration::from_secs(60);

/// Most segments held aside at once while waiting for evidence (see [`Judge`]).
const MAX_HELD: usize = 16;

/// What to do with a segment the intake refused with a permanent status ([`is_refusal`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Set it aside and send others first: their answers tell content from configuration.
    Hold,
    /// Split it in two (its halves are sent next).
    Split,
    /// A single event refused twice with other segments accepted in between: dead-letter it.
    DeadLetter,
    /// Nothing else to send and a single event: retry it after a backoff.
    Retry,
    /// Every request is refused alike: the configuration (URL, proxy) is wrong.
    Configuration(u16),
}

/// Tells a refusal of a request's *content* (one bad event: isolate it, let the rest flow)
/// from a refusal of *everything* (a wrong `intake_url`, a proxy's error page: no event is to
/// blame, so none is dead-lettered). Pure: it sees only the sequence of answers and which
/// segment each was for (`K`), so it is unit-tested over sequences.
///
/// The rule: [`CONFIG_AFTER`] refusals in a row with the same status and no success between
/// are configuration. Otherwise a refused segment is first held aside while others are sent;
/// it is acted on (split, or dead-lettered when it is a single event) only when refused
/// again **after another segment was accepted**. Holding first keeps a bisection from
/// refusing the same bad event's halves several times in a row (which would look like
/// configuration), and a one-off 400 costs one retry, never a dead letter. With nothing
/// else to send, a multi-event segment is split at once (its halves are that other
/// content). Two bad events in both halves of a lone segment look like configuration; the
/// slow retry then probes other segments as they arrive, and one success resumes isolation.
#[derive(Clone, Debug)]
pub struct Judge<K> {
    /// 2xx answers seen.
    successes: u64,
    /// The status of the refusals since the last success, and how many in a row.
    streak: Option<(u16, u32)>,
    /// Segments refused once, with the number of successes seen when they were.
    held: Vec<(K, u64)>,
}

impl<K> Default for Judge<K> {
    fn default() -> Self {
        Judge {
            successes: 0,
            streak: None,
            held: Vec::new(),
        }
    }
}

impl<K: PartialEq + Clone> Judge<K> {
    /// A 2xx: the intake takes requests; held segments are to be tried again.
    pub fn accepted(&mut self) {
        self.successes += 1;
        self.streak = None;
    }

    /// Held segments not retried yet because nothing was accepted since their refusal.
    pub fn skipped(&self) -> Vec<K> {
        self.held
            .iter()
            .filter(|(_, at)| *at == self.successes)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// `Some(status)` while every request is refused with it.
    pub fn configuration(&self) -> Option<u16> {
        self.streak
            .filter(|&(_, n)| n >= CONFIG_AFTER)
            .map(|(status, _)| status)
    }

    /// Drops held segments that are gone (acknowledged, split, evicted).
    pub fn retain(&mut self, mut still_there: impl FnMut(&K) -> bool) {
        self.held.retain(|(k, _)| still_there(k));
    }

    /// A permanent refusal of `seg` (of `events` events) with `status`; `others`: another
    /// segment, neither this one nor a skipped one, is waiting to be sent.
    pub fn refused(&mut self, seg: &K, events: u32, status: u16, others: bool) -> Action {
        let n = match self.streak {
            Some((s, n)) if s == status => n + 1,
            _ => 1,
        };
        self.streak = Some((status, n));
        if n >= CONFIG_AFTER {
            self.held.clear();
            return Action::Configuration(status);
        }
        let prior = self.held.iter().position(|(k, _)| k == seg);
        if let Some(i) = prior
            && self.held[i].1 < self.successes
        {
            self.held.remove(i);
            return if events > 1 {
                Action::Split
            } else {
                Action::DeadLetter
            };
        }
        if prior.is_none() && others && self.held.len() < MAX_HELD {
            self.held.push((seg.clone(), self.successes));
            return Action::Hold;
        }
        if events > 1 {
            self.held.retain(|(k, _)| k != seg);
            Action::Split
        } else {
            if prior.is_none() && self.held.len() < MAX_HELD {
                self.held.push((seg.clone(), self.successes));
            }
            Action::Retry
        }
    }
}

/// A status that refuses the request for good (retrying the same bytes cannot help): 3xx
/// (redirects are not followed: the intake does not redirect, a proxy's login page does)
/// and 4xx, except those handled on their own: 401/403/422 (the key), 413 (too large),
/// 429 (busy) and 408 (a timeout, transient).
pub fn is_refusal(status: u16) -> bool {
    matches!(status, 300..=499) && !matches!(status, 401 | 403 | 408 | 413 | 422 | 429)
}

/// What a 2xx answer's body confirms of a segment of `events` events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// `{"event_ids":[…]}` with at least one id per event.
    All,
    /// That many events got no id: refused inside an accepted request.
    Missing(u32),
    /// Not the expected JSON: why.
    Unreadable(String),
}

/// Reads a 2xx body: the intake answers `{"event_ids":[…]}`, one id per accepted event.
pub fn confirm(body: &[u8], events: u32) -> Confirmation {
    use simd_json::prelude::*;
    if body.is_empty() {
        return Confirmation::Unreadable("an empty body".into());
    }
    let mut text = body.to_vec();
    let value = match simd_json::to_borrowed_value(&mut text) {
        Ok(v) => v,
        Err(_) => return Confirmation::Unreadable("not JSON".into()),
    };
    let Some(ids) = value.get("event_ids").and_then(|ids| ids.as_array()) else {
        return Confirmation::Unreadable("no \"event_ids\" array".into());
    };
    match u32::try_from(ids.len()) {
        Ok(n) if n < events => Confirmation::Missing(events - n),
        _ => Confirmation::All,
    }
}

/// The most of an answer read (a 2xx holds an id of ~40 bytes per event).
const ANSWER_LIMIT: u64 = 4 << 20;

/// Exponential backoff with ±25% jitter: 1 s doubling to 5 min.
struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);

    fn new() -> Backoff {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        Backoff {
            next: Self::FIRST,
            rng: seed,
        }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    fn step(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // 75% .. 125% of the base.
        let jitter = 0.75 + (self.rng % 1000) as f64 / 2000.0;
        base.mul_f64(jitter)
    }
}

/// While the key is refused, retry this slowly (the operator has to fix it).
pub const KEY_REFUSED_RETRY: Duration = Duration::from_secs(60);

pub struct Sender {
    agent: ureq::Agent,
    resolver: Arc<CachingResolver>,
    /// `<base>/plain/batch`, `<base>/array`.
    plain_endpoint: String,
    array_endpoint: String,
    key: String,
    /// `[{"intake_key":"<key>",`: how an `/array` body made with the current key begins.
    array_head: Vec<u8>,
    level: u32,
    backoff: Backoff,
    pub health: Health,
    /// The base URL, for the operator (no key in it).
    base: String,
    judge: Judge<Segment>,
    /// While every request is refused: which segment the next slow retry takes.
    probe: usize,
    /// The node and `filepath` named in this sender's gap records.
    host: String,
    file: String,
    /// Gap records the spool could not take yet (full of critical data, or an I/O error).
    pending: Vec<Sealed>,
    /// The segments of the gap records this sender spooled (the latest [`MAX_PENDING_RECORDS`]):
    /// a refusal of one of those is counted and logged but not reported by another record,
    /// which an intake that refuses records would refuse in turn, without end.
    own_records: VecDeque<Segment>,
}

/// Reads an answer's body so the connection is reused: a 2xx up to [`ANSWER_LIMIT`] (its ids
/// are counted), anything else up to 64 KiB (only its first 200 bytes are kept; a proxy's
/// large error page must not cost megabytes at every retry).
fn read_answer(resp: &mut ureq::http::Response<ureq::Body>) -> Vec<u8> {
    let limit = if resp.status().is_success() {
        ANSWER_LIMIT
    } else {
        64 * 1024
    };
    let mut body = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(limit)
        .read_to_end(&mut body);
    body
}

/// A sender never keeps more unstored gap records than this (each is a few hundred bytes).
const MAX_PENDING_RECORDS: usize = 1024;

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    match spool.lock() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// The certificates in a PEM file (other items skipped).
fn pem_certs(pem: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

impl Sender {
    pub fn new(cfg: &IntakeConfig) -> Result<Sender, String> {
        let mut tls = TlsConfig::builder();
        if let Some(ca) = &cfg.ca_file {
            let certs = pem_certs(&read_pem(ca, "CA file")?);
            if certs.is_empty() {
                return Err(format!(
                    "CA file {}: no PEM certificate in it",
                    ca.display()
                ));
            }
            tls = tls.root_certs(RootCerts::new_with_certs(&certs));
        }
        if let Some((cert, key)) = &cfg.client_cert {
            let chain = pem_certs(&read_pem(cert, "client certificate")?);
            if chain.is_empty() {
                return Err(format!(
                    "client certificate {}: no PEM certificate in it",
                    cert.display()
                ));
            }
            let key_pem = read_pem(key, "client key")?;
            let key = PrivateKey::from_pem(&key_pem)
                .map_err(|e| format!("client key {}: {e}", key.display()))?;
            tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
        }
        let proxy = match &cfg.proxy {
            Some(p) => Some(ureq::Proxy::new(p).map_err(|e| format!("proxy {p:?}: {e}"))?),
            None => ureq::Proxy::try_from_env(),
        };
        let config = ureq::Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            .timeout_global(Some(cfg.timeout))
            .max_redirects(0)
            .proxy(proxy)
            .user_agent(concat!("kube-audit-shipper/", env!("CARGO_PKG_VERSION")))
            .build();
        let resolver = Arc::new(CachingResolver::default());
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::new(),
            SharedResolver(resolver.clone()),
        );
        let base = cfg.url.trim_end_matches('/');
        Ok(Sender {
            agent,
            resolver,
            plain_endpoint: format!("{base}/plain/batch"),
            array_endpoint: format!("{base}/array"),
            array_head: {
                let mut head = b"[".to_vec();
                head.extend_from_slice(crate::spool::ENTRY_OPEN);
                crate::extract::json_string(&mut head, &cfg.key, usize::MAX);
                head.push(b',');
                head
            },
            key: cfg.key.clone(),
            level: cfg.level,
            backoff: Backoff::new(),
            health: Health::default(),
            base: base.to_string(),
            judge: Judge::default(),
            probe: 0,
            host: crate::records::hostname(),
            file: String::new(),
            pending: Vec::new(),
            own_records: VecDeque::new(),
        })
    }

    /// The node and the `logfiles:` entry named in this sender's gap records.
    pub fn with_origin(mut self, host: &str, file: &str) -> Sender {
        self.host = host.to_string();
        self.file = file.to_string();
        self
    }

    /// DNS lookups made so far (see [`CachingResolver`]).
    pub fn dns_lookups(&self) -> u64 {
        self.resolver.lookups()
    }

    /// One POST of a gzip body to `/plain/batch` (`check` probes the key with an empty one:
    /// there the key is in a header, so an empty body still tests it).
    pub fn post(&self, gz_body: &[u8], earliest: Option<i64>) -> Answer {
        self.post_as(gz_body, IntakeFormat::PlainBatch, earliest)
    }

    /// One POST of a gzip body of `format`; `earliest` is the `/plain/batch` header's time.
    pub fn post_as(&self, gz_body: &[u8], format: IntakeFormat, earliest: Option<i64>) -> Answer {
        self.exchange(gz_body, format, earliest).0
    }

    /// As [`Sender::post_as`], with the answer's body (up to [`ANSWER_LIMIT`]).
    fn exchange(
        &self,
        gz_body: &[u8],
        format: IntakeFormat,
        earliest: Option<i64>,
    ) -> (Answer, Vec<u8>) {
        let req = match format {
            // The key and the times are in the body.
            IntakeFormat::Array => self
                .agent
                .post(&self.array_endpoint)
                .header("Content-Type", "application/json"),
            IntakeFormat::PlainBatch => {
                let req = self
                    .agent
                    .post(&self.plain_endpoint)
                    .header("Content-Type", "text/plain")
                    .header("X-SEKOIAIO-INTAKE-KEY", &self.key);
                match earliest {
                    Some(t) => req.header(
                        "X-SEKOIAIO-EVENT-TIMESTAMP",
                        crate::timestamp::format_micros(t),
                    ),
                    None => req,
                }
            }
        };
        let sent = req.header("Content-Encoding", "gzip").send(gz_body);
        let mut resp = match sent {
            Ok(r) => r,
            // ureq's errors name the URL, never the headers or the body: no key in them.
            Err(e) => {
                self.resolver.forget();
                return (Answer::Failed(e.to_string()), Vec::new());
            }
        };
        let code = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = read_answer(&mut resp);
        let answer = match code {
            200..=299 => Answer::Accepted,
            413 => Answer::TooLarge,
            429 | 503 => Answer::Busy(retry_after),
            401 | 403 | 422 => Answer::KeyRefused(code),
            _ => Answer::Status(code),
        };
        (answer, body)
    }

    /// A request to the `/plain/batch` endpoint that cannot store anything (`GET`, no body;
    /// `/array` is on the same host, behind the same proxy and TLS), for `check`:
    /// the HTTP status, or the transport error. It takes the path a POST takes (DNS, proxy,
    /// TLS with the CA and client certificate), so any status proves that path. The key goes
    /// along, as with a POST and to the same host over the same TLS, so that an intake which
    /// checks it before the method can say it is refused.
    pub fn probe(&self) -> Result<u16, String> {
        let mut resp = self
            .agent
            .get(&self.plain_endpoint)
            .header("X-SEKOIAIO-INTAKE-KEY", &self.key)
            .call()
            // ureq's errors name the URL, never the headers: no key in them.
            .map_err(|e| e.to_string())?;
        read_answer(&mut resp);
        Ok(resp.status().as_u16())
    }

    /// Sends the next spooled segment and acts on the answer (see the module table).
    /// The spool lock is not held during the request.
    pub fn deliver_next(&mut self, spool: &Mutex<Spool>) -> Step {
        let (seg, body) = {
            let mut s = lock(spool);
            self.store_pending(&mut s);
            let Some(seg) = self.pick(&s) else {
                return Step::Idle;
            };
            match s.read_with_head(&seg) {
                Ok(Ok(crate::spool::Checked { body, head })) => {
                    // (A key too long for the head is compared as far as the head goes.)
                    let want = &self.array_head[..self.array_head.len().min(crate::spool::HEAD)];
                    if seg.format == IntakeFormat::Array && !head.starts_with(want) {
                        return self.rekey(&mut s, &seg);
                    }
                    (seg, body)
                }
                Ok(Err(reason)) => {
                    return match s.quarantine(&seg, &reason) {
                        Ok(()) => Step::Progress,
                        Err(e) => self.failed(format!("quarantining {}: {e}", seg.file_name())),
                    };
                }
                Err(e) => return self.failed(format!("reading {}: {e}", seg.file_name())),
            }
        };
        let (answer, reply) = self.exchange(&body, seg.format, seg.earliest);
        self.act(spool, &seg, answer, &reply)
    }

    /// The segment to send now: while every request is refused, a different one at each
    /// slow retry; else the first in order that is not held aside (see [`Judge`]), or, with
    /// only held ones left, the first of those.
    fn pick(&mut self, s: &Spool) -> Option<Segment> {
        if self.judge.configuration().is_some() {
            let seg = s.nth_wrapping(self.probe).cloned();
            self.probe = self.probe.wrapping_add(1);
            return seg;
        }
        self.judge.retain(|k| s.contains(k));
        let skip = self.judge.skipped();
        s.next_except(&skip).or_else(|| skip.first()).cloned()
    }

    /// An `/array` segment written with another key (the operator replaced a refused one):
    /// rewrite it with the current key, then send it as usual. Neither key is shown.
    fn rekey(&mut self, spool: &mut Spool, seg: &Segment) -> Step {
        // `array_head` is `[` + the entry's opening + the key + `,`.
        let key_json =
            &self.array_head[1 + crate::spool::ENTRY_OPEN.len()..self.array_head.len() - 1];
        match spool.rekey(seg, key_json, self.level) {
            Ok(_) => {
                log::warn!(
                    "{}: spooled with another intake key; rewritten with the current one",
                    seg.file_name()
                );
                Step::Progress
            }
            Err(e) => self.failed(format!(
                "rewriting {} with the current key: {e}",
                seg.file_name()
            )),
        }
    }

    fn act(&mut self, spool: &Mutex<Spool>, seg: &Segment, answer: Answer, reply: &[u8]) -> Step {
        let mut s = lock(spool);
        match answer {
            Answer::Accepted => self.accepted(&mut s, seg, reply),
            Answer::TooLarge => {
                self.health.attempts[1] += 1;
                match s.split(seg, self.level) {
                    Ok(Some(_)) => {
                        self.health.split_segments += 1;
                        log::warn!(
                            "intake refused {} as too large; split in two",
                            seg.file_name()
                        );
                        Step::Progress
                    }
                    Ok(None) => {
                        let reason = "a single event refused as too large (HTTP 413)";
                        match s.quarantine(seg, reason) {
                            Ok(()) => Step::Progress,
                            Err(e) => self.failed(format!("quarantining {}: {e}", seg.file_name())),
                        }
                    }
                    Err(e) => self.failed(format!("splitting {}: {e}", seg.file_name())),
                }
            }
            Answer::Busy(after) => {
                self.health.attempts[2] += 1;
                self.health.consecutive_failures += 1;
                let wait = after.unwrap_or_else(|| self.backoff.step());
                log::info!("intake busy; next attempt in {wait:?}");
                Step::Wait(wait.min(Backoff::MAX))
            }
            Answer::KeyRefused(code) => {
                self.health.attempts[3] += 1;
                self.health.consecutive_failures += 1;
                self.health.key_refused = Some(code);
                log::error!(
                    "intake refused the intake key (HTTP {code}): check the key and the intake's \
                     subscription; events stay spooled and are retried every {}s",
                    KEY_REFUSED_RETRY.as_secs()
                );
                Step::Wait(KEY_REFUSED_RETRY)
            }
            Answer::Status(code) if is_refusal(code) => self.refused(&mut s, seg, code, reply),
            Answer::Status(code) => {
                self.health.attempts[4] += 1;
                drop(s);
                self.failed(format!("HTTP {code}"))
            }
            Answer::Failed(why) => {
                self.health.attempts[4] += 1;
                drop(s);
                self.failed(why)
            }
        }
    }

    /// A 2xx: delete the segment, then check the answer's ids against its events.
    fn accepted(&mut self, s: &mut Spool, seg: &Segment, reply: &[u8]) -> Step {
        self.health.attempts[0] += 1;
        crate::fault::crash_point("intake_accepted");
        if let Err(e) = s.ack(seg) {
            return self.failed(format!("deleting {}: {e}", seg.file_name()));
        }
        self.judge.accepted();
        if self.health.key_refused.take().is_some() {
            log::warn!("intake accepts the key again");
        }
        if self.health.intake_refusing.take().is_some() {
            log::warn!("intake {} accepts requests again", self.base);
        }
        self.health.consecutive_failures = 0;
        self.health.delivered_segments += 1;
        self.health.delivered_bytes += seg.bytes;
        self.backoff.reset();
        let mut confirmed = seg.events;
        match confirm(reply, seg.events) {
            Confirmation::All => {}
            Confirmation::Missing(n) => {
                confirmed -= n;
                self.health.events_refused += u64::from(n);
                log::error!(
                    "intake accepted {} but returned ids for {} of its {} events: {n} refused \
                     by the intake (reported in-band)",
                    seg.file_name(),
                    seg.events - n,
                    seg.events
                );
                self.report(s, seg, u64::from(n), None);
            }
            // Accepted with a 2xx, so deleted: sending it again would duplicate what the
            // intake did store, and nothing says what it did not. Counted, not hidden.
            Confirmation::Unreadable(why) => {
                self.health.segments_unconfirmed += 1;
                log::warn!(
                    "intake accepted {} (HTTP 2xx) but its answer is {why}, not \
                     {{\"event_ids\":[…]}}: delivery of its {} events is unconfirmed",
                    seg.file_name(),
                    seg.events
                );
            }
        }
        self.health.delivered_events += u64::from(confirmed);
        Step::Progress
    }

    /// A permanent refusal ([`is_refusal`]): the [`Judge`] says what to do.
    fn refused(&mut self, s: &mut Spool, seg: &Segment, code: u16, reply: &[u8]) -> Step {
        self.health.attempts[5] += 1;
        self.health.consecutive_failures += 1;
        let name = seg.file_name();
        let mut skip = self.judge.skipped();
        skip.push(seg.clone());
        let others = s.next_except(&skip).is_some();
        match self.judge.refused(seg, seg.events, code, others) {
            Action::Configuration(status) => {
                self.health.intake_refusing = Some(status);
                let why = Refusal::new(status, reply, &self.key);
                log::error!(
                    "intake {} refuses every request with HTTP {status} ({}): check intake_url \
                     (or region) and the proxy; nothing is dropped or set aside, retrying every \
                     {}s",
                    self.base,
                    why.answer,
                    CONFIG_RETRY.as_secs()
                );
                Step::Wait(CONFIG_RETRY)
            }
            Action::Hold => {
                log::warn!(
                    "intake refused {name} with HTTP {code}; sending other segments first to \
                     tell a bad event from a wrong configuration"
                );
                Step::Progress
            }
            Action::Split => match s.split(seg, self.level) {
                Ok(Some(_)) => {
                    self.health.split_segments += 1;
                    log::warn!("intake refused {name} with HTTP {code}; split in two");
                    Step::Progress
                }
                Ok(None) => self.failed(format!("HTTP {code}; {name} cannot be split")),
                Err(e) => self.failed(format!("splitting {name}: {e}")),
            },
            Action::DeadLetter => self.dead_letter(s, seg, Refusal::new(code, reply, &self.key)),
            Action::Retry => {
                let wait = self.backoff.step();
                log::warn!(
                    "intake refused {name} with HTTP {code}; nothing else to send: retrying in \
                     {wait:?}"
                );
                Step::Wait(wait)
            }
        }
    }

    /// Moves a single refused event out of the queue into `refused/` and reports it.
    fn dead_letter(&mut self, s: &mut Spool, seg: &Segment, why: Refusal) -> Step {
        let name = seg.file_name();
        let kept = match s.dead_letter(seg, &why) {
            Ok(DeadLettered::Kept) => Some(
                crate::spool::refused::dir(s.dir())
                    .join(&name)
                    .display()
                    .to_string(),
            ),
            Ok(DeadLettered::Dropped) => None,
            Err(e) => return self.failed(format!("moving {name} to refused/: {e}")),
        };
        self.health.events_dead_lettered += u64::from(seg.events);
        log::error!(
            "intake refused {name} (a single event) with HTTP {} twice while accepting other \
             segments: {} ({}); reported in-band; answer: {}",
            why.status,
            match &kept {
                Some(_) => "moved to refused/",
                None => "deleted, the refused/ folder is full",
            },
            "`kube-audit-shipper spool list` shows it, `spool resend` re-queues it",
            why.answer
        );
        let dead = (why.status, why.answer.as_str(), kept.as_deref());
        self.report(s, seg, u64::from(seg.events), Some(dead));
        Step::Progress
    }

    /// Queues a `refused_by_intake` gap record in the spool, as one critical segment of the
    /// refused segment's form, at the refused events' time.
    fn report(
        &mut self,
        s: &mut Spool,
        seg: &Segment,
        events: u64,
        dead_letter: Option<(u16, &str, Option<&str>)>,
    ) {
        let name = seg.file_name();
        if self.own_records.contains(seg) {
            log::error!("{name} is this sender's own refused_by_intake record: not reported again");
            return;
        }
        let now = crate::metrics::now_micros() as i64;
        let record = crate::records::Refused {
            file: &self.file,
            segment: &name,
            events,
            first_event_at: seg.earliest,
            dead_letter,
        };
        let mut text = Vec::new();
        crate::records::refused(&mut text, &self.host, &record, now);
        let limits = BatchLimits {
            level: self.level,
            ..BatchLimits::default()
        };
        let mut batcher = Batcher::with_format(limits, seg.format, &self.key);
        let body = match seg.format {
            IntakeFormat::PlainBatch => text,
            IntakeFormat::Array => {
                let mut escaped = Vec::new();
                crate::batch::escape_event(&mut escaped, &text);
                escaped
            }
        };
        let ts = Some(seg.earliest.unwrap_or(now));
        let sealed = batcher
            .add(Class::Critical, &body, ts, Instant::now())
            .and_then(|_| batcher.seal(Class::Critical));
        match sealed {
            Ok(Some(sealed)) if self.pending.len() < MAX_PENDING_RECORDS => {
                self.pending.push(sealed);
                self.store_pending(s);
            }
            Ok(_) => log::error!("a refused_by_intake record for {name} could not be queued"),
            Err(e) => log::error!("a refused_by_intake record for {name}: {e}"),
        }
    }

    /// Stores the gap records waiting (in order) until the spool refuses one.
    fn store_pending(&mut self, s: &mut Spool) {
        while let Some(first) = self.pending.first() {
            match s.store(first) {
                Ok(Stored::Written(seg)) => {
                    self.pending.remove(0);
                    self.health.records_spooled += 1;
                    if self.own_records.len() == MAX_PENDING_RECORDS {
                        self.own_records.pop_front();
                    }
                    self.own_records.push_back(seg);
                }
                Ok(Stored::Full) => return,
                Err(e) => {
                    log::warn!("spooling a refused_by_intake record: {e}; retrying");
                    return;
                }
            }
        }
    }

    fn failed(&mut self, why: String) -> Step {
        self.health.consecutive_failures += 1;
        let wait = self.backoff.step();
        log::warn!("sending failed ({why}); next attempt in {wait:?}");
        Step::Wait(wait)
    }
}

/// `Retry-After`: delay-seconds or an HTTP date (IMF-fixdate).
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[2])? + 1;
    let text = format!("{}-{month:02}-{:0>2}T{}Z", parts[3], parts[1], parts[4]);
    let at = crate::timestamp::parse_micros(&text)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_micros() as i64;
    Some(Duration::from_micros(at.saturating_sub(now).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_both_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let soon = SystemTime::now() + Duration::from_secs(3600);
        let secs = soon.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let iso = crate::timestamp::format_micros(secs * 1_000_000);
        // Rebuild an IMF date from the ISO one: YYYY-MM-DDTHH:MM:SS...
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let m: usize = iso[5..7].parse().unwrap();
        let imf = format!(
            "Mon, {} {} {} {} GMT",
            &iso[8..10],
            months[m - 1],
            &iso[0..4],
            &iso[11..19]
        );
        let d = parse_retry_after(&imf).unwrap();
        assert!(
            d > Duration::from_secs(3590) && d <= Duration::from_secs(3600),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    /// Replays answers through a [`Judge`] driven like the sender drives it: a queue of
    /// segments (name, events), the first one not skipped is sent; `refuses(name)` says
    /// whether the intake refuses it (with `status`). Returns the actions taken, the
    /// dead-lettered segments and the configuration verdict at the end.
    fn replay(
        mut queue: Vec<(String, u32)>,
        refuses: impl Fn(&str) -> bool,
        status: u16,
        steps: usize,
    ) -> (Vec<Action>, Vec<String>, Option<u16>) {
        let mut judge: Judge<String> = Judge::default();
        let (mut actions, mut dead) = (Vec::new(), Vec::new());
        for _ in 0..steps {
            judge.retain(|k| queue.iter().any(|(n, _)| n == k));
            let skip = judge.skipped();
            let Some((name, events)) = queue
                .iter()
                .find(|(n, _)| !skip.contains(n))
                .or_else(|| queue.iter().find(|(n, _)| skip.first() == Some(n)))
                .cloned()
            else {
                break;
            };
            if judge.configuration().is_some() {
                break;
            }
            let at = queue.iter().position(|(n, _)| *n == name).unwrap();
            if !refuses(&name) {
                judge.accepted();
                queue.remove(at);
                continue;
            }
            let others = queue.iter().any(|(n, _)| *n != name && !skip.contains(n));
            let action = judge.refused(&name, events, status, others);
            match &action {
                Action::Split => {
                    // The bad event is the one named "bad" inside: halves "<name>a" / "<name>b"
                    // of events/2 each; the bad event follows the "a" half here.
                    queue.remove(at);
                    let half = events / 2;
                    queue.insert(at, (format!("{name}b"), events - half));
                    queue.insert(at, (format!("{name}a"), half));
                }
                Action::DeadLetter => {
                    queue.remove(at);
                    dead.push(name.clone());
                }
                _ => {}
            }
            actions.push(action);
        }
        (actions, dead, judge.configuration())
    }

    #[test]
    fn one_bad_event_is_isolated_and_dead_lettered_while_the_rest_flows() {
        // The bad event is in the first half at every level: the worst case for a
        // bisection, which must never look like configuration.
        let bad = |n: &str| n.starts_with("s") && n[1..].bytes().all(|b| b == b'a');
        for others in [0, 3] {
            let mut queue = vec![("s".to_string(), 1000)];
            queue.extend((0..others).map(|i| (format!("t{i}"), 10)));
            let (actions, dead, config) = replay(queue, bad, 400, 200);
            assert_eq!(config, None, "{actions:?}");
            assert_eq!(dead.len(), 1, "{actions:?}");
            assert!(bad(&dead[0]));
            assert!(
                !actions
                    .iter()
                    .any(|a| matches!(a, Action::Configuration(_)))
            );
        }
    }

    #[test]
    fn everything_refused_is_configuration_with_nothing_dead_lettered() {
        for segments in [1, 2, 5] {
            let queue = (0..segments).map(|i| (format!("s{i}"), 100)).collect();
            let (actions, dead, config) = replay(queue, |_| true, 404, 50);
            assert_eq!(config, Some(404), "{actions:?}");
            assert!(dead.is_empty());
            // At most one split before the verdict (a lone segment gives its halves).
            let splits = actions.iter().filter(|a| **a == Action::Split).count();
            assert!(splits <= 1, "{actions:?}");
        }
        // A lone single event refused over and over: configuration too, never dead-lettered.
        let (_, dead, config) = replay(vec![("s".into(), 1)], |_| true, 404, 50);
        assert_eq!((dead.len(), config), (0, Some(404)));
    }

    #[test]
    fn a_one_off_refusal_costs_a_retry_not_a_dead_letter() {
        let mut judge: Judge<&str> = Judge::default();
        judge.accepted();
        assert_eq!(judge.refused(&"x", 1, 400, true), Action::Hold);
        assert_eq!(judge.skipped(), vec!["x"]);
        judge.accepted(); // another segment passes
        assert!(judge.skipped().is_empty(), "x is tried again");
        judge.accepted(); // x itself passes on its retry
        judge.retain(|_| false);
        assert_eq!(judge.configuration(), None);
        // Refused again only after a success in between: dead letter.
        assert_eq!(judge.refused(&"y", 1, 400, true), Action::Hold);
        judge.accepted();
        assert_eq!(judge.refused(&"y", 1, 400, true), Action::DeadLetter);
        // Different statuses do not add up to configuration.
        let mut j: Judge<u32> = Judge::default();
        for (i, status) in [400, 404, 400, 404].into_iter().enumerate() {
            assert_ne!(
                j.refused(&(i as u32), 10, status, true),
                Action::Configuration(status)
            );
        }
        // A success ends a configuration verdict.
        for i in 0..3 {
            j.refused(&(10 + i), 10, 405, true);
        }
        assert_eq!(j.configuration(), Some(405));
        j.accepted();
        assert_eq!(j.configuration(), None);
    }

    #[test]
    fn permanent_refusals_are_3xx_and_4xx_but_the_handled_ones() {
        for s in [301, 302, 307, 400, 404, 405, 410, 415] {
            assert!(is_refusal(s), "{s}");
        }
        for s in [200, 401, 403, 408, 413, 422, 429, 500, 502, 503] {
            assert!(!is_refusal(s), "{s}");
        }
    }

    #[test]
    fn the_answer_confirms_events_by_their_ids() {
        assert_eq!(confirm(br#"{"event_ids":["a","b"]}"#, 2), Confirmation::All);
        assert_eq!(
            confirm(br#"{"event_ids":["a"]}"#, 3),
            Confirmation::Missing(2)
        );
        assert_eq!(confirm(br#"{"event_ids":[]}"#, 1), Confirmation::Missing(1));
        assert_eq!(confirm(br#"{"event_ids":["a","b"]}"#, 1), Confirmation::All);
        for bad in [
            &b""[..],
            b"OK",
            b"<html>proxy</html>",
            br#"{"ids":[]}"#,
            b"[1]",
        ] {
            assert!(
                matches!(confirm(bad, 1), Confirmation::Unreadable(_)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..12).map(|_| b.step()).collect();
        assert!(waits[0] >= Duration::from_millis(750) && waits[0] <= Duration::from_millis(1250));
        assert!(waits[3] >= Duration::from_secs(6) && waits[3] <= Duration::from_secs(10));
        assert!(waits[11] <= Backoff::MAX.mul_f64(1.25));
        b.reset();
        assert!(b.step() <= Duration::from_millis(1250));
    }
}
