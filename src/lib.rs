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
//! - [`timestamp`]: the API server's RFC 3339 times, for batching by event time.
//! - [`durable`]: write-tmp, fsync, rename, fsync-dir: how state reaches disk.
//! - [`cmd`]: the subcommands.

pub mod cmd;
pub mod durable;
pub mod extract;
pub mod lines;
pub mod tail;
pub mod timestamp;
