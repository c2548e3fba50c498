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
//! | 2xx | delete the segment |
//! | 413 | split the segment in two, durably, and send the halves (a single event that is still refused is quarantined: the extractor keeps events within 250,000 bytes, so this means the intake's limit changed) |
//! | 429, 503 | wait `Retry-After` (seconds or an HTTP date), else back off |
//! | 401, 403, 422 | the key or subscription is refused: loud error, health fails, retry slowly; nothing is dropped |
//! | other 4xx/5xx, timeouts, resets, TLS errors | exponential backoff with jitter, forever |
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

use crate::batch::IntakeFormat;
use crate::spool::{Segment, Spool};
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
    /// Attempts by outcome: 2xx, 413, 429/503, key refused, other failures.
    pub attempts: [u64; 5],
}

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
}

/// Reads an answer's body to its end (up to 64 KiB) so the connection is reused.
fn drain(resp: &mut ureq::http::Response<ureq::Body>) {
    let mut sink = Vec::new();
    let _ = resp
        .body_mut()
        .as_reader()
        .take(64 * 1024)
        .read_to_end(&mut sink);
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
        })
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
                return Answer::Failed(e.to_string());
            }
        };
        let code = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        drain(&mut resp);
        match code {
            200..=299 => Answer::Accepted,
            413 => Answer::TooLarge,
            429 | 503 => Answer::Busy(retry_after),
            401 | 403 | 422 => Answer::KeyRefused(code),
            _ => Answer::Status(code),
        }
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
        drain(&mut resp);
        Ok(resp.status().as_u16())
    }

    /// Sends the next spooled segment and acts on the answer (see the module table).
    /// The spool lock is not held during the request.
    pub fn deliver_next(&mut self, spool: &Mutex<Spool>) -> Step {
        let (seg, body) = {
            let mut s = match spool.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            let Some(seg) = s.next().cloned() else {
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
        let answer = self.post_as(&body, seg.format, seg.earliest);
        self.act(spool, &seg, answer)
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

    fn act(&mut self, spool: &Mutex<Spool>, seg: &Segment, answer: Answer) -> Step {
        let mut s = match spool.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        match answer {
            Answer::Accepted => {
                self.health.attempts[0] += 1;
                crate::fault::crash_point("intake_accepted");
                if let Err(e) = s.ack(seg) {
                    return self.failed(format!("deleting {}: {e}", seg.file_name()));
                }
                if self.health.key_refused.take().is_some() {
                    log::warn!("intake accepts the key again");
                }
                self.health.consecutive_failures = 0;
                self.health.delivered_segments += 1;
                self.health.delivered_events += u64::from(seg.events);
                self.health.delivered_bytes += seg.bytes;
                self.backoff.reset();
                Step::Progress
            }
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
