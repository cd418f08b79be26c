//! Prometheus metrics of the rules stage; the server registers them with
//! the other stages' in one registry for `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::engine::TickReport;

/// A `rule` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// Rule name.
    pub rule: String,
}

/// The rules stage's metrics.
pub struct RuleMetrics {
    /// Firings per rule.
    pub firings: Family<RuleLabel, Counter>,
    /// Evaluations that failed per rule (the other rules kept firing).
    pub failures: Family<RuleLabel, Counter>,
    /// Seconds per micro-batch.
    pub batch_seconds: Histogram,
    /// Seconds from the oldest event's receipt to its batch's firings being durable.
    pub latency_seconds: Histogram,
}

impl RuleMetrics {
    /// The rules metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> RuleMetrics {
        let m = RuleMetrics {
            firings: Family::default(),
            failures: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.001, 1.25, 45)),
            latency_seconds: Histogram::new(exponential_buckets(0.01, 1.25, 30)),
        };
        registry.register("rule_firings", "Rule firings", m.firings.clone());
        registry.register(
            "rule_failures",
            "Rule evaluations that failed (the other rules kept firing)",
            m.failures.clone(),
        );
        registry.register(
            "rule_batch_seconds",
            "Seconds per micro-batch",
            m.batch_seconds.clone(),
        );
        registry.register(
            "rule_latency_seconds",
            "Seconds from receipt of a batch's oldest event to its firings being durable",
            m.latency_seconds.clone(),
        );
        m
    }

    /// Counts a batch's firings and failures per rule.
    pub fn record(&self, report: &TickReport) {
        for f in &report.firings {
            self.firings
                .get_or_create(&RuleLabel {
                    rule: f.rule.clone(),
                })
                .inc();
        }
        for f in &report.failures {
            self.failures
                .get_or_create(&RuleLabel {
                    rule: f.rule.clone(),
                })
                .inc();
        }
    }
}
