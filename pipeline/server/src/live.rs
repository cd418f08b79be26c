//! The live micro-batch loop of `kairos serve`.
//!
//! Every `rules.interval_ms` it takes the appends ingest made durable since
//! the last tick (handed over in memory, never re-read), runs them as one
//! durable batch ([`kairos_rules::runner`]), and counts firings, failures
//! and latency in `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;

use kairos_core::Config;
use kairos_core::event::StagedItem;
use kairos_core::time::Clock;
use kairos_ingest::Committed;
use kairos_rules::metrics::RuleMetrics;
use kairos_rules::runner::Runner;
use kairos_rules::{EngineOptions, TickReport};
use kairos_storage::{ConsumedGate, DataRoot, Position, WriterId};

use crate::metrics::Metrics;

/// Which clock drives the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleClock {
    /// The machine's clock.
    Wall,
    /// The latest event time seen (tests and demos posting old events).
    Events,
}

impl RuleClock {
    /// From `rules.clock`.
    pub fn parse(s: &str) -> anyhow::Result<RuleClock> {
        match s {
            "wall" => Ok(RuleClock::Wall),
            "events" => Ok(RuleClock::Events),
            other => anyhow::bail!("rules.clock = {other:?}: use \"wall\" or \"events\""),
        }
    }
}

/// Loads and checks the rules; refuses to go on when any is invalid.
pub async fn load_rules(config: &Config) -> anyhow::Result<Vec<kairos_rules::Rule>> {
    let dir = &config.rules.dir;
    let (rules, errors) = kairos_rules::check_dir(dir).await;
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "refusing to start: {} problem(s) in the rules in {}:\n{}\nfix them (`kairos rules check {}`) or set rules.enabled = false",
            errors.len(),
            dir.display(),
            list.join("\n"),
            dir.display()
        );
    }
    Ok(rules)
}

/// Engine options from `[rules]`.
pub fn engine_options(config: &Config) -> anyhow::Result<EngineOptions> {
    let catch_up_us =
        kairos_core::time::parse_duration_us(&config.rules.catch_up).context("rules.catch_up")?;
    let dedupe_horizon_us = kairos_core::time::parse_duration_us(&config.rules.dedupe_horizon)
        .context("rules.dedupe_horizon")?;
    // Rows built from stored state can repeat for as long as catch_up
    // reaches back: a shorter horizon would let them fire twice.
    anyhow::ensure!(
        dedupe_horizon_us > catch_up_us,
        "rules.dedupe_horizon ({}) must be longer than rules.catch_up ({}), or a trigger inside catch-up could fire twice",
        config.rules.dedupe_horizon,
        config.rules.catch_up
    );
    Ok(EngineOptions {
        catch_up_us,
        event_clock: RuleClock::parse(&config.rules.clock)? == RuleClock::Events,
        dedupe_horizon_us,
        wall: Clock::system(),
    })
}

/// Adds the policy stage for the runner's rules to every batch, its memory
/// rebuilt from `sends/` and `assignments/` (without the batch `skip`
/// being redone).
pub async fn add_policy_stage(
    config: &Config,
    runner: &mut Runner,
    root: &DataRoot,
    skip: Option<&str>,
) -> anyhow::Result<()> {
    let rules = runner
        .engine
        .rules()
        .map(kairos_policy::tables::rule_meta)
        .collect();
    let released_by = runner.checkpoint().released_by();
    let stage = policy_stage(config, rules, root, skip, released_by).await?;
    runner.add_stage(Box::new(stage));
    Ok(())
}

/// The stages after the rules, in the order data flows: the policy chain,
/// then (unless `messaging.enabled` is false) delivery. Returns the
/// delivery workers, to be finished once the runner is dropped.
pub async fn add_stages(
    config: &Config,
    runner: &mut Runner,
    root: &DataRoot,
    skip: Option<&str>,
    wiring: Wiring,
) -> anyhow::Result<Option<kairos_messaging::Dispatcher>> {
    add_policy_stage(config, runner, root, skip).await?;
    if !config.messaging.enabled {
        return Ok(None);
    }
    let rules: Vec<kairos_rules::Rule> = runner.engine.rules().cloned().collect();
    let (stage, dispatcher) = messaging_stage(config, &rules, root, skip, wiring).await?;
    runner.add_stage(Box::new(stage));
    Ok(Some(dispatcher))
}

