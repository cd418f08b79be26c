//! `kairos replay`: history through the whole pipeline, in event time.
//!
//! The input is stored exactly as ingest would store it (staged, then
//! published with dedupe and profile merging) and run through the same
//! durable batches as `serve`, with the rule clock following event time:
//! events are sorted by timestamp and cut into batches of `--batch-span` of
//! event time, each run at the clock of its latest event. Sweeps are
//! evaluated at their boundaries inside each batch and decisions carry
//! those boundaries, so the span changes speed, not results; between
//! batches the replay stops only where a sequence step or a queued send
//! comes due. A later `serve` on the same data root carries on from the
//! replay's checkpoint without firing anything old.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::Mutex;

use kairos_core::Config;
use kairos_core::event::StagedItem;
use kairos_rules::runner::Runner;
use kairos_storage::{ConsumedGate, DataRoot, Publisher, PublisherOptions, StagingLog, WriterId};

use crate::import::{ImportKind, read_items};
use crate::progress::Progress;
use kairos_server::live;

/// Staged bytes that trigger a publish during the replay.
const PUBLISH_EVERY_BYTES: usize = 128 << 20;

/// Cuts time-sorted items into batches spanning at most `span_us` of event time.
pub fn batches(items: Vec<StagedItem>, span_us: i64) -> Vec<Vec<StagedItem>> {
    let mut out: Vec<Vec<StagedItem>> = Vec::new();
    let mut start = i64::MIN;
    for item in items {
        let t = item.timestamp_us();
        match out.last_mut() {
            Some(b) if t - start < span_us => b.push(item),
            _ => {
                start = t;
                out.push(vec![item]);
            }
        }
    }
    out
}

/// The batches of [`batches`] with the clock each runs at: its latest
/// event. Nothing ticks between them: the engine evaluates each sweep at
/// the boundaries a batch passes, in event time, and a replay stops where
/// a later stage has work due (see [`replay`]).
pub fn timeline(items: Vec<StagedItem>, span_us: i64) -> Vec<(i64, Vec<StagedItem>)> {
    batches(items, span_us)
        .into_iter()
        .map(|batch| {
            let clock = batch
                .iter()
                .map(StagedItem::timestamp_us)
                .max()
                .unwrap_or(0);
            (clock, batch)
        })
        .collect()
}

/// `kairos replay` flags.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Data root. Default from config (./kairos-data).
    #[arg(long)]
    data: Option<String>,
    /// Segment calls as NDJSON (events and identify calls), or CSV /
    /// Parquet event exports (`event`/`event_type`, `userId`/`user_id`,
    /// `timestamp`/`event_time`; other columns become properties).
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Rules folder. Default from config (./sql).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Event time per micro-batch.
    #[arg(long, default_value = "30m")]
    batch_span: String,
}

/// `kairos replay`.
pub async fn run(mut config: Config, args: ReplayArgs) -> anyhow::Result<()> {
    config.storage.data = args.data.unwrap_or(config.storage.data);
    config.rules.dir = args.rules.unwrap_or(config.rules.dir);
    let span_us = batch_span_us(&args.batch_span)?;
    replay(config, &args.input, span_us).await
}

/// `--batch-span` (replay, backtest, demo) in µs.
pub fn batch_span_us(text: &str) -> anyhow::Result<i64> {
    let us = kairos_core::time::parse_duration_us(text).context("--batch-span")?;
    anyhow::ensure!(us > 0, "--batch-span must be longer than 0 (e.g. 30m)");
    Ok(us)
}

