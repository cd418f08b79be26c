//! `kairos backtest`: what rules would have done over stored history.
//!
//! The engine folds everything before `--from` into its state without
//! evaluating, then runs the history between `--from` and `--to` in batches
//! of event time, exactly as replay does, but writes nothing. The report is
//! what a data team needs before a rule goes live: firings per rule and
//! day, how often one customer fires, and the over-automation check,
//! messages per customer per week across all rules.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::Context as _;

use kairos_core::Config;
use kairos_core::event::StagedItem;
use kairos_rules::{Engine, Firing};
use kairos_storage::DataRoot;

use crate::progress::Progress;
use crate::replay::timeline;
use kairos_server::live;

/// `kairos backtest` flags.
#[derive(clap::Args)]
pub struct BacktestArgs {
    /// Rule files; every rule in the rules folder when none is given.
    rules: Vec<PathBuf>,
    /// First day (YYYY-MM-DD or RFC 3339).
    #[arg(long)]
    from: String,
    /// Last day, inclusive (YYYY-MM-DD), or an RFC 3339 end instant.
    #[arg(long)]
    to: String,
    /// Data root. Default from config (./kairos-data).
    #[arg(long)]
    data: Option<String>,
    /// Rules folder when no file is given. Default from config (./sql).
    #[arg(long = "rules-dir")]
    rules_dir: Option<PathBuf>,
    /// Event time per micro-batch.
    #[arg(long, default_value = "30m")]
    batch_span: String,
}

/// `kairos backtest`.
pub async fn run(mut config: Config, args: BacktestArgs) -> anyhow::Result<()> {
    config.storage.data = args.data.unwrap_or(config.storage.data);
    config.rules.dir = args.rules_dir.unwrap_or(config.rules.dir);
    let span_us = crate::replay::batch_span_us(&args.batch_span)?;
    let day = 86_400_000_000i64;
    let (from, to) = (&args.from, &args.to);
    let from_us = kairos_rules::state::parse_time(from)
        .ok_or_else(|| anyhow::anyhow!("--from {from:?}: use YYYY-MM-DD or RFC 3339"))?;
    let to_us = match kairos_rules::state::parse_time(to) {
        Some(t) if to.len() == 10 => t + day,
        Some(t) => t,
        None => anyhow::bail!("--to {to:?}: use YYYY-MM-DD or RFC 3339"),
    };
    anyhow::ensure!(to_us > from_us, "--to must be after --from");
    let bt = Backtest {
        rules: args.rules,
        from_us,
        to_us,
        span_us,
    };
    backtest(config, bt).await
}

/// What to backtest.
pub struct Backtest {
    /// Rule files; all of `rules.dir` when empty.
    pub rules: Vec<PathBuf>,
    /// Start of the window, µs.
    pub from_us: i64,
    /// End of the window (exclusive), µs.
    pub to_us: i64,
    /// Event time per batch, µs.
    pub span_us: i64,
}

async fn load(config: &Config, files: &[PathBuf]) -> anyhow::Result<Vec<kairos_rules::Rule>> {
    if files.is_empty() {
        return live::load_rules(config).await;
    }
    let ctx = kairos_rules::check::planning_session()?;
    let mut rules = Vec::new();
    let mut problems = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        match kairos_rules::parse(f, &text) {
            Ok(rule) => match kairos_rules::check::plan(&ctx, &rule).await {
                Ok(_) => rules.push(rule),
                Err(e) => problems.push(e.to_string()),
            },
            Err(es) => problems.extend(es.iter().map(ToString::to_string)),
        }
    }
    anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(rules)
}

