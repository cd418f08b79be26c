//! End-to-end tests: each starts the real `kairos` binary on a loopback port
//! it picks and drives it over HTTP, then reads the published Parquet.
//!
//! Needs the binary built (`cargo build --workspace --bins`; `.ci/run` does it) and, for
//! the S3, reader and page tests, what `.ci/setup-test-env` installs
//! (`KAIROS_TEST_S3S_FS`, `KAIROS_TEST_PYTHON`, `KAIROS_TEST_CHROMIUM`).

mod analysts;
mod binaries;
mod durability;
mod import;
mod ingest;
mod lift;
mod messaging;
mod pages;
mod policy;
mod privacy;
mod readers;
mod replay;
mod report;
mod rules;
mod rules_live;
mod s3;
mod security;
mod stats_load;
mod support;
