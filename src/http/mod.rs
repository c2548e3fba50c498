//! A small synchronous HTTP/1.1 server: the webhook input and `/metrics`, `/healthz`,
//! `/livez` run on it.
//!
//! The request head and chunk sizes are parsed by `httparse` (already linked through ureq);
//! this module only frames: `Content-Length` or `chunked` bodies, keep-alive, `Expect:
//! 100-continue`, and an optional TLS layer (rustls, [`tls`]).
//!
//! Limits, so that no client can hold the others up or the memory down:
//! - at most [`Limits::max_connections`] connections at a time, one thread each (small
//!   stack: handlers hand heavy work to their own thread); one over the cap waits up to 1 s
//!   for a slot, then is answered 503 and closed (plain HTTP) or closed (TLS, where the
//!   handshake would cost more);
//! - a connection idle for [`Limits::idle`] between requests is closed;
//! - a request (head and body) must arrive within [`Limits::request`] from its first byte,
//!   however slowly it trickles: answered 408 and closed;
//! - a head over 16 KiB is answered 431, a body over the handler's limit 413 (before it is
//!   read), and the connection closed.
//!
//! Ambiguous framing is refused (400): `Content-Length` with `Transfer-Encoding`, two
//! different `Content-Length`s, a transfer coding other than `chunked`.

pub mod tls;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Largest request head.
const MAX_HEAD: usize = 16 * 1024;
/// Headers parsed per request.
const MAX_HEADERS: usize = 64;
/// How long a closing connection drains what the client still sends (see [`close`]).
const LINGER: Duration = Duration::from_secs(2);
/// How long a connection over the cap waits for a free slot before it is refused.
const SLOT_WAIT: Duration = Duration::from_secs(1);
/// Stack of a connection thread.
const CONNECTION_STACK: usize = 256 * 1024;

/// One request, its body read whole.
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

/// What a handler answers.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Seconds, for 503 and 429.
    pub retry_after: Option<u64>,
}

impl Response {
    /// A `text/plain` answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
            retry_after: None,
        }
    }
}

/// What a server does with requests.
pub trait Handler: Send + Sync + 'static {
    /// Largest body accepted for `method` on `path` (0: none); a larger one is answered 413
    /// before it is read.
    fn body_limit(&self, method: &str, path: &str) -> usize;
    fn handle(&self, request: Request) -> Response;
    /// The server answered `status` itself (framing, limits, timeouts, busy).
    fn refused(&self, _status: u16) {}
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Serve several requests per connection (else answer each with `Connection: close`).
    pub keep_alive: bool,
    pub max_connections: usize,
    pub idle: Duration,
    pub request: Duration,
}

/// Accepts connections on `listener` until the process ends. `name` names the threads and
/// the log lines.
pub fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<dyn Handler>,
    limits: Limits,
    name: &'static str,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("{name}: accept: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if !wait_for_slot(&active, limits.max_connections) {
            handler.refused(503);
            refuse_busy(stream, tls.is_some(), name);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let (active2, handler, tls) = (active.clone(), handler.clone(), tls.clone());
        let spawned = thread::Builder::new()
            .name(name.into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                if let Err(e) = connection(stream, tls, &*handler, limits) {
                    log::debug!("{name}: connection: {e}");
                }
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!("{name}: cannot start a connection thread: {e}");
        }
    }
}

