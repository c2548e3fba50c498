//! kube-audit-shipper: ships Kubernetes API-server audit logs to the SEKOIA.IO intake.
//!
//! The modules follow an event through the program (DESIGN.md §1):
//!
//! ```text
//! audit.log ──lines──► line ──extract──► event ──batch──► gzip segment ──spool──► intake
//! ```
//!
//! - [`tail`]: follows the audit log across rotation, compression and restarts; checkpoints.
//! - [`lines`]: splits a byte stream into lines in bounded memory, padded for in-place parsing.
//! - [`extract`]: parses a line with simd-json and writes the `audit`, `ecs` or `raw` form.
//! - [`batch`]: events → gzip batches within the intake's limits, one event time each.
//! - [`pipeline`]: one input's stage, extract → spool, fed by a tailer or by the webhook.
//! - [`webhook`]: the API server's audit webhook, answered once its events are durable.
//! - [`http`]: the small HTTP/1.1 server of the webhook and the metrics endpoints.
//! - [`commit`]: how far into each file progress may be recorded: never past a line that is
//!   not durable yet.
//! - [`spool`]: the durable, byte-capped queue of batches; critical before bulk.
//! - [`intake`]: posts spooled batches to the SEKOIA.IO intake over HTTPS (ureq + rustls).
//! - [`timestamp`]: the API server's RFC 3339 times, for batching by event time.
//! - [`durable`]: write-tmp, fsync, rename, fsync-dir: how state reaches disk.
//! - [`fault`]: test-only crash points inside those steps.
//! - [`cmd`]: the subcommands.

pub mod batch;
pub mod cmd;
pub mod commit;
pub mod config;
pub mod durable;
pub mod extract;
pub mod fault;
pub mod filter;
pub mod http;
pub mod intake;
pub mod lines;
pub mod metrics;
pub mod pipeline;
pub mod records;
pub mod run;
pub mod spool;
pub mod tail;
pub mod timestamp;
pub mod webhook;