/// Runs the backtest and prints its report.
pub async fn backtest(config: Config, bt: Backtest) -> anyhow::Result<()> {
    let rules = load(&config, &bt.rules).await?;
    let root = DataRoot::open(&config.storage.data)?;
    let history = kairos_rules::runner::read_history(&root).await?;
    anyhow::ensure!(
        !history.is_empty(),
        "no published history under {}; import or replay events first",
        root.url
    );
    // History is continuous: no stretch between two batches is downtime,
    // so nothing due in it is too old to fire (`catch_up` bounds what a
    // restarted server reaches back for).
    let mut opts = live::engine_options(&config)?;
    opts.catch_up_us = kairos_rules::engine::NO_CATCH_UP_LIMIT;
    opts.event_clock = true;
    let mut engine = Engine::new(rules, &BTreeMap::new(), Default::default(), opts)?;
    let split = history.partition_point(|i| i.timestamp_us() < bt.from_us);
    let end = history.partition_point(|i| i.timestamp_us() < bt.to_us);
    let mut history = history;
    history.truncate(end);
    let window: Vec<StagedItem> = history.split_off(split);
    engine.absorb(&history);
    // The rules go live at --from.
    let mut firings: Vec<Firing> = engine.tick(Vec::new(), bt.from_us).await.firings;
    let mut failures: BTreeMap<String, String> = BTreeMap::new();
    let events = window.len();
    let mut progress = Progress::new("backtested", events as u64);
    let mut done = 0;
    for (clock, batch) in timeline(window, bt.span_us) {
        done += batch.len() as u64;
        let report = engine.tick(batch, clock).await;
        firings.extend(report.firings);
        for f in report.failures {
            failures.entry(f.rule).or_insert(f.error);
        }
        progress.update(done, clock, firings.len());
    }
    progress.finish();
    // Deadlines that fall after the last event but inside the window.
    let last = engine.tick(Vec::new(), bt.to_us - 1).await;
    firings.extend(last.firings);
    print!("{}", report(&firings, events, &bt));
    for (rule, error) in &failures {
        eprintln!("rule {rule} failed: {error}");
    }
    anyhow::ensure!(failures.is_empty(), "{} rule(s) failed", failures.len());
    Ok(())
}

fn day(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

fn percentile(sorted: &[usize], p: f64) -> usize {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The text report.
pub fn report(firings: &[Firing], events: usize, bt: &Backtest) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "backtest {} .. {}: {events} events, {} firings\n",
        day(bt.from_us),
        day(bt.to_us - 1),
        firings.len()
    );
    let rules: Vec<String> = {
        let mut r: Vec<String> = firings.iter().map(|f| f.rule.clone()).collect();
        r.sort();
        r.dedup();
        r
    };
    let mut per_day: BTreeMap<String, HashMap<&str, usize>> = BTreeMap::new();
    for f in firings {
        *per_day
            .entry(day(f.due_at_us))
            .or_default()
            .entry(f.rule.as_str())
            .or_default() += 1;
    }
    let _ = writeln!(out, "firings per day");
    let _ = write!(out, "{:<12}", "day");
    for r in &rules {
        let _ = write!(out, " {:>w$}", r, w = r.len().max(6));
    }
    let _ = writeln!(out);
    for (d, counts) in &per_day {
        let _ = write!(out, "{d:<12}");
        for r in &rules {
            let _ = write!(
                out,
                " {:>w$}",
                counts.get(r.as_str()).copied().unwrap_or(0),
                w = r.len().max(6)
            );
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "\nfirings per customer");
    let _ = writeln!(
        out,
        "{:<24} {:>9} {:>6} {:>6} {:>6}",
        "rule", "customers", "p50", "p95", "max"
    );
    for r in &rules {
        let mut per: HashMap<&str, usize> = HashMap::new();
        for f in firings.iter().filter(|f| &f.rule == r) {
            *per.entry(f.customer_id.as_str()).or_default() += 1;
        }
        let mut n: Vec<usize> = per.values().copied().collect();
        n.sort_unstable();
        let _ = writeln!(
            out,
            "{r:<24} {:>9} {:>6} {:>6} {:>6}",
            n.len(),
            percentile(&n, 0.5),
            percentile(&n, 0.95),
            n.last().copied().unwrap_or(0)
        );
    }
    // Over-automation: firings of all rules per customer and ISO week.
    let mut weeks: HashMap<(&str, String), usize> = HashMap::new();
    for f in firings {
        let w = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(f.due_at_us)
            .unwrap_or_default()
            .format("%G-W%V")
            .to_string();
        *weeks.entry((f.customer_id.as_str(), w)).or_default() += 1;
    }
    let mut n: Vec<usize> = weeks.values().copied().collect();
    n.sort_unstable();
    let over = n.iter().filter(|c| **c > 3).count();
    let _ = writeln!(
        out,
        "\nmessages per customer per week (all rules, before the policy chain)\ncustomer-weeks {}  p50 {}  p95 {}  p99 {}  max {}  weeks with more than 3: {over}",
        n.len(),
        percentile(&n, 0.5),
        percentile(&n, 0.95),
        percentile(&n, 0.99),
        n.last().copied().unwrap_or(0)
    );
    out
}
