//! Kairos ingest: Segment-compatible HTTP intake with durable group commit.
//!
//! ```text
//! POST /v1/* ──▶ http (auth, gzip, size) ──▶ calls (validate each item)
//!            ──▶ commit (group commit into the staging log) ──▶ 200 once durable
//! ```

pub mod body;
pub mod calls;
pub mod commit;
pub mod http;
pub mod metrics;

pub use calls::{CallType, ItemError, Normalizer};
pub use commit::{Committed, Committer};
pub use http::{IngestLimits, IngestState, WriteAccess, router};
pub use metrics::Metrics;
