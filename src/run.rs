//! The service: wires tail → extract → filter → batch → spool on the reader thread, and
//! spool → intake on one sender thread per `logfiles:` entry (DESIGN.md §1, §2).
//!
//! The pipeline itself (extract → spool, commit bookkeeping, backpressure) is
//! [`crate::pipeline`]; this module only wires inputs, pipelines, sender threads, signals
//! and metrics. While a batch cannot be stored, a paused reader retries every 200 ms.
//!
//! The reader thread sleeps in one mio poll on every tailer's inotify descriptor and a
//! signalfd (SIGTERM, SIGINT, SIGHUP), with the next batch deadline or rescan as timeout.
//! SIGTERM/SIGINT: seal the open batches, store them, commit, save, return — the sender may
//! be in the middle of a request; its segment stays in the spool and is sent again next time.

use crate::config::{Config, LogFile, WEBHOOK_ID, Webhook};
use crate::http;
use crate::intake::{Sender, Step};
use crate::metrics::{FileMetrics, Metrics, now_micros};
use crate::pipeline::Stage;
use crate::pipeline::file::FilePipeline;
use crate::records;
use crate::spool::{Class, Spool};
use crate::tail::TailConfig;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a paused reader retries storing.
const RETRY_STORE: Duration = Duration::from_millis(200);
/// Longest sleep of the reader loop (the tailer also rescans on its own interval).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Least time between two reads woken by inotify. The API server writes line by line: without
/// this, every line would cost a wake-up, a read and a stat per file (measured with the demo:
/// 4,000 wake-ups/s made the loop, not the parsing, the main cost). Batches linger for
/// seconds anyway, and rotated files are held open, so the delay loses nothing.
const MIN_WAKE_INTERVAL: Duration = Duration::from_millis(50);
/// After this long with nothing read and no batch open, freed memory goes back to the system.
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(2);
/// Longest park of a waiting sender between two heartbeats.
const SENDER_BEAT: Duration = Duration::from_secs(10);
/// How long a stop waits for the senders to finish their current step.
const SENDER_GRACE: Duration = Duration::from_secs(2);

/// Where the spool of a log file lives: `<state_dir>/spool/<id of the file pattern>`.
pub fn spool_dir(state_dir: &Path, filepath: &str) -> PathBuf {
    let tc = TailConfig::new(filepath, state_dir);
    state_dir
        .join("spool")
        .join(tc.checkpoint_name.trim_start_matches("checkpoints-"))
}

/// Starts the sender thread of an input's spool.
fn start_sender(
    cfg: &Config,
    entry: &LogFile,
    host: &str,
    stage: &mut Stage,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<()>, String> {
    let sender = Sender::new(&cfg.intake(entry))
        .map_err(|e| format!("intake: {e}"))?
        .with_origin(host, &entry.filepath);
    let (spool, m, stop) = (stage.spool.clone(), stage.m.clone(), stop.clone());
    let handle = thread::Builder::new()
        .name("sender".into())
        .spawn(move || send_loop(sender, spool, m, stop))
        .map_err(|e| format!("sender thread: {e}"))?;
    stage.sender = Some(handle.thread().clone());
    Ok(handle)
}

/// The webhook input's stage, on its own spool (`<state_dir>/spool/webhook`).
fn open_webhook_stage(cfg: &Config, w: &Webhook, host: &str) -> Result<Stage, String> {
    let dir = webhook_spool_dir(&cfg.state_dir);
    let spool = Spool::open(&dir, cfg.spool_share())
        .map_err(|e| format!("spool {}: {e}", dir.display()))?;
    let rules: Vec<String> = w.entry.rules.iter().map(|r| r.name.clone()).collect();
    let m = Arc::new(FileMetrics::new(WEBHOOK_ID, &rules));
    Ok(Stage::new(cfg, &w.entry, spool, m, host))
}

/// Binds the webhook's listener (TLS when configured) and starts its threads.
fn start_webhook(
    cfg: &Config,
    w: &Webhook,
    stage: Stage,
    metrics: Arc<crate::webhook::WebhookMetrics>,
) -> Result<(), String> {
    let tls = match &w.tls {
        Some((cert, key)) => Some(
            http::tls::server_config(cert, key, w.client_ca.as_deref())
                .map_err(|e| format!("webhook: {e}"))?,
        ),
        None => None,
    };
    let listener = std::net::TcpListener::bind(w.listen)
        .map_err(|e| format!("webhook listen {}: {e}", w.listen))?;
    let (handler, _pipeline) = crate::webhook::start(cfg, stage, metrics)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    thread::Builder::new()
        .name("webhook-http".into())
        .spawn(move || http::serve(listener, tls, handler, crate::webhook::LIMITS, "webhook"))
        .map_err(|e| format!("webhook thread: {e}"))?;
    log::info!(
        "audit webhook on {scheme}://{}{}",
        w.listen,
        if w.client_ca.is_some() {
            " (client certificate required)"
        } else {
            ""
        }
    );
    Ok(())
}

/// Where the webhook's spool lives: `<state_dir>/spool/webhook`.
pub fn webhook_spool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("spool").join(WEBHOOK_ID)
}

