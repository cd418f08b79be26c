//! One simulated run: processes started, crashed and restarted over one
//! durable bucket until the workload is through.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use kairos_core::Config;
use kairos_core::time::Clock;
use kairos_policy::stage::SendRow;
use kairos_rules::Rule;
use kairos_server::live::{self, RuleClock, Wiring};
use kairos_storage::publish::{Publisher, PublisherOptions};
use kairos_storage::staging::StagingLog;
use kairos_storage::{ConsumedGate, DataRoot, WriterId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

use crate::provider::{Accepted, Answer, Provider, ProviderLog, Weather};
use crate::store::{Fault, FaultPlan, FaultStore};
use crate::workload::{Size, Workload};

/// How runs are made.
#[derive(Debug, Clone)]
pub struct Options {
    /// The rule library (`sql/`).
    pub rules_dir: PathBuf,
    /// The templates (`templates/`).
    pub templates_dir: PathBuf,
    /// Workload size.
    pub size: Size,
    /// Crashes per run at most.
    pub max_crashes: usize,
    /// Chance a write fails transiently.
    pub write_error: f64,
    /// Chance a read fails.
    pub read_error: f64,
    /// Processes per run at most before the run counts as stuck.
    pub max_processes: u32,
}

impl Options {
    /// The defaults, for the repository at `repo`.
    pub fn for_repo(repo: &Path) -> Options {
        Options {
            rules_dir: repo.join("sql"),
            templates_dir: repo.join("templates"),
            size: Size::default(),
            max_crashes: 3,
            write_error: 0.01,
            read_error: 0.005,
            max_processes: 60,
        }
    }
}

/// Per-seed settings the workload does not cover: which rules, their
/// splits, the policy, the delivery guarantees.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `[policy] caps`.
    pub caps: Vec<String>,
    /// `[policy] quiet_hours` ("" for none).
    pub quiet_hours: String,
    /// Channels whose sends in doubt are dropped (at most once); the
    /// others retry (at least once).
    pub at_most_once: Vec<String>,
    /// `[messaging] max_attempts`.
    pub max_attempts: u32,
    /// `[experiments] global_control_percent`.
    pub global_control: f64,
}

/// What a run left behind, read back from the bucket and the providers.
#[derive(Debug)]
pub struct Run {
    /// The seed.
    pub seed: u64,
    /// Whether store faults were injected.
    pub faulty: bool,
    /// The workload.
    pub workload: Workload,
    /// The settings.
    pub setup: Setup,
    /// The rules that ran.
    pub rules: Vec<Rule>,
    /// Every `firings/` row: (rule, customer, dedupe key).
    pub firings: Vec<(String, String, String)>,
    /// Every `sends/` row.
    pub sends: Vec<SendRow>,
    /// Every `deliveries/` row: (send id, status).
    pub deliveries: Vec<(String, String)>,
    /// Every `assignments/` row: (experiment, customer, arm).
    pub assignments: Vec<(String, String, String)>,
    /// What the providers took.
    pub accepted: Vec<Accepted>,
    /// The providers' answers by kind.
    pub answers: HashMap<Answer, u64>,
    /// Store faults injected.
    pub faults: Vec<Fault>,
    /// Processes started.
    pub processes: u32,
    /// Why each process before the last stopped.
    pub stops: Vec<String>,
    /// Clock jumps forward (an hour or more) and back.
    pub clock_jumps: (u64, u64),
    /// Writes made.
    pub writes: u64,
}