/// Whether a connection slot is free, waiting up to [`SLOT_WAIT`] for one: a burst (a
/// scraper's probe and request, connections closing) waits its turn; only connections
/// that hold every slot for longer get new ones refused.
fn wait_for_slot(active: &AtomicUsize, max: usize) -> bool {
    let until = Instant::now() + SLOT_WAIT;
    while active.load(Ordering::SeqCst) >= max {
        if Instant::now() >= until {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
    true
}

/// A connection over the cap: told so (plain HTTP), and closed.
fn refuse_busy(mut stream: TcpStream, tls: bool, name: &str) {
    log::debug!("{name}: connection limit reached; refusing a connection");
    if !tls {
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let mut head = Vec::new();
        let busy = Response {
            retry_after: Some(1),
            ..Response::text(503, "too many connections\n")
        };
        let _ =
            write_response(&mut head, &busy, false, true).and_then(|()| stream.write_all(&head));
    }
}

/// A connection's byte stream, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Serves the requests of one connection until it closes, idles out or errs.
fn connection(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: &dyn Handler,
    limits: Limits,
) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(limits.request))?;
    let mut conn = match tls {
        None => Conn::Plain(stream),
        Some(cfg) => {
            let server = rustls::ServerConnection::new(cfg).map_err(io::Error::other)?;
            Conn::Tls(Box::new(rustls::StreamOwned::new(server, stream)))
        }
    };
    let mut input = Input {
        buf: Vec::new(),
        deadline: None,
        limits,
    };
    loop {
        let head = match input.head(&mut conn) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(Refusal::Io(e)) => return Err(e),
            Err(Refusal::Answer(status, why)) => {
                handler.refused(status);
                return answer_and_close(&mut conn, status, why);
            }
        };
        let limit = handler.body_limit(&head.method, &head.path);
        let body = match input.body(&mut conn, &head, limit) {
            Ok(b) => b,
            Err(Refusal::Io(e)) => return Err(e),
            Err(Refusal::Answer(status, why)) => {
                handler.refused(status);
                return answer_and_close(&mut conn, status, why);
            }
        };
        input.deadline = None;
        let keep = head.keep_alive && limits.keep_alive;
        let is_head = head.method == "HEAD";
        let response = handler.handle(Request {
            method: head.method,
            path: head.path,
            body,
            peer,
        });
        let mut out = Vec::with_capacity(256 + response.body.len());
        write_response(&mut out, &response, is_head, !keep)?;
        conn.write_all(&out)?;
        conn.flush()?;
        if !keep {
            close(&mut conn);
            return Ok(());
        }
    }
}

fn answer_and_close(conn: &mut Conn, status: u16, why: String) -> io::Result<()> {
    let mut out = Vec::new();
    write_response(&mut out, &Response::text(status, why + "\n"), false, true)?;
    conn.write_all(&out)?;
    conn.flush()?;
    close(conn);
    Ok(())
}

