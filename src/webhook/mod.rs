//! The second input: the API server's audit webhook (`--audit-webhook-config-file`).
//!
//! Contract (DESIGN.md §2.1, the same as a file offset's commit): **a request is answered
//! 200 only once every item of it is in a spool segment that is fsynced and renamed**.
//! With `--audit-webhook-mode=blocking` or `batch`, an event the API server got a 200 for
//! therefore survives rotation, pruning and crashes of this process; one it got no 200 for
//! is still the API server's, which retries it (duplicates come only from such retries).
//!
//! - Connection threads ([`crate::http`]) read a body, check the `EventList` envelope and
//!   find its items ([`eventlist`]): a body that is not one is answered 400 and counted,
//!   nothing else is affected.
//! - One pipeline thread takes the requests waiting at that moment (group commit: one fsync
//!   serves many concurrent requests), runs each item through the same [`Stage`] as a log
//!   line (filter → classify → form → batch → spool, same size guard, same counters; an
//!   item that is not an event is forwarded as an unparsed record), seals every batch and
//!   stores it, then answers: 200 when everything is stored; 503 with `Retry-After` when
//!   the spool refuses (full of critical events, disk full, read-only). What was sealed but
//!   not stored stays queued and is stored when the spool takes it: the API server's retry
//!   then duplicates it, nothing is lost. While that backlog exists, new requests are
//!   answered 503 at once.
//! - The webhook's spool, sender and metrics are those of an input named [`WEBHOOK_ID`];
//!   it has no checkpoint (the API server holds what is not answered).

pub mod eventlist;

use crate::config::{Config, WEBHOOK_ID};
use crate::http::{Handler, Limits, Request, Response};
use crate::metrics::{InputState, Value, family, now_micros, sample};
use crate::pipeline::Stage;
use simd_json::INPUT_PADDING;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Requests (or bytes of body) one group commit takes at most.
const GROUP_REQUESTS: usize = 64;
const GROUP_BYTES: usize = 32 * 1024 * 1024;
/// Requests waiting for the pipeline thread beyond those in a group.
const QUEUE: usize = 64;
/// Connections: the API server keeps a few alive; idle ones close after 90 s.
pub const LIMITS: Limits = Limits {
    keep_alive: true,
    max_connections: 32,
    idle: Duration::from_secs(90),
    request: Duration::from_secs(60),
};
/// What a 503 asks the API server to wait.
const RETRY_AFTER_SECS: u64 = 5;
/// Upper bounds (seconds) of the time-to-durable-answer histogram.
const DURABLE_BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];
/// The answers counted by status.
const STATUSES: [u16; 7] = [200, 400, 405, 408, 413, 431, 503];

/// The webhook's own counters (its events are counted in its [`FileMetrics`] like a log's).
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Answers by [`STATUSES`] (others are not produced).
    requests: [Value; STATUSES.len()],
    events_received: Value,
    request_bytes: Value,
    /// Time from a request's body read to its durable answer: histogram in µs.
    durable_buckets: [Value; DURABLE_BUCKETS.len()],
    durable_count: Value,
    durable_sum_micros: Value,
    /// Last time (unix µs) the pipeline thread came round (for `/livez`).
    pub beat_micros: Value,
}

impl WebhookMetrics {
    pub fn new() -> WebhookMetrics {
        let m = WebhookMetrics::default();
        m.beat_micros.set(now_micros());
        m
    }

    fn answered(&self, status: u16) {
        if let Some(i) = STATUSES.iter().position(|&s| s == status) {
            self.requests[i].inc();
        }
    }

    fn durable_after(&self, took: Duration) {
        let secs = took.as_secs_f64();
        for (b, le) in self.durable_buckets.iter().zip(DURABLE_BUCKETS) {
            if secs <= le {
                b.inc();
            }
        }
        self.durable_count.inc();
        self.durable_sum_micros.add(took.as_micros() as u64);
    }

    /// The webhook's families in the Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        family(
            out,
            "webhook_requests_total",
            "counter",
            "Webhook requests answered, by HTTP status.",
        );
        for (s, v) in STATUSES.iter().zip(&self.requests) {
            sample(
                out,
                "webhook_requests_total",
                &[("status", &s.to_string())],
                v.get(),
            );
        }
        let one = [
            (
                "webhook_events_received_total",
                "Items of the EventLists received.",
                &self.events_received,
            ),
            (
                "webhook_request_bytes_total",
                "Bytes of webhook request bodies received.",
                &self.request_bytes,
            ),
        ];
        for (name, help, v) in one {
            family(out, name, "counter", help);
            sample(out, name, &[], v.get());
        }
        let name = "webhook_durable_seconds";
        family(
            out,
            name,
            "histogram",
            "Time from a webhook request's body to its answer, once its events are durable.",
        );
        let bucket = format!("{name}_bucket");
        for (le, v) in DURABLE_BUCKETS.iter().zip(&self.durable_buckets) {
            sample(out, &bucket, &[("le", &le.to_string())], v.get());
        }
        sample(out, &bucket, &[("le", "+Inf")], self.durable_count.get());
        let sum = self.durable_sum_micros.get() as f64 / 1e6;
        out.push_str(&format!("kas_{name}_sum {sum}\n"));
        sample(out, &format!("{name}_count"), &[], self.durable_count.get());
    }
}