/// Runs `seed`: without store faults (the oracle) when `oracle_writes` is
/// None; else with them, its crashes drawn among that many writes (the
/// oracle's count).
pub fn simulate(seed: u64, opts: &Options, oracle_writes: Option<u64>) -> anyhow::Result<Run> {
    let faulty = oracle_writes.is_some();
    let workload = Workload::generate(seed, opts.size);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5345_5455_5000_0000);
    let rules_dir = tempfile::tempdir().context("a folder for the run's rules")?;
    let setup = write_rules(&mut rng, &opts.rules_dir, rules_dir.path())?;
    let config = config(&setup, rules_dir.path(), &opts.templates_dir)?;

    // The oracle counts its writes; the faulty run crashes at some of them.
    let plan = if let Some(budget) = oracle_writes {
        let crashes = rng.random_range(0..=opts.max_crashes);
        let mut crash_at: Vec<u64> = (0..crashes)
            .map(|_| rng.random_range(1..=budget.max(1)))
            .collect();
        crash_at.sort_unstable();
        crash_at.dedup();
        FaultPlan {
            crash_at,
            fail_at: Vec::new(),
            write_error: opts.write_error,
            read_error: opts.read_error,
        }
    } else {
        FaultPlan::default()
    };
    let store = FaultStore::new(plan, seed);
    let root = DataRoot {
        store: Arc::new(store.clone()),
        local_dir: None,
        url: format!("sim://{seed}"),
    };
    let clock = Clock::manual(workload.steps[0].at_us);
    let log = Arc::new(Mutex::new(ProviderLog::default()));
    let step = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let providers = Provider::all(seed, Weather::STORMY, &clock, &step, &log);

    let mut cursor = Cursor::default();
    let mut processes = 0;
    let mut stops = Vec::new();
    loop {
        processes += 1;
        anyhow::ensure!(
            processes <= opts.max_processes,
            "seed {seed}: {} processes and the workload is not through (step {} of {}); last stops: {:?}",
            processes - 1,
            cursor.next,
            workload.steps.len(),
            stops.iter().rev().take(3).collect::<Vec<_>>()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .context("a runtime for a simulated process")?;
        let process = Process {
            config: &config,
            root: &root,
            clock: &clock,
            providers: &providers,
            writer: WriterId(format!("sim-{processes:04}")),
            store: &store,
            step: &step,
        };
        let result = rt.block_on(process.run(&workload, &mut cursor));
        // kill -9: every task of the process goes with its runtime.
        rt.shutdown_background();
        match result {
            Ok(()) => break,
            Err(e) => {
                stops.push(format!("{e:#}"));
                store.restart();
            }
        }
    }

    store.calm();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("a runtime to read the run back")?;
    let tables = rt.block_on(read_back(&root))?;
    let rules = rt.block_on(kairos_rules::check_dir(rules_dir.path())).0;
    let provider_log = std::mem::take(
        &mut *log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut jumps = (0, 0);
    for w in workload.steps.windows(2) {
        let d = w[1].at_us - w[0].at_us;
        if d >= 3_600_000_000 && !w[1].items.is_empty() {
            jumps.0 += 1;
        } else if d < 0 {
            jumps.1 += 1;
        }
    }
    Ok(Run {
        seed,
        faulty,
        workload,
        setup,
        rules,
        firings: tables.firings,
        sends: tables.sends,
        deliveries: tables.deliveries,
        assignments: tables.assignments,
        accepted: provider_log.accepted,
        answers: provider_log.answers,
        faults: store.trace(),
        processes,
        stops,
        clock_jumps: jumps,
        writes: store.writes(),
    })
}

/// How far the workload got, kept across processes (it is the world
/// outside the process: the clients and the clock).
#[derive(Debug, Default)]
struct Cursor {
    /// The next step to play.
    next: usize,
    /// Whether that step's items are durably staged (acknowledged to the
    /// client): a restart's recovery runs them; else the client sends
    /// them again.
    staged: bool,
    /// Whether the final drain (delivery workers finishing) is done.
    drained: bool,
}

struct Process<'a> {
    config: &'a Config,
    root: &'a DataRoot,
    clock: &'a Clock,
    providers: &'a [(kairos_core::Channel, Arc<dyn kairos_messaging::Adapter>)],
    writer: WriterId,
    store: &'a FaultStore,
    step: &'a std::sync::atomic::AtomicUsize,
}