/// Loads and checks the templates every rule sends.
pub async fn load_templates(
    config: &Config,
    rules: &[kairos_rules::Rule],
) -> anyhow::Result<kairos_messaging::Templates> {
    let dir = &config.messaging.templates;
    let templates = kairos_messaging::Templates::load(dir).map_err(|errors| {
        for e in &errors {
            tracing::error!("{e}");
        }
        anyhow::anyhow!(
            "{} problem(s) in the templates folder {}: {}",
            errors.len(),
            dir.display(),
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    let errors = kairos_messaging::check_rules(rules, &templates).await;
    anyhow::ensure!(
        errors.is_empty(),
        "{} template problem(s): {}",
        errors.len(),
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(templates)
}

/// Where sends that find their customer unreachable are reported (serve
/// records them as consent changes; see `callbacks::forward`).
pub type Updates = tokio::sync::mpsc::UnboundedSender<kairos_messaging::callbacks::StatusUpdate>;

/// How delivery is wired into this process. The default: the providers
/// `[messaging.channels]` configures, the machine's clock, a fresh instance
/// name and no consent feedback.
#[derive(Default, Clone)]
pub struct Wiring {
    /// Where unreachable customers are reported.
    pub updates: Option<Updates>,
    /// The clock the loop and delivery read.
    pub wall: Clock,
    /// Names this process's delivery files (unique per process; the
    /// server's staging writer id). None: a random one.
    pub instance: Option<String>,
    /// Providers to deliver through instead of the configured ones (the
    /// simulator's, which fail on purpose).
    pub providers: Option<Vec<(kairos_core::Channel, Arc<dyn kairos_messaging::Adapter>)>>,
}

/// The delivery stage and its channel workers (the outbox for every
/// channel), recovered from `deliveries/`, leftover intents and `sends/`.
pub async fn messaging_stage(
    config: &Config,
    rules: &[kairos_rules::Rule],
    root: &DataRoot,
    skip: Option<&str>,
    wiring: Wiring,
) -> anyhow::Result<(kairos_messaging::Messaging, kairos_messaging::Dispatcher)> {
    use kairos_messaging::delivery::InDoubt;
    use kairos_policy::Channel;
    let m = &config.messaging;
    let templates = std::sync::Arc::new(load_templates(config, rules).await?);
    let channel = |name: &str, what: &str| {
        Channel::parse(name).ok_or_else(|| {
            anyhow::anyhow!(
                "messaging.{what}: {name:?} is not a channel (email, sms, whatsapp, push, webhook)"
            )
        })
    };
    let mut settings = kairos_messaging::Settings {
        max_attempts: m.max_attempts.max(1),
        public_url: m.public_url.clone(),
        link_key: kairos_messaging::delivery::link_key(root, &m.link_key.0)
            .await
            .context("reading or storing _kairos/link-key")?,
        max_sms_segments: m.max_sms_segments.max(1),
        status_updates: wiring.updates.clone(),
        wall: wiring.wall.clone(),
        ..Default::default()
    };
    if let Some(instance) = &wiring.instance {
        settings.instance = instance.clone();
    }
    // One attempt may take the channel's request timeout (HTTP, SMTP) and
    // a little more (DNS, connection set-up) before delivery gives up on it.
    for (name, c) in &m.channels {
        settings.attempt_timeout.insert(
            channel(name, "channels")?,
            kairos_messaging::request_timeout(c) + Duration::from_secs(5),
        );
    }
    for (name, rate) in &m.rate_per_second {
        settings
            .rate_per_second
            .insert(channel(name, "rate_per_second")?, *rate);
    }
    for (name, mode) in &m.in_doubt {
        let mode = match mode.as_str() {
            "retry" => InDoubt::Retry,
            "drop" => InDoubt::Drop,
            other => {
                anyhow::bail!("messaging.in_doubt.{name} = {other:?}: use \"retry\" or \"drop\"")
            }
        };
        settings.in_doubt.insert(channel(name, "in_doubt")?, mode);
    }
    let outbox: std::sync::Arc<dyn kairos_messaging::Adapter> = std::sync::Arc::new(
        kairos_messaging::outbox::Outbox::new(root.clone(), &m.from)?,
    );
    for name in m.channels.keys() {
        channel(name, "channels")?;
    }
    let adapters = match wiring.providers {
        Some(providers) => providers,
        None => Channel::ALL
            .into_iter()
            .map(|c| {
                kairos_messaging::adapter(c, m.channels.get(c.as_str()), &outbox, &m.from)
                    .map(|a| (c, a))
                    .map_err(anyhow::Error::from)
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let recovered = kairos_messaging::delivery::recover(root, skip, &settings)
        .await
        .context("rebuilding delivery state from deliveries/ and sends/")?;
    if recovered.retried + recovered.dropped > 0 {
        tracing::warn!(
            retried = recovered.retried,
            dropped = recovered.dropped,
            "sends left in doubt by a crash"
        );
    }
    if let Some(tx) = &wiring.updates {
        for u in &recovered.unreachable {
            let _ = tx.send(u.clone());
        }
    }
    let dispatcher = kairos_messaging::Dispatcher::start(root.clone(), adapters, settings.clone());
    let mut stage = kairos_messaging::Messaging::new(rules, templates, settings, &dispatcher);
    stage.restore(recovered);
    Ok((stage, dispatcher))
}

/// The policy stage from `[policy]` and `[experiments]`, its memory rebuilt
/// from `sends/` and `assignments/` (without the batch being redone).
pub async fn policy_stage(
    config: &Config,
    rules: Vec<kairos_policy::stage::RuleMeta>,
    root: &DataRoot,
    skip: Option<&str>,
    released_by: Option<i64>,
) -> anyhow::Result<kairos_policy::stage::Stage> {
    let p = &config.policy;
    let caps = p
        .caps
        .iter()
        .map(|c| kairos_policy::caps::parse_cap(c).context("policy.caps"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let quiet = match p.quiet_hours.trim() {
        "" => None,
        q => Some(kairos_policy::QuietHours::parse_range(q).context("policy.quiet_hours")?),
    };
    let zone: chrono_tz::Tz = p.default_timezone.parse().map_err(|_| {
        anyhow::anyhow!(
            "policy.default_timezone = {:?} is not an IANA zone (e.g. Europe/Berlin)",
            p.default_timezone
        )
    })?;
    let priority_window_us = kairos_core::time::parse_duration(&p.priority_window)
        .map_err(|e| anyhow::anyhow!("policy.priority_window: {e}"))
        .map(|secs| secs.saturating_mul(1_000_000).min(i64::MAX as u64) as i64)?;
    let pct = config.experiments.global_control_percent;
    anyhow::ensure!(
        (0.0..=100.0).contains(&pct),
        "experiments.global_control_percent = {pct}: use 0 to 100"
    );
    let global =
        (pct > 0.0).then(|| kairos_experiments::GlobalControl::new("kairos-global-control", pct));
    let mut stage = kairos_policy::stage::Stage::new(
        rules,
        kairos_policy::chain::Policy {
            caps,
            quiet,
            priority_window_us,
        },
        global,
        zone,
    );
    kairos_policy::tables::restore(&mut stage, root, skip, released_by)
        .await
        .context("rebuilding the policy stage from sends/ and assignments/")?;
    Ok(stage)
}

/// The running loop's inputs.
pub struct Live {
    /// Durable runner, recovered.
    pub runner: Runner,
    /// This process's staging writer.
    pub writer: WriterId,
    /// Appends from the committer.
    pub feed: mpsc::UnboundedReceiver<Committed>,
    /// Tick interval.
    pub interval: Duration,
    /// Which clock drives the rules.
    pub clock: RuleClock,
    /// The clock the loop reads.
    pub wall: Clock,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Delivery workers: finished (every handed message delivered and
    /// recorded) after the last batch.
    pub dispatcher: Option<kairos_messaging::Dispatcher>,
}

/// Recovers the engine from the lake, redoes an interrupted batch and runs
/// what was staged but not consumed; returns the runner ready for new input.
pub async fn recover(
    config: &Config,
    root: &DataRoot,
    gate: ConsumedGate,
    clock: RuleClock,
    metrics: &Metrics,
    writer: &WriterId,
    mut wiring: Wiring,
) -> anyhow::Result<(Runner, Option<kairos_messaging::Dispatcher>)> {
    let rules = load_rules(config).await?;
    let started = Instant::now();
    let wall = wiring.wall.clone();
    wiring.instance.get_or_insert_with(|| writer.0.clone());
    let rec = Runner::recover(
        root.clone(),
        rules,
        &BTreeMap::new(),
        EngineOptions {
            wall: wall.clone(),
            ..engine_options(config)?
        },
        gate,
        Some(writer),
    )
    .await
    .context("rebuilding the rule engine's state from the data root")?;
    let mut runner = rec.runner;
    let dispatcher =
        add_stages(config, &mut runner, root, rec.redo_batch.as_deref(), wiring).await?;
    tracing::info!(
        events = rec.rebuilt_events,
        customers = runner.engine.state.len(),
        firings = runner.engine.fired_len(),
        batch = runner.checkpoint().batch,
        ms = started.elapsed().as_millis() as u64,
        "rule state rebuilt"
    );
    if let Some((items, at)) = rec.redo {
        tracing::info!(
            batch = runner.checkpoint().batch,
            items = items.len(),
            "redoing the batch a crash interrupted"
        );
        let report = runner.redo(items, at).await?;
        record(&metrics.rules, &report, None, &wall);
    }
    if !rec.pending.items.is_empty() {
        let now = match clock {
            RuleClock::Wall => wall.now_us(),
            RuleClock::Events => event_clock(runner.checkpoint().clock_us, &rec.pending.items),
        };
        let report = runner.run(rec.pending.items, &rec.pending.to, now).await?;
        record(&metrics.rules, &report, None, &wall);
    }
    Ok((runner, dispatcher))
}

fn event_clock(last: i64, items: &[StagedItem]) -> i64 {
    items
        .iter()
        .map(StagedItem::timestamp_us)
        .max()
        .unwrap_or(last)
        .max(last)
}

fn record(metrics: &RuleMetrics, report: &TickReport, oldest_received: Option<i64>, wall: &Clock) {
    metrics.record(report);
    if let Some(r) = oldest_received {
        let secs = (wall.now_us() - r).max(0) as f64 / 1e6;
        metrics.latency_seconds.observe(secs);
    }
}

/// Runs ticks until the feed closes: at shutdown the committer stops after
/// the last request, and the final tick takes everything it made durable.
pub async fn run(mut live: Live) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(live.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut items = Vec::new();
        let mut to: Option<Position> = None;
        let mut closed = false;
        loop {
            match live.feed.try_recv() {
                Ok(c) => {
                    items.extend(c.items);
                    to = Some(c.at);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let last = live.runner.checkpoint().clock_us;
        let now = match live.clock {
            RuleClock::Wall => live.wall.now_us(),
            RuleClock::Events => event_clock(last, &items),
        };
        let idle_events_clock = live.clock == RuleClock::Events && items.is_empty();
        if !idle_events_clock {
            let oldest = items
                .iter()
                .filter_map(|i| match i {
                    StagedItem::Event(e) => Some(e.received_at_us),
                    _ => None,
                })
                .min();
            let mut positions = BTreeMap::new();
            if let Some(at) = to {
                positions.insert(live.writer.0.clone(), at);
            }
            let started = Instant::now();
            match live.runner.run(items, &positions, now).await {
                Ok(report) => {
                    live.metrics
                        .rules
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    record(&live.metrics.rules, &report, oldest, &live.wall);
                    if !report.firings.is_empty() || !report.failures.is_empty() {
                        tracing::info!(
                            batch = live.runner.checkpoint().batch,
                            items = report.items,
                            firings = report.firings.len(),
                            failures = report.failures.len(),
                            ms = started.elapsed().as_millis() as u64,
                            "rules batch"
                        );
                    }
                }
                Err(e) => {
                    // The batch's inputs stay staged and unconsumed; a
                    // restart redoes it. Stop rather than skip it.
                    return Err(e)
                        .context("writing a rules batch failed; restart kairos to redo it");
                }
            }
        }
        if closed {
            // The stages hold the workers' queues: drop them first.
            drop(live.runner);
            if let Some(d) = live.dispatcher {
                d.finish().await;
            }
            return Ok(());
        }
    }
}
