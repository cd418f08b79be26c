//! Kairos experiment reports: every rule is an experiment, and this crate
//! says how its arms did.
//!
//! - [`lake`] registers the lake's Parquet tables (`assignments/`, `sends/`,
//!   `events/`, `identities/`) with DataFusion, on a local directory or an
//!   object store.
//! - [`outcomes`] keeps each recipient's window outcome up to date as data
//!   arrives (`_kairos/outcomes/`), recomputing only the days new data
//!   reaches, so a report over millions of recipients reads one row each.
//! - [`metrics`] computes, in one SQL query, the per-(experiment, arm,
//!   variant) recipients, messages, conversions and revenue sums — the
//!   sufficient statistics of `kairos_experiments::stats` — from the
//!   outcomes when they answer the report's options, else from the raw
//!   tables.
//! - [`report`] turns them into a [`Report`]: per-arm metrics, the analysis
//!   of each treatment against the holdout and triggered against scheduled,
//!   the sample-ratio check against the rule's configured split, and the
//!   overview's headline numbers with corrected p-values.
//! - [`program`] reads every rule together: triggered against scheduled
//!   and each against the holdout pooled across rules, incremental revenue
//!   in currency, the global control group, and lift by send delay.
//! - [`http`] serves it under `/api/` and as the pages `/experiments`,
//!   `/experiments/{rule}` and `/program` (token or loopback only; at most
//!   `report.max_concurrent` reports computed at once); [`pages`] renders
//!   those pages as HTML with inline SVG charts ([`svg`]); [`text`] prints
//!   a report in the terminal (`kairos report`).
//!
//! Definitions and the JSON schemas: `docs/reports.md`.

pub mod attribution;
pub mod http;
pub mod lake;
pub mod metrics;
pub mod options;
pub mod outcomes;
pub mod pages;
pub mod program;
pub mod report;
pub mod svg;
pub mod text;

pub use lake::Lake;
pub use options::{Capping, ReportOptions};
pub use report::{
    Overview, Report, experiment_report, experiment_report_from, overview, overview_from,
};

/// Why a report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No experiment (rule) of that name: neither assignments nor a rule file.
    #[error("no experiment named `{rule}`; known: {}", known.join(", "))]
    UnknownRule {
        /// The name asked for.
        rule: String,
        /// Every experiment the lake or the rules folder knows.
        known: Vec<String>,
    },
    /// A report option is invalid (the query parameter or flag is named).
    #[error("{param}: {problem}")]
    BadOption {
        /// The parameter, as named in the query string.
        param: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The query over the lake failed.
    #[error("querying the lake: {0}")]
    Query(#[from] datafusion::error::DataFusionError),
    /// The statistics engine refused the sums (a bug if it happens: the
    /// sums come from the same rows).
    #[error("analysing the sums: {0}")]
    Stats(#[from] kairos_experiments::stats::StatsError),
    /// The maintained outcomes could not be read or written.
    #[error("outcomes (_kairos/outcomes/): {0}")]
    Outcomes(String),
    /// Every report slot (`report.max_concurrent`) stayed busy for
    /// `report.queue_timeout`: ask again later.
    #[error(
        "too many reports are being computed (report.max_concurrent); retry in {retry_after_secs} s"
    )]
    Busy {
        /// When to ask again, seconds (the `Retry-After` header).
        retry_after_secs: u64,
    },
    /// The statistics task panicked (a bug: please report it with the
    /// request).
    #[error(
        "the statistics task failed ({0}); this is a bug in Kairos: please report it with the request or `kairos stats` input that caused it"
    )]
    Task(String),
    /// The statistics did not finish within [`STATS_DEADLINE`].
    #[error(
        "the statistics took longer than {secs} s and were abandoned; narrow the report (from/to) or report this input as a bug"
    )]
    Deadline {
        /// The deadline, seconds.
        secs: u64,
    },
}

/// How long the statistics of one report may take. They are microseconds
/// to milliseconds; the deadline is the guarantee that no input can hold a
/// request (or the shutdown waiting for it) longer.
pub const STATS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs CPU-bound statistics on tokio's blocking pool, so they never hold
/// an async worker that other requests and the shutdown signal need, and
/// gives up on them after [`STATS_DEADLINE`] (the thread finishes on its
/// own; every function it runs is bounded).
pub async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ReportError> {
    match tokio::time::timeout(STATS_DEADLINE, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ReportError::Task(e.to_string())),
        Err(_) => Err(ReportError::Deadline {
            secs: STATS_DEADLINE.as_secs(),
        }),
    }
}

impl From<datafusion::arrow::error::ArrowError> for ReportError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        ReportError::Query(e.into())
    }
}

impl From<datafusion::parquet::errors::ParquetError> for ReportError {
    fn from(e: datafusion::parquet::errors::ParquetError) -> Self {
        ReportError::Query(e.into())
    }
}