impl Process<'_> {
    /// Runs until the workload is through, or the process dies (an error).
    async fn run(&self, workload: &Workload, cursor: &mut Cursor) -> anyhow::Result<()> {
        let steps = &workload.steps;
        // The clock reads where the workload is (a restart is instant).
        self.clock
            .set(steps[cursor.next.min(steps.len() - 1)].at_us);
        // Steps whose input is durable: what providers take is stamped
        // with it (an opt-out binds once its step's append is durable).
        let durable = |cursor: &Cursor| cursor.next + usize::from(cursor.staged);
        self.step.store(durable(cursor), Ordering::SeqCst);
        let metrics = kairos_server::metrics::Metrics::new();
        let gate: ConsumedGate = Arc::default();
        let (mut runner, dispatcher) = live::recover(
            self.config,
            self.root,
            gate.clone(),
            RuleClock::Wall,
            &metrics,
            &self.writer,
            Wiring {
                wall: self.clock.clone(),
                providers: Some(self.providers.to_vec()),
                ..Wiring::default()
            },
        )
        .await
        .context("recovery")?;
        // Delivery works through what recovery's redo handed it before the
        // workload goes on, as after every step.
        tokio::time::sleep(Duration::from_secs(900)).await;
        anyhow::ensure!(
            !self.store.crashed(),
            "crashed in a delivery worker after recovery"
        );
        // Recovery ran what was staged and not consumed: that step is done.
        if cursor.staged {
            cursor.staged = false;
            cursor.next += 1;
        }
        let log = StagingLog::open(self.root.clone(), self.writer.clone())?;
        let log = Arc::new(tokio::sync::Mutex::new(log));
        let mut publisher = Publisher::new(
            self.root.clone(),
            log.clone(),
            PublisherOptions {
                // Every other writer is a dead process of this run.
                orphan_after: Duration::ZERO,
                ..PublisherOptions::from_config(self.config)
            },
        )
        .await
        .with_gate(gate);

        while cursor.next < steps.len() {
            let step = &steps[cursor.next];
            self.clock.set(step.at_us);
            self.step.store(durable(cursor), Ordering::SeqCst);
            let mut to = BTreeMap::new();
            if !step.items.is_empty() {
                let payload = encode(&step.items)?;
                let at = log
                    .lock()
                    .await
                    .append(&payload)
                    .await
                    .context("staging append")?;
                cursor.staged = true;
                to.insert(self.writer.0.clone(), at);
            }
            self.step.store(cursor.next + 1, Ordering::SeqCst);
            runner
                .run(step.items.clone(), &to, step.at_us)
                .await
                .context("rules batch")?;
            cursor.staged = false;
            cursor.next += 1;
            if step.publish {
                // As serve's publish loop: a failed publish is logged and
                // tried again later; the process goes on.
                if let Err(e) = publisher.publish().await {
                    tracing::warn!(error = %e, "publish failed; retried later");
                }
            }
            // Delivery works through what the batch handed it: attempts,
            // timeouts, Retry-After and backoff, in paused time.
            tokio::time::sleep(Duration::from_secs(900)).await;
            // A worker that met the crash only logged it.
            anyhow::ensure!(!self.store.crashed(), "crashed in a delivery worker");
        }
        if !cursor.drained {
            // serve's next tick: a process restarted after the last step
            // releases what recovery found due (sends put back in the
            // queue) only in a batch.
            let end = steps[steps.len() - 1].at_us;
            runner
                .run(Vec::new(), &BTreeMap::new(), end)
                .await
                .context("the last tick")?;
            drop(runner);
            if let Some(d) = dispatcher {
                tokio::time::timeout(Duration::from_secs(24 * 3600), d.finish())
                    .await
                    .context("delivery workers did not finish")?;
            }
            publisher.publish().await.context("final publish")?;
            anyhow::ensure!(!self.store.crashed(), "crashed while delivery finished");
            cursor.drained = true;
        }
        Ok(())
    }
}