/// The sender loop of one log file: deliver, update the metrics, wait as told.
fn send_loop(
    mut sender: Sender,
    spool: Arc<Mutex<Spool>>,
    m: Arc<FileMetrics>,
    stop: Arc<AtomicBool>,
) {
    // Gap records the sender spooled (refusals): events of the spool like the reader's.
    let mut records = 0;
    while !stop.load(Ordering::SeqCst) {
        m.sender_beat_micros.set(now_micros());
        let step = sender.deliver_next(&spool);
        let h = &sender.health;
        let new_records = h.records_spooled - records;
        records = h.records_spooled;
        m.gap_records.add(new_records);
        m.events_spooled.add(new_records);
        m.events_refused_by_intake.set(h.events_refused);
        m.segments_unconfirmed.set(h.segments_unconfirmed);
        m.events_dead_lettered.set(h.events_dead_lettered);
        m.intake_refusing
            .set(u64::from(h.intake_refusing.unwrap_or(0)));
        m.events_shipped.set(h.delivered_events);
        m.segments_shipped.set(h.delivered_segments);
        m.bytes_wire_shipped.set(h.delivered_bytes);
        m.segments_split.set(h.split_segments);
        m.key_refused.set(u64::from(h.key_refused.unwrap_or(0)));
        for (v, n) in m.attempts.iter().zip(h.attempts) {
            v.set(n);
        }
        {
            let s = match spool.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            m.spool_bytes.set(s.bytes());
            m.spool_critical_segments
                .set(s.segments(Class::Critical) as u64);
            m.spool_bulk_segments.set(s.segments(Class::Bulk) as u64);
            m.segments_quarantined.set(s.stats.quarantined);
            m.dead_letters_dropped.set(s.stats.dead_letters_dropped);
            m.refused_bytes.set(s.refused_bytes());
            m.next_event_micros.set(
                s.next()
                    .and_then(|seg| seg.earliest)
                    .map_or(0, |t| t.max(0) as u64),
            );
        }
        match step {
            Step::Progress => m.last_progress_micros.set(now_micros()),
            Step::Idle => {
                m.last_progress_micros.set(now_micros());
                // Woken by the reader after it stores a batch.
                thread::park_timeout(Duration::from_secs(1));
            }
            Step::Wait(d) => {
                let until = Instant::now() + d;
                while !stop.load(Ordering::SeqCst) {
                    // A backoff lasts up to minutes: beat in slices, for /livez.
                    m.sender_beat_micros.set(now_micros());
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    thread::park_timeout(left.min(SENDER_BEAT));
                }
            }
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP, blocked in every thread and read from a signalfd.
struct Signals(OwnedFd);

impl Signals {
    /// Must run before any thread is started (threads inherit the mask).
    fn block() -> io::Result<Signals> {
        // SAFETY: plain libc calls on a local, initialised signal set.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Signals(OwnedFd::from_raw_fd(fd)))
        }
    }

    /// The signals received since the last call.
    fn take(&self) -> Vec<i32> {
        let mut got = Vec::new();
        loop {
            // SAFETY: reading into a properly sized, zeroed signalfd_siginfo.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let n = unsafe {
                libc::read(
                    self.0.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                return got;
            }
            got.push(info.ssi_signo as i32);
        }
    }
}

/// Holds the state directory for this process (a second instance would corrupt it).
fn lock_state_dir(dir: &Path) -> Result<std::fs::File, String> {
    crate::durable::create_dir(dir).map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("state_dir {}: {e}", dir.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "state_dir {} is in use by another kube-audit-shipper (lock {})",
            dir.display(),
            path.display()
        ));
    }
    Ok(file)
}

