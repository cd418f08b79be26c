//! Compaction for `kairos compact` and the server's schedule: which
//! hours of which tables are safe to merge (`kairos_storage::compact` does
//! the merging and the atomic swap).
//!
//! An hour is merged once it ended `settle` ago, and only when no writer
//! can still add to it or rewrite one of its files:
//! - `events`, `profiles`, `profile_changes`, `identities`: not while a
//!   publish is unfinished (its redo rewrites files by name);
//! - `firings`, `assignments`, `sends`: only hours before the rules'
//!   last batch (the one batch a restart may redo);
//! - `deliveries`: only hours before the oldest delivery in flight.

use anyhow::Context as _;
use object_store::path::Path as ObjectPath;

use kairos_core::time::{HOUR_US, hour_bucket, now_us};
use kairos_storage::DataRoot;
use kairos_storage::compact::{CompactStats, CompactTable};

use crate::tables::Writer;

/// One compaction pass over every table of `root`.
pub async fn run(
    root: &DataRoot,
    settle_us: i64,
    row_group_rows: usize,
) -> anyhow::Result<CompactStats> {
    let now = now_us();
    let tables = plan(root, now - settle_us).await?;
    let root = root.clone();
    let stats = tokio::task::spawn_blocking(move || {
        kairos_storage::compact::compact(&root, &tables, 2, row_group_rows)
    })
    .await
    .context("compaction task")??;
    Ok(stats)
}

/// Every table with the last instant its hours may end at.
async fn plan(root: &DataRoot, until: i64) -> anyhow::Result<Vec<CompactTable>> {
    let publishing = !root
        .list(&ObjectPath::from(kairos_storage::publish::PUBLISHING_DIR))
        .await?
        .is_empty();
    let stored = if publishing { i64::MIN } else { until };
    // Without a readable checkpoint the batch a restart may redo is
    // unknown, and merging its hour would leave the redo's rows twice.
    let checkpoint: Option<kairos_rules::runner::Checkpoint> = match root
        .read(&ObjectPath::from(kairos_rules::runner::CHECKPOINT))
        .await?
    {
        Some(bytes) => Some(serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} does not read; compaction waits until the server has written it again",
                kairos_rules::runner::CHECKPOINT
            )
        })?),
        None => None,
    };
    let rules = checkpoint.map_or(until, |c| until.min(hour_bucket(c.clock_us) * HOUR_US));
    let oldest_intent = root
        .list(&ObjectPath::from(kairos_messaging::delivery::INTENTS_DIR))
        .await?
        .iter()
        .map(|m| m.last_modified.timestamp_micros())
        .min();
    let deliveries = oldest_intent.map_or(until, |t| until.min(hour_bucket(t) * HOUR_US));

    Ok(crate::tables::all()
        .iter()
        .map(|t| {
            t.compact(match t.writer {
                Writer::Publisher => stored,
                Writer::Batch => rules,
                Writer::Delivery => deliveries,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreadable_rules_checkpoint_stops_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let path = dir.path().join(kairos_rules::runner::CHECKPOINT);
        std::fs::create_dir_all(path.parent().expect("dir")).expect("mkdir");
        std::fs::write(&path, b"{\"batch\": 3, \"do").expect("write");
        let err = match plan(&root, now_us()).await {
            Ok(_) => panic!("planned as if there were no checkpoint"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("does not read"), "{err}");
    }
}
