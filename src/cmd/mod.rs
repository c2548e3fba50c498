//! The subcommands, one module each; `main.rs` parses arguments and calls them.

pub mod bench;
pub mod check;
pub mod extract;
pub mod spool;