/// Runs the service until SIGTERM/SIGINT. Errors are for the operator (start-up problems).
pub fn run(cfg: &Config) -> Result<(), String> {
    let signals = Signals::block().map_err(|e| format!("signals: {e}"))?;
    let _lock = lock_state_dir(&cfg.state_dir)?;
    let host = records::hostname();
    let mut pipelines = Vec::new();
    for logfile in &cfg.logfiles {
        pipelines.push(FilePipeline::open(cfg, logfile, &host)?);
    }
    let mut webhook_stage = match &cfg.webhook {
        Some(w) => Some(open_webhook_stage(cfg, w, &host)?),
        None => None,
    };
    let mut files: Vec<Arc<FileMetrics>> = pipelines.iter().map(|p| p.stage.m.clone()).collect();
    files.extend(webhook_stage.as_ref().map(|s| s.m.clone()));
    let mut metrics = Metrics::new(files, cfg.unhealthy_after);
    // A sender's step is at most one request (bounded by the timeout) and a few spool
    // writes; a reader's step is a bounded read and a few spool writes.
    metrics.stuck_after =
        (cfg.request_timeout * 2 + Duration::from_secs(60)).max(Duration::from_secs(120));
    let webhook_metrics = webhook_stage
        .as_ref()
        .map(|_| Arc::new(crate::webhook::WebhookMetrics::new()));
    metrics.webhook = webhook_metrics.clone();
    let metrics = Arc::new(metrics);
    if let Some(addr) = cfg.metrics_address {
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("metrics_address {addr}: {e}"))?;
        let handler = Arc::new(crate::metrics::Endpoints(metrics.clone()));
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || http::serve(listener, None, handler, crate::metrics::LIMITS, "metrics"))
            .map_err(|e| format!("metrics thread: {e}"))?;
        log::info!("metrics on http://{addr}/metrics, health on /healthz, liveness on /livez");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders: Vec<JoinHandle<()>> = Vec::new();
    for (p, logfile) in pipelines.iter_mut().zip(&cfg.logfiles) {
        senders.push(start_sender(cfg, logfile, &host, &mut p.stage, &stop)?);
    }
    if let (Some(w), Some(mut stage), Some(wm)) =
        (&cfg.webhook, webhook_stage.take(), webhook_metrics)
    {
        senders.push(start_sender(cfg, &w.entry, &host, &mut stage, &stop)?);
        start_webhook(cfg, w, stage, wm)?;
    }
    log::info!(
        "shipping {} to {} ({:?} form, state in {})",
        cfg.logfiles
            .iter()
            .map(|l| l.filepath.as_str())
            .chain(cfg.webhook.as_ref().map(|_| "the audit webhook"))
            .collect::<Vec<_>>()
            .join(", "),
        cfg.intake_url,
        cfg.format,
        cfg.state_dir.display()
    );

    let result = reader_loop(&mut pipelines, &signals, &metrics);
    for p in &mut pipelines {
        p.finish();
    }
    stop.store(true, Ordering::SeqCst);
    let grace = Instant::now() + SENDER_GRACE;
    for h in &senders {
        h.thread().unpark();
    }
    for h in senders {
        // A sender in the middle of a request is left to the process exit; its segment
        // stays spooled and is sent again at the next start.
        while !h.is_finished() && Instant::now() < grace {
            thread::sleep(Duration::from_millis(20));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
    log::info!("stopped: open batches spooled, positions saved");
    result
}

fn reader_loop(
    pipelines: &mut [FilePipeline],
    signals: &Signals,
    metrics: &Metrics,
) -> Result<(), String> {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().map_err(|e| format!("mio: {e}"))?;
    let signal_token = Token(usize::MAX);
    let sfd: RawFd = signals.0.as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&sfd), signal_token, Interest::READABLE)
        .map_err(|e| format!("mio: {e}"))?;
    for (i, p) in pipelines.iter().enumerate() {
        if let Some(fd) = p.tailer.watch_fd() {
            poll.registry()
                .register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
                .map_err(|e| format!("mio: {e}"))?;
        }
    }
    let mut events = Events::with_capacity(16);
    let mut last_busy = Instant::now();
    let mut trimmed = false;
    loop {
        metrics.reader_beat_micros.set(now_micros());
        let last_read = Instant::now();
        let mut more = false;
        for p in pipelines.iter_mut() {
            more |= p.step();
        }
        let busy = more
            || pipelines
                .iter()
                .any(|p| !p.stage.batcher.is_empty() || !p.stage.backlog.is_empty());
        if busy {
            last_busy = Instant::now();
            trimmed = false;
        } else if !trimmed && last_busy.elapsed() >= IDLE_TRIM_AFTER {
            return_free_memory();
            trimmed = true;
        }
        for sig in signals.take() {
            if sig == libc::SIGHUP {
                log::info!("SIGHUP ignored (restart to reload the configuration)");
            } else {
                log::info!("signal {sig}: stopping");
                return Ok(());
            }
        }
        if more {
            continue;
        }
        let now = Instant::now();
        let mut timeout = MAX_SLEEP;
        for p in pipelines.iter() {
            if let Some(d) = p.deadline() {
                timeout = timeout.min(d.saturating_duration_since(now));
            }
            if !p.stage.backlog.is_empty() {
                timeout = timeout.min(RETRY_STORE);
            }
        }
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("mio poll: {e}")),
        }
        // Let writes accumulate (see MIN_WAKE_INTERVAL); a backlog (`more`) is not slowed.
        let since = last_read.elapsed();
        if since < MIN_WAKE_INTERVAL {
            thread::sleep(MIN_WAKE_INTERVAL - since);
        }
        // Readiness is edge-triggered: each tailer drains its inotify queue in step().
    }
}

/// Gives freed heap memory back to the system. An edge node spends most of its time idle
/// between bursts; glibc keeps what a burst's batches, gzip states and TLS records freed in
/// its arenas (about 3 MiB measured with the demo), so the idle RSS would stay at the burst's
/// peak. musl's allocator unmaps large freed blocks itself, so there is nothing to do there.
fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
