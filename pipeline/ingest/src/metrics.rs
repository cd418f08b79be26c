//! Prometheus metrics for ingest and publishing, served at `GET /metrics`.
//! Labels never carry customer data.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// A `rule` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// Rule name.
    pub rule: String,
}

/// All Kairos metrics.
pub struct Metrics {
    registry: Registry,
    /// Events accepted (durable and acknowledged).
    pub accepted: Counter,
    /// Items or requests rejected, by reason.
    pub rejected: Family<Reason, Counter>,
    /// Items per group commit.
    pub commit_items: Histogram,
    /// Seconds per group commit (append + fsync or PUT).
    pub commit_seconds: Histogram,
    /// Age in seconds of the oldest staged data when the last publish took it.
    pub publish_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Bytes staged and not yet published.
    pub staged_bytes: Gauge,
    /// Rows published, all tables.
    pub published_rows: Counter,
    /// Duplicates dropped at publish.
    pub duplicates: Counter,
    /// Object-store errors by operation.
    pub store_errors: Family<Op, Counter>,
    /// Firings by rule.
    pub rule_firings: Family<RuleLabel, Counter>,
    /// Rule evaluations that failed, by rule.
    pub rule_failures: Family<RuleLabel, Counter>,
    /// Seconds per micro-batch (state update, rules, outputs, checkpoint).
    pub rule_batch_seconds: Histogram,
    /// Seconds from the oldest event's receipt to its batch's firings being durable.
    pub rule_latency_seconds: Histogram,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kairos");
        let accepted = Counter::default();
        let rejected = Family::<Reason, Counter>::default();
        let commit_items = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let publish_lag_seconds = Gauge::default();
        let staged_bytes = Gauge::default();
        let published_rows = Counter::default();
        let duplicates = Counter::default();
        let store_errors = Family::<Op, Counter>::default();
        let rule_firings = Family::<RuleLabel, Counter>::default();
        let rule_failures = Family::<RuleLabel, Counter>::default();
        let rule_batch_seconds = Histogram::new(exponential_buckets(0.001, 1.25, 45));
        let rule_latency_seconds = Histogram::new(exponential_buckets(0.01, 1.25, 30));
        registry.register("rule_firings", "Rule firings", rule_firings.clone());
        registry.register(
            "rule_failures",
            "Rule evaluations that failed (the other rules kept firing)",
            rule_failures.clone(),
        );
        registry.register(
            "rule_batch_seconds",
            "Seconds per micro-batch",
            rule_batch_seconds.clone(),
        );
        registry.register(
            "rule_latency_seconds",
            "Seconds from receipt of a batch's oldest event to its firings being durable",
            rule_latency_seconds.clone(),
        );
        registry.register(
            "ingest_events_accepted",
            "Events durable and acknowledged",
            accepted.clone(),
        );
        registry.register(
            "ingest_events_rejected",
            "Items or requests rejected, by reason",
            rejected.clone(),
        );
        registry.register(
            "group_commit_items",
            "Items per group commit",
            commit_items.clone(),
        );
        registry.register(
            "group_commit_seconds",
            "Seconds per group commit (append and fsync, or PUT)",
            commit_seconds.clone(),
        );
        registry.register(
            "publish_lag_seconds",
            "Age of the oldest staged data when the last publish took it",
            publish_lag_seconds.clone(),
        );
        registry.register(
            "staged_bytes",
            "Bytes staged and not yet published",
            staged_bytes.clone(),
        );
        registry.register(
            "published_rows",
            "Rows published to Parquet tables",
            published_rows.clone(),
        );
        registry.register(
            "publish_duplicates",
            "Repeated messageIds dropped at publish",
            duplicates.clone(),
        );
        registry.register(
            "object_store_errors",
            "Object store errors by operation",
            store_errors.clone(),
        );
        Arc::new(Metrics {
            registry,
            accepted,
            rejected,
            commit_items,
            commit_seconds,
            publish_lag_seconds,
            staged_bytes,
            published_rows,
            duplicates,
            store_errors,
            rule_firings,
            rule_failures,
            rule_batch_seconds,
            rule_latency_seconds,
        })
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

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
