//! `GET /metrics`: one Prometheus registry holding each stage's metrics,
//! defined beside the stage (`kairos_ingest::metrics`,
//! `kairos_rules::metrics`, the publisher's here, where its loop runs).

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use kairos_rules::metrics::RuleMetrics;

/// The publisher's metrics.
pub struct PublishMetrics {
    /// Age of the oldest staged data when the last publish took it.
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Bytes staged and not yet published.
    pub staged_bytes: Gauge,
    /// Rows published to Parquet tables.
    pub rows: Counter,
    /// Repeated messageIds dropped at publish.
    pub duplicates: Counter,
}

impl PublishMetrics {
    fn register(registry: &mut Registry) -> PublishMetrics {
        let m = PublishMetrics {
            lag_seconds: Gauge::default(),
            staged_bytes: Gauge::default(),
            rows: Counter::default(),
            duplicates: Counter::default(),
        };
        registry.register(
            "publish_lag_seconds",
            "Age of the oldest staged data when the last publish took it",
            m.lag_seconds.clone(),
        );
        registry.register(
            "staged_bytes",
            "Bytes staged and not yet published",
            m.staged_bytes.clone(),
        );
        registry.register(
            "published_rows",
            "Rows published to Parquet tables",
            m.rows.clone(),
        );
        registry.register(
            "publish_duplicates",
            "Repeated messageIds dropped at publish",
            m.duplicates.clone(),
        );
        m
    }
}

/// Every stage's metrics in one registry.
pub struct Metrics {
    registry: Registry,
    /// Intake and staging.
    pub ingest: Arc<kairos_ingest::Metrics>,
    /// The rules loop.
    pub rules: RuleMetrics,
    /// Publishing.
    pub publish: PublishMetrics,
}

impl Metrics {
    /// Registers every stage's metrics under the `kairos_` prefix.
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("kairos");
        let ingest = kairos_ingest::Metrics::register(&mut registry);
        let rules = RuleMetrics::register(&mut registry);
        let publish = PublishMetrics::register(&mut registry);
        Arc::new(Metrics {
            registry,
            ingest,
            rules,
            publish,
        })
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_registry_renders_every_stage() {
        let m = Metrics::new();
        m.ingest.accepted.inc_by(3);
        m.rules.batch_seconds.observe(0.5);
        m.publish.rows.inc_by(2);
        let text = m.render();
        for line in [
            "kairos_ingest_events_accepted_total 3",
            "kairos_rule_batch_seconds_count 1",
            "kairos_published_rows_total 2",
            "kairos_staged_bytes 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
