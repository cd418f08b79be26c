//! The Kairos server, assembled from the stage crates.
//!
//! [`Server::build`] wires storage, ingest, the rules loop (rules, policy,
//! messaging), reports, provider callbacks, erasure, compaction and
//! publishing from one [`kairos_core::Config`]; [`Server::run`] serves until
//! SIGTERM or Ctrl-C. The `kairos` binary is argument parsing around this
//! crate; `replay`, `backtest` and the benchmarks build the same stages
//! through [`live`].

pub mod access;
pub mod callbacks;
pub mod compact;
pub mod listen;
pub mod live;
pub mod metrics;
pub mod privacy;
mod server;
pub mod tables;
pub mod unsubscribe;

pub use server::Server;