/// Closes after an answer. The client may still be sending (a body refused before it was
/// read): closing with unread bytes would make the kernel reset the connection, and a reset
/// can destroy the answer before the client reads it. So the write side is shut and what
/// still comes is read and dropped for up to [`LINGER`].
fn close(conn: &mut Conn) {
    if let Conn::Tls(s) = conn {
        s.conn.send_close_notify();
        let _ = s.flush();
    }
    let mut tcp = conn.tcp();
    let _ = tcp.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut sink = [0u8; 16 * 1024];
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match tcp.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Why a request is not handed to the handler.
enum Refusal {
    /// The connection failed or timed out while idle: close without a word.
    Io(io::Error),
    /// Answer this status with this reason, then close.
    Answer(u16, String),
}

impl From<io::Error> for Refusal {
    fn from(e: io::Error) -> Refusal {
        Refusal::Io(e)
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Head {
    method: String,
    path: String,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// Bytes read from a connection and not consumed yet, and the current request's deadline.
struct Input {
    buf: Vec<u8>,
    deadline: Option<Instant>,
    limits: Limits,
}

impl Input {
    /// Reads more bytes; `Ok(0)` at the end of the stream. Idle (no request started) it
    /// waits [`Limits::idle`]; inside a request, until the request's deadline (408).
    fn fill(&mut self, conn: &mut Conn) -> Result<usize, Refusal> {
        let wait = match self.deadline {
            None => self.limits.idle,
            Some(d) => d.saturating_duration_since(Instant::now()),
        };
        if wait.is_zero() {
            return Err(timeout());
        }
        conn.tcp().set_read_timeout(Some(wait))?;
        let mut chunk = [0u8; 16 * 1024];
        match conn.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
            Err(e)
                if self.deadline.is_some()
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                Err(timeout())
            }
            Err(e) => Err(Refusal::Io(e)),
        }
    }

    /// The next request's head; `None` when the client closed (or idled out) between
    /// requests.
    fn head(&mut self, conn: &mut Conn) -> Result<Option<Head>, Refusal> {
        loop {
            if !self.buf.is_empty() && self.deadline.is_none() {
                self.deadline = Some(Instant::now() + self.limits.request);
            }
            if let Some((head, used)) = parse_head(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(head));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Refusal::Answer(431, "request head over 16 KiB".into()));
            }
            let idle = self.buf.is_empty();
            match self.fill(conn) {
                Ok(0) if idle => return Ok(None),
                Ok(0) => return Err(Refusal::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(Refusal::Io(_)) if idle => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// The body the head announces, at most `limit` bytes.
    fn body(&mut self, conn: &mut Conn, head: &Head, limit: usize) -> Result<Vec<u8>, Refusal> {
        if let Framing::Length(n) = head.framing
            && n > limit as u64
        {
            return Err(too_large(limit));
        }
        if head.expect_continue {
            conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            conn.flush()?;
        }
        match head.framing {
            Framing::Length(n) => {
                let n = n as usize;
                while self.buf.len() < n {
                    if self.fill(conn)? == 0 {
                        return Err(Refusal::Io(io::ErrorKind::UnexpectedEof.into()));
                    }
                }
                let rest = self.buf.split_off(n);
                Ok(std::mem::replace(&mut self.buf, rest))
            }
            Framing::Chunked => self.chunked(conn, limit),
        }
    }

    /// A `chunked` body: chunks until the last (size 0), then trailers, which are skipped.
    fn chunked(&mut self, conn: &mut Conn, limit: usize) -> Result<Vec<u8>, Refusal> {
        let mut body = Vec::new();
        loop {
            let (used, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                        return Err(bad("chunk size line too long"));
                    }
                    Ok(httparse::Status::Partial) => self.more(conn)?,
                    Err(_) => return Err(bad("bad chunk size")),
                }
            };
            self.buf.drain(..used);
            if size == 0 {
                return self.trailers(conn).map(|()| body);
            }
            if body.len() as u64 + size > limit as u64 {
                return Err(too_large(limit));
            }
            let size = size as usize;
            while self.buf.len() < size + 2 {
                self.more(conn)?;
            }
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(bad("chunk not followed by CRLF"));
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    /// Skips the trailer section up to and including its empty line.
    fn trailers(&mut self, conn: &mut Conn) -> Result<(), Refusal> {
        loop {
            match memchr::memmem::find(&self.buf, b"\r\n") {
                Some(0) => {
                    self.buf.drain(..2);
                    return Ok(());
                }
                Some(i) => {
                    self.buf.drain(..i + 2);
                }
                None if self.buf.len() > MAX_HEAD => return Err(bad("trailers too long")),
                None => self.more(conn)?,
            }
        }
    }

    /// Reads more inside a request; the end of the stream there is an error.
    fn more(&mut self, conn: &mut Conn) -> Result<(), Refusal> {
        match self.fill(conn)? {
            0 => Err(Refusal::Io(io::ErrorKind::UnexpectedEof.into())),
            _ => Ok(()),
        }
    }
}

fn timeout() -> Refusal {
    Refusal::Answer(408, "request not received in time".into())
}

fn bad(why: &str) -> Refusal {
    Refusal::Answer(400, why.into())
}

fn too_large(limit: usize) -> Refusal {
    Refusal::Answer(413, format!("body over {limit} bytes"))
}

/// Parses a complete head at the start of `buf`: the head and its length, or `None` when
/// more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_HEAD => {
            return Err(Refusal::Answer(431, "request head over 16 KiB".into()));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::Answer(431, "too many headers".into()));
        }
        Err(e) => return Err(bad(&format!("bad request head: {e}"))),
    };
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or(target).to_string();
    let http11 = req.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut keep_alive = http11;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value.parse().map_err(|_| bad("bad Content-Length"))?;
            if length.is_some_and(|m| m != n) {
                return Err(bad("two different Content-Length headers"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") || chunked {
                return Err(bad("only `Transfer-Encoding: chunked` is understood"));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let framing = match (chunked, length) {
        (true, Some(_)) => return Err(bad("both Content-Length and Transfer-Encoding")),
        (true, None) => Framing::Chunked,
        (false, n) => Framing::Length(n.unwrap_or(0)),
    };
    let head = Head {
        method,
        path,
        framing,
        keep_alive,
        expect_continue,
    };
    Ok(Some((head, used)))
}

/// Appends the status line, headers and (unless `head_only`) body of `r` to `out`.
fn write_response(out: &mut Vec<u8>, r: &Response, head_only: bool, close: bool) -> io::Result<()> {
    write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )?;
    if let Some(s) = r.retry_after {
        write!(out, "Retry-After: {s}\r\n")?;
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    Ok(())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<(Head, usize)>, u16> {
        parse_head(text.as_bytes()).map_err(|r| match r {
            Refusal::Answer(s, _) => s,
            Refusal::Io(_) => 0,
        })
    }

    #[test]
    fn framing_is_read_from_the_head_and_ambiguity_refused() {
        let (h, used) = head("POST /a?x=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.path.as_str(), &h.framing, used),
            ("/a", &Framing::Length(5), 43)
        );
        assert!(h.keep_alive);
        let (h, _) =
            head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        let (h, _) = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 closes unless asked");
        assert!(head("POST / HTTP/1.1\r\nContent-Le").unwrap().is_none());
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert_eq!(
            head(&huge).err(),
            Some(431),
            "a complete head is still held to 16 KiB"
        );
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "\u{1}\u{2} / HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(head(bad).err(), Some(400), "{bad:?}");
        }
    }
}
