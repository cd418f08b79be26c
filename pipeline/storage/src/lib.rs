//! Kairos storage: the data root, the durable staging log and the glob-safe
//! Parquet tables.
//!
//! Data flows one way:
//!
//! ```text
//! ingest ──append──▶ staging log (_staging/, fsync'd or one object per commit)
//!                         │ publisher, every publish.interval_secs
//!                         ▼ dedupe by (source, messageId), merge profiles
//!   events/ profiles/ profile_changes/ identities/   date=YYYY-MM-DD/hour=HH/*.parquet
//! ```
//!
//! Nothing under `_staging/` or `_kairos/` belongs to a table, so a plain glob
//! such as `events/**/*.parquet` sees only published, complete files.
//! `compact` merges a closed hour's files into one, swapped in atomically.

pub mod columns;
pub mod compact;
pub mod dedupe;
pub mod privacy;
pub mod profiles;
pub mod publish;
pub mod root;
pub mod staging;
pub mod tables;

pub use publish::{ConsumedGate, PublishStats, Publisher, PublisherOptions};
pub use root::DataRoot;
pub use staging::{Position, StagingLog, WriterId};

/// What went wrong in storage; each variant says what to check.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The object store refused or failed an operation.
    #[error(
        "object store error at {path}: {source}; check the data root is reachable and writable"
    )]
    ObjectStore {
        /// The object path involved.
        path: String,
        /// The store's error.
        #[source]
        source: object_store::Error,
    },
    /// A local file operation failed.
    #[error("I/O error at {path}: {source}; check disk space and permissions")]
    Io {
        /// The file involved.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The data root URL could not be understood.
    #[error("invalid data root {0:?}: use a local directory or s3://bucket/prefix")]
    BadRoot(String),
    /// Writing or reading Parquet failed.
    #[error("parquet error in {path}: {source}")]
    Parquet {
        /// The file involved.
        path: String,
        /// The Parquet error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Arrow could not build a batch (a schema bug).
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The operation cannot be done on this data root; the message says why.
    #[error("{0}")]
    Unsupported(String),
    /// A staged record did not decode (corruption beyond a torn tail).
    #[error("corrupt staging segment {path}: {reason}; move it aside and restart")]
    Corrupt {
        /// The segment.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// Rows read back from a table lack a column the reader needs, or hold
    /// a value it does not know.
    #[error(
        "`{table}` rows are not as this version writes them: {reason}; were they written by another version of Kairos or by hand? Move the file aside and restart"
    )]
    Schema {
        /// The table.
        table: String,
        /// What was wrong.
        reason: String,
    },
}

impl StorageError {
    pub(crate) fn store(path: impl ToString) -> impl FnOnce(object_store::Error) -> StorageError {
        let path = path.to_string();
        move |source| StorageError::ObjectStore { path, source }
    }
    pub(crate) fn io(path: impl ToString) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.to_string();
        move |source| StorageError::Io { path, source }
    }
    pub(crate) fn parquet(
        path: impl ToString,
    ) -> impl FnOnce(parquet::errors::ParquetError) -> StorageError {
        let path = path.to_string();
        move |source| StorageError::Parquet { path, source }
    }
}

/// Result alias for this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;
