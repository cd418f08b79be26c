//! `kairos-sim`: runs seeded simulations of the Kairos loop with faults and
//! checks each against its oracle.
//!
//! ```text
//! kairos-sim --seeds 10000            # a soak, on every core
//! kairos-sim --seed 4242              # replay one seed, with its fault trace
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use kairos_sim::{Options, Outcome, check_seed};

#[derive(Parser)]
#[command(about = "Seeded fault simulation of the Kairos loop")]
struct Args {
    /// Run this many seeds, starting at --from.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Replay one seed and print its fault trace (overrides --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Threads (default: the cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// The repository (its sql/ and templates/).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let opts = Options::for_repo(&args.repo);
    if let Some(seed) = args.seed {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
        return match check_seed(seed, &opts) {
            Ok(o) => {
                print_trace(&o);
                report(&o);
                if o.violations.is_empty() {
                    std::process::ExitCode::SUCCESS
                } else {
                    std::process::ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("seed {seed}: the run could not finish: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = Arc::new(AtomicU64::new(args.from));
    let end = args.from + args.seeds;
    let totals = Arc::new(Mutex::new(Totals::default()));
    let started = Instant::now();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, totals, opts) = (next.clone(), totals.clone(), opts.clone());
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        break;
                    }
                    let result = check_seed(seed, &opts);
                    let mut t = totals
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    t.add(seed, result);
                }
            })
        })
        .collect();
    for w in workers {
        if w.join().is_err() {
            eprintln!("a simulation thread panicked");
            return std::process::ExitCode::FAILURE;
        }
    }
    let t = totals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "runs {} ({} processes, {} restarts), violations {}, failed runs {}, {:.1} s, {:.2} runs/s on {jobs} threads",
        t.runs,
        t.processes,
        t.processes - t.runs,
        t.violations,
        t.failed.len(),
        secs,
        t.runs as f64 / secs
    );
    println!("faults injected:");
    for (kind, n) in &t.faults {
        println!("  {kind:28} {n}");
    }
    if t.failed.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        let mut failed = t.failed.clone();
        failed.sort_unstable();
        println!("failed seeds: {failed:?}");
        std::process::ExitCode::FAILURE
    }
}

#[derive(Default)]
struct Totals {
    runs: u64,
    processes: u64,
    violations: u64,
    faults: BTreeMap<String, u64>,
    failed: Vec<u64>,
}

impl Totals {
    fn add(&mut self, seed: u64, result: anyhow::Result<Outcome>) {
        self.runs += 1;
        match result {
            Ok(o) => {
                self.processes += u64::from(o.processes);
                for (k, n) in &o.faults {
                    *self.faults.entry(k.clone()).or_default() += n;
                }
                if !o.violations.is_empty() {
                    self.violations += o.violations.len() as u64;
                    self.failed.push(seed);
                    report(&o);
                }
            }
            Err(e) => {
                self.failed.push(seed);
                println!("seed {seed}: the run could not finish: {e:#}");
                println!("  replay: cargo run -p kairos-sim --release -- --seed {seed}");
            }
        }
    }
}

fn report(o: &Outcome) {
    if o.violations.is_empty() {
        println!("seed {}: ok ({} processes)", o.seed, o.processes);
        return;
    }
    println!(
        "seed {}: {} invariant violation(s)",
        o.seed,
        o.violations.len()
    );
    for v in o.violations.iter().take(20) {
        println!("  {v}");
    }
    println!(
        "  replay: cargo run -p kairos-sim --release -- --seed {}",
        o.seed
    );
}

fn print_trace(o: &Outcome) {
    let r = &o.run;
    println!(
        "seed {}: {} steps, {} customers, rules {:?}",
        o.seed,
        r.workload.steps.len(),
        r.workload.customers.len(),
        r.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>()
    );
    println!("setup: {:?}", r.setup);
    for f in &r.faults {
        let counter = if f.kind == kairos_sim::store::FaultKind::ReadFailed {
            "read "
        } else {
            "write"
        };
        println!(
            "  fault at {counter} {:5}: {:28} {}",
            f.op,
            f.kind.as_str(),
            f.path
        );
    }
    for (i, s) in r.stops.iter().enumerate() {
        println!("  process {} stopped: {s}", i + 1);
    }
    println!("faults by kind: {:?}", o.faults);
    // KAIROS_SIM_DUMP=c3: that customer's items, decisions and deliveries.
    if let Ok(who) = std::env::var("KAIROS_SIM_DUMP") {
        for (i, s) in r.workload.steps.iter().enumerate() {
            println!("  step {i:3} at {} ({} items)", s.at_us, s.items.len());
            for item in s
                .items
                .iter()
                .filter(|i| i.customer_ids().contains(&who.as_str()))
            {
                println!(
                    "  step {i:3} at {}: {}",
                    s.at_us,
                    serde_json::to_string(item)
                        .unwrap_or_else(|e| format!("(does not print: {e})"))
                );
            }
        }
        for s in r.sends.iter().filter(|s| s.customer_id == who) {
            println!(
                "  send {} {} {:?} at {:?} decided {}",
                s.send_id,
                s.decision.as_str(),
                s.reason,
                s.send_at,
                s.decided_at
            );
        }
        for a in r.accepted.iter().filter(|a| a.customer_id == who) {
            println!(
                "  provider took {} at {} answered {}",
                a.send_id, a.at, a.answered
            );
        }
    }
}