/// Replays `inputs` into the configured data root.
pub async fn replay(config: Config, inputs: &[PathBuf], span_us: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut items = Vec::new();
    let mut rejected = 0;
    for file in inputs {
        let read = read_items(&config, ImportKind::Events, file)?;
        for e in read.errors.iter().take(20) {
            eprintln!("{}:{}: {}: {}", file.display(), e.0 + 1, e.1, e.2);
        }
        rejected += read.errors.len();
        items.extend(read.staged);
    }
    items.sort_by_key(StagedItem::timestamp_us);

    let root = DataRoot::open(&config.storage.data)
        .with_context(|| format!("opening data root {}", config.storage.data))?;
    // Erased customers stay erased: their calls never reach the rules.
    let suppression = kairos_storage::privacy::Suppression::load(&root).await?;
    if !suppression.is_empty() {
        let before = items.len();
        items.retain(|i| !suppression.any(i.customer_ids()));
        if items.len() < before {
            println!(
                "{} call(s) naming erased customers dropped",
                before - items.len()
            );
        }
    }
    let total = items.len();
    let writer = WriterId::fresh();
    let log = Arc::new(Mutex::new(StagingLog::open(root.clone(), writer.clone())?));
    let gate: ConsumedGate = Arc::default();
    let rules = live::load_rules(&config).await?;
    // History is continuous: no stretch between two batches is downtime,
    // so nothing due in it is too old to fire (`catch_up` bounds what a
    // restarted server reaches back for).
    let mut opts = live::engine_options(&config)?;
    opts.catch_up_us = kairos_rules::engine::NO_CATCH_UP_LIMIT;
    opts.event_clock = true;
    let rec = Runner::recover(
        root.clone(),
        rules,
        &BTreeMap::new(),
        opts,
        gate.clone(),
        Some(&writer),
    )
    .await?;
    let mut runner = rec.runner;
    let dispatcher = live::add_stages(
        &config,
        &mut runner,
        &root,
        rec.redo_batch.as_deref(),
        live::Wiring::default(),
    )
    .await?;
    if let Some((redo, at)) = rec.redo {
        runner.redo(redo, at).await?;
    }
    anyhow::ensure!(
        rec.pending.items.is_empty(),
        "the data root has staged events the rules have not consumed; run `kairos serve` on it once (it catches up and publishes), then replay"
    );
    let mut publisher = Publisher::new(
        root.clone(),
        log.clone(),
        PublisherOptions::from_config(&config),
    )
    .await
    .with_gate(gate);

    // Sweeps go live at the first event, not at the end of the first
    // batch: what a live run from that moment would fire, whatever the span.
    if let Some(first) = items.first() {
        runner
            .run(Vec::new(), &BTreeMap::new(), first.timestamp_us())
            .await?;
    }
    let mut per_rule: HashMap<String, usize> = HashMap::new();
    let mut failures = 0;
    let mut done = 0;
    let mut staged = 0;
    let mut progress = Progress::new("replayed", total as u64);
    let mut ticked = i64::MIN;
    for (clock, batch) in timeline(items, span_us) {
        // Between batches, tick where a stage has work due (a sequence
        // step, a queued send), as a live clock would pass those moments.
        let first = batch.first().map_or(clock, StagedItem::timestamp_us);
        while let Some(due) = runner.next_work()
            && due < first
            && due > ticked
        {
            let report = runner.run(Vec::new(), &BTreeMap::new(), due).await?;
            for f in &report.firings {
                *per_rule.entry(f.rule.clone()).or_default() += 1;
            }
            ticked = due;
        }
        ticked = ticked.max(clock);
        let mut frame = Vec::new();
        for item in &batch {
            serde_json::to_writer(&mut frame, item)?;
            frame.push(b'\n');
        }
        staged += frame.len();
        let at = log.lock().await.append(&frame).await?;
        done += batch.len();
        let to = BTreeMap::from([(writer.0.clone(), at)]);
        let report = runner.run(batch, &to, clock).await?;
        for f in &report.firings {
            *per_rule.entry(f.rule.clone()).or_default() += 1;
        }
        for f in &report.failures {
            failures += 1;
            eprintln!("rule {} failed: {}", f.rule, f.error);
        }
        if staged >= PUBLISH_EVERY_BYTES {
            publisher.publish().await?;
            staged = 0;
        }
        progress.update(done as u64, clock, per_rule.values().sum());
    }
    progress.finish();
    // Every message handed to the workers is delivered and recorded
    // before the replay reports.
    drop(runner);
    if let Some(d) = dispatcher {
        d.finish().await;
    }
    let stats = publisher.publish().await?;
    kairos_storage::staging::remove_writer_dir(&root, &writer);
    let mut rules: Vec<_> = per_rule.into_iter().collect();
    rules.sort();
    println!(
        "replayed {total} items into {} in {:.1} s ({} rejected, {} duplicates dropped at publish); {} rule failure(s)",
        root.url,
        started.elapsed().as_secs_f64(),
        rejected,
        stats.duplicates,
        failures
    );
    for (rule, n) in rules {
        println!("  {rule}: {n} firing(s)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(t: i64) -> StagedItem {
        StagedItem::Identity(kairos_core::event::IdentityLink {
            event_id: t.to_string(),
            source: "s".into(),
            anonymous_id: "a".into(),
            user_id: "u".into(),
            call: "alias".into(),
            timestamp_us: t,
            received_at_us: t,
        })
    }

    #[test]
    fn each_batch_runs_at_its_latest_event() {
        let t = timeline([0, 10, 100, 105].into_iter().map(item).collect(), 25);
        let got: Vec<(i64, usize)> = t.iter().map(|(c, b)| (*c, b.len())).collect();
        assert_eq!(got, vec![(10, 2), (105, 2)]);
    }

    #[test]
    fn batches_span_at_most_the_given_event_time() {
        let b = batches((0..10).map(|t| item(t * 10)).collect(), 25);
        let sizes: Vec<usize> = b.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        assert!(batches(Vec::new(), 25).is_empty());
    }
}