fn encode(items: &[kairos_core::event::StagedItem]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Copies a random subset of the rule library (at least three) with
/// random splits, and draws the policy and delivery settings.
fn write_rules(rng: &mut StdRng, from: &Path, to: &Path) -> anyhow::Result<Setup> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(from)
        .with_context(|| format!("reading the rule library {}", from.display()))?
    {
        let path = entry
            .with_context(|| format!("listing the rule library {}", from.display()))?
            .path();
        if path.extension().is_some_and(|x| x == "sql") {
            files.push(path);
        }
    }
    files.sort();
    files.shuffle(rng);
    let keep = rng.random_range(3..=files.len().max(3)).min(files.len());
    for f in &files[..keep] {
        let text = std::fs::read_to_string(f)?;
        let mut out = String::new();
        for line in text.lines() {
            if line.starts_with("-- split:") && !line.contains("triggered=100") {
                let holdout = rng.random_range(0..=30);
                let scheduled = rng.random_range(0..=40);
                let triggered = 100 - holdout - scheduled;
                out.push_str(&format!(
                    "-- split: holdout={holdout} scheduled={scheduled} triggered={triggered}\n"
                ));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        let name = f.file_name().context("a rule file name")?;
        std::fs::write(to.join(name), out)?;
    }
    let cap_sets: [&[&str]; 4] = [
        &["2 per 24h", "5 per 7d", "1 sms per day"],
        &["1 per 24h"],
        &["3 per day", "1 push per 6h"],
        &[],
    ];
    let caps = cap_sets[rng.random_range(0..cap_sets.len())]
        .iter()
        .map(|c| c.to_string())
        .collect();
    let quiets = ["21:00-08:00", "", "22:00-07:30"];
    let quiet_hours = quiets[rng.random_range(0..quiets.len())].to_string();
    let at_most_once = ["email", "sms", "whatsapp", "push", "webhook"]
        .into_iter()
        .filter(|_| rng.random_bool(0.5))
        .map(String::from)
        .collect();
    Ok(Setup {
        caps,
        quiet_hours,
        at_most_once,
        max_attempts: rng.random_range(1..=5),
        global_control: if rng.random_ratio(1, 3) { 10.0 } else { 0.0 },
    })
}

fn config(setup: &Setup, rules: &Path, templates: &Path) -> anyhow::Result<Config> {
    let in_doubt: Vec<String> = ["email", "sms", "whatsapp", "push", "webhook"]
        .into_iter()
        .map(|c| {
            let mode = if setup.at_most_once.iter().any(|m| m == c) {
                "drop"
            } else {
                "retry"
            };
            format!("{c} = \"{mode}\"")
        })
        .collect();
    let toml = format!(
        r#"
[rules]
dir = {rules:?}
[policy]
caps = {caps:?}
quiet_hours = {quiet:?}
[experiments]
global_control_percent = {global:?}
[messaging]
templates = {templates:?}
max_attempts = {attempts}
in_doubt = {{ {in_doubt} }}
"#,
        rules = rules.display().to_string(),
        templates = templates.display().to_string(),
        caps = setup.caps,
        quiet = setup.quiet_hours,
        global = setup.global_control,
        attempts = setup.max_attempts,
        in_doubt = in_doubt.join(", "),
    );
    Config::from_toml(&toml).map_err(|e| anyhow::anyhow!("the run's config: {e:?}\n{toml}"))
}

struct Tables {
    firings: Vec<(String, String, String)>,
    sends: Vec<SendRow>,
    deliveries: Vec<(String, String)>,
    assignments: Vec<(String, String, String)>,
}

async fn read_back(root: &DataRoot) -> anyhow::Result<Tables> {
    use kairos_storage::columns::strings;
    let firings = kairos_rules::firings::load(root, None, i64::MIN)
        .await?
        .into_iter()
        .map(|(r, c, k, _)| (r, c, k))
        .collect();
    let sends = kairos_policy::tables::read_sends(root, None).await?;
    let mut deliveries = Vec::new();
    for path in kairos_rules::firings::batch_files(root, "deliveries", None).await? {
        for b in
            kairos_storage::tables::read_parquet(root, &path, Some(&["send_id", "status"])).await?
        {
            let (id, st) = (
                strings(&b, "deliveries", "send_id")?,
                strings(&b, "deliveries", "status")?,
            );
            for i in 0..b.num_rows() {
                deliveries.push((id.value(i).to_string(), st.value(i).to_string()));
            }
        }
    }
    let mut assignments = Vec::new();
    for path in
        kairos_rules::firings::batch_files(root, kairos_policy::tables::ASSIGNMENTS, None).await?
    {
        for b in kairos_storage::tables::read_parquet(
            root,
            &path,
            Some(&["experiment", "customer_id", "arm"]),
        )
        .await?
        {
            let t = kairos_policy::tables::ASSIGNMENTS;
            let (e, c, a) = (
                strings(&b, t, "experiment")?,
                strings(&b, t, "customer_id")?,
                strings(&b, t, "arm")?,
            );
            for i in 0..b.num_rows() {
                assignments.push((
                    e.value(i).to_string(),
                    c.value(i).to_string(),
                    a.value(i).to_string(),
                ));
            }
        }
    }
    Ok(Tables {
        firings,
        sends,
        deliveries,
        assignments,
    })
}
