//! Prometheus metrics of the ingest stage (intake and staging); the server
//! registers them with the other stages' in one registry for
//! `GET /metrics`. Labels never carry customer data.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why, e.g. `timestamp`, `malformed_json`, `unauthorized`.
    pub reason: String,
}

/// An `op` label for object-store errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    /// `stage` or `publish`.
    pub op: String,
}

/// The ingest stage's metrics.
pub struct Metrics {
    /// Events durable and acknowledged.
    pub accepted: Counter,
    /// Items or requests rejected, by reason.
    pub rejected: Family<Reason, Counter>,
    /// Items per group commit.
    pub commit_items: Histogram,
    /// Seconds per group commit.
    pub commit_seconds: Histogram,
    /// Object-store errors by operation (staging here; the publisher
    /// counts its own into the same family).
    pub store_errors: Family<Op, Counter>,
}

impl Metrics {
    /// The ingest metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Arc<Metrics> {
        let m = Metrics {
            accepted: Counter::default(),
            rejected: Family::default(),
            commit_items: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            store_errors: Family::default(),
        };
        registry.register(
            "ingest_events_accepted",
            "Events durable and acknowledged",
            m.accepted.clone(),
        );
        registry.register(
            "ingest_events_rejected",
            "Items or requests rejected, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "group_commit_items",
            "Items per group commit",
            m.commit_items.clone(),
        );
        registry.register(
            "group_commit_seconds",
            "Seconds per group commit (append and fsync, or PUT)",
            m.commit_seconds.clone(),
        );
        registry.register(
            "object_store_errors",
            "Object store errors by operation",
            m.store_errors.clone(),
        );
        Arc::new(m)
    }

    /// Counts a rejection.
    pub fn reject(&self, reason: &str, n: u64) {
        self.rejected
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc_by(n);
    }

    /// Counts an object-store error.
    pub fn store_error(&self, op: &str) {
        self.store_errors
            .get_or_create(&Op { op: op.to_string() })
            .inc();
    }
}