/// A request's items, on their way to the pipeline thread.
struct Job {
    body: Vec<u8>,
    items: Vec<Range<usize>>,
    reply: SyncSender<Outcome>,
}

#[derive(Clone, Debug)]
enum Outcome {
    /// Every item is in a stored segment.
    Durable,
    /// The spool refuses: why.
    Busy(&'static str),
}

/// The HTTP side: checks the body, hands it to the pipeline thread, answers.
pub struct Webhook {
    jobs: SyncSender<Job>,
    max_body: usize,
    pub metrics: Arc<WebhookMetrics>,
}

impl Handler for Webhook {
    fn body_limit(&self, method: &str, _path: &str) -> usize {
        if method == "POST" { self.max_body } else { 0 }
    }

    fn handle(&self, request: Request) -> Response {
        let response = self.answer(request);
        self.metrics.answered(response.status);
        response
    }

    fn refused(&self, status: u16) {
        self.metrics.answered(status);
    }
}

impl Webhook {
    fn answer(&self, request: Request) -> Response {
        if request.method != "POST" {
            return Response::text(405, "POST an audit.k8s.io EventList here\n");
        }
        let received = Instant::now();
        self.metrics.request_bytes.add(request.body.len() as u64);
        let mut items = Vec::new();
        if let Err(e) = eventlist::split(&request.body, &mut items) {
            log::warn!("webhook: request from {} refused: {e}", request.peer);
            return Response::text(400, format!("not an audit EventList: {e}\n"));
        }
        self.metrics.events_received.add(items.len() as u64);
        let (reply, answer) = mpsc::sync_channel(1);
        let job = Job {
            body: request.body,
            items,
            reply,
        };
        let outcome = match self.jobs.send(job) {
            Ok(()) => answer.recv().ok(),
            Err(_) => None,
        };
        match outcome {
            Some(Outcome::Durable) => {
                self.metrics.durable_after(received.elapsed());
                Response::text(200, "")
            }
            Some(Outcome::Busy(why)) => Response {
                retry_after: Some(RETRY_AFTER_SECS),
                ..Response::text(503, format!("{why}; retry later\n"))
            },
            None => Response::text(503, "stopping\n"),
        }
    }
}

/// Starts the webhook's pipeline thread on `stage`; returns the HTTP handler.
pub(crate) fn start(
    cfg: &Config,
    stage: Stage,
    metrics: Arc<WebhookMetrics>,
) -> Result<(Arc<Webhook>, JoinHandle<()>), String> {
    let max_body = cfg.webhook.as_ref().map_or(0, |w| w.max_body_bytes);
    let (jobs, queue) = mpsc::sync_channel(QUEUE);
    // Its input is the listener, bound before this: there is nothing to follow or miss.
    stage
        .m
        .input
        .set(InputState::Following, now_micros(), String::new());
    let handle = thread::Builder::new()
        .name("webhook".into())
        .spawn({
            let metrics = metrics.clone();
            move || pipeline_loop(stage, queue, &metrics)
        })
        .map_err(|e| format!("webhook thread: {e}"))?;
    let webhook = Webhook {
        jobs,
        max_body,
        metrics,
    };
    Ok((Arc::new(webhook), handle))
}

/// The pipeline thread: group commits until every handler is gone.
fn pipeline_loop(mut stage: Stage, queue: Receiver<Job>, metrics: &WebhookMetrics) {
    let mut item = Vec::new();
    loop {
        metrics.beat_micros.set(now_micros());
        let first = match queue.recv_timeout(Duration::from_secs(1)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                // Store what an earlier refusal left (and its evictions' records).
                stage.flush();
                stage.seal_everything();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut bytes = first.body.len();
        let mut group = vec![first];
        while group.len() < GROUP_REQUESTS && bytes < GROUP_BYTES {
            match queue.try_recv() {
                Ok(job) => {
                    bytes += job.body.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let outcome = commit_group(&mut stage, &group, &mut item);
        for job in group {
            let _ = job.reply.send(outcome.clone());
        }
    }
}

/// Runs every item of `group` through the stage and stores the batches (see the module doc).
fn commit_group(stage: &mut Stage, group: &[Job], item: &mut Vec<u8>) -> Outcome {
    stage.flush();
    if !stage.backlog.is_empty() {
        return Outcome::Busy(busy_reason(stage));
    }
    stage.batch_lost = false;
    let origin = Path::new(WEBHOOK_ID);
    for job in group {
        for r in &job.items {
            let len = r.len();
            item.clear();
            item.extend_from_slice(&job.body[r.clone()]);
            item.resize(len + INPUT_PADDING, 0);
            stage.m.lines_read.inc();
            stage.m.bytes_read.add(len as u64);
            stage.line(item, len, origin, r.start as u64, None);
        }
    }
    let stored = stage.seal_everything();
    // A batch lost to a batching error held events of this group: not durable.
    if std::mem::take(&mut stage.batch_lost) {
        return Outcome::Busy("a batch could not be compressed");
    }
    if stored {
        Outcome::Durable
    } else {
        Outcome::Busy(busy_reason(stage))
    }
}

fn busy_reason(stage: &Stage) -> &'static str {
    if stage.m.spool_write_failing.get() != 0 {
        "the spool cannot be written"
    } else {
        "the spool is full of events not sent yet"
    }
}
