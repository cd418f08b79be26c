//! `kairos-dev`: the developers' tools, kept out of the product binary:
//! the sample generator, the load generator and the benchmarks. They run
//! the product's own library code, with the product's allocator, so their
//! numbers are the product's.

// The same allocator as `kairos`, or the benchmarks would measure another
// program.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_report;
mod loadgen;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kairos developer tools: sample data, load and benchmarks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Default: ./kairos.toml when present.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write synthetic Segment-shaped profiles.ndjson and events.ndjson.
    Generate(GenerateArgs),
    /// Load generator for benchmarks: Segment-shaped gzip batches against a server.
    Loadgen {
        #[command(flatten)]
        args: loadgen::LoadgenArgs,
        /// Instead of sending, count the events published under this data root.
        #[arg(long)]
        verify: Option<PathBuf>,
    },
    /// Benchmark the rule library: one batch's cost as history grows.
    BenchRules {
        /// Events of synthetic history folded into the state.
        #[arg(long, default_value_t = 1_000_000)]
        history: u64,
        /// Events per batch.
        #[arg(long, default_value_t = 100_000)]
        batch: usize,
        /// Batches timed.
        #[arg(long, default_value_t = 7)]
        runs: usize,
        /// Rules folder. Default from config (./sql).
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Benchmark the policy stage: one batch of firings against many customers' send history.
    BenchPolicy {
        /// Customers with send history (three messages each in the last week).
        #[arg(long, default_value_t = 1_000_000)]
        customers: u64,
        /// Firings per batch.
        #[arg(long, default_value_t = 100_000)]
        firings: usize,
        /// Rules folder. Default from config (./sql).
        #[arg(long)]
        rules: Option<PathBuf>,
    },
    /// Benchmark delivery: messages through the webhook adapter to a
    /// receiver on loopback, with the intent log and deliveries/ written.
    BenchDelivery {
        /// Messages to send.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
    },
    /// Benchmark the experiment report: build a synthetic lake of millions
    /// of recipients (--build), then time the report over it.
    BenchReport(bench_report::BenchReportArgs),
}

/// `kairos-dev generate` flags.
#[derive(clap::Args)]
struct GenerateArgs {
    /// The settings data-samples/ was made with.
    #[arg(long)]
    sample: bool,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Number of customers.
    #[arg(long, default_value_t = 300)]
    customers: usize,
    /// Days of activity.
    #[arg(long, default_value_t = 42)]
    days: u32,
    /// Output directory.
    #[arg(long, default_value = "data-samples")]
    out: PathBuf,
    /// Response simulator: every customer abandons one cart and converts
    /// at the base rate × (1 + the lift of the arm Kairos assigns them),
    /// e.g. `triggered=0.20,scheduled=0.08` (holdout is the baseline).
    #[arg(long, value_name = "ARM=LIFT,...")]
    lift: Option<String>,
    /// The rule the simulator predicts arms for (its salt, split and
    /// `delay` parameter).
    #[arg(long, default_value = "sql/cart_abandonment.sql", requires = "lift")]
    lift_rule: PathBuf,
    /// Holdout conversion probability for the simulator.
    #[arg(long, default_value_t = 0.10, requires = "lift")]
    base_rate: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = |rules: Option<PathBuf>| -> anyhow::Result<kairos_core::Config> {
        let mut c = kairos_core::Config::load(cli.config.as_deref())?;
        c.rules.dir = rules.unwrap_or(c.rules.dir);
        Ok(c)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Generate(args) => generate(args),
        Command::Loadgen {
            verify: Some(dir), ..
        } => loadgen::verify(&dir),
        Command::Loadgen { args, verify: None } => rt.block_on(loadgen::run(args)),
        Command::BenchRules {
            history,
            batch,
            runs,
            rules,
        } => rt.block_on(bench::bench(config(rules)?, history, batch, runs.max(1))),
        Command::BenchPolicy {
            customers,
            firings,
            rules,
        } => rt.block_on(bench::bench_policy(config(rules)?, customers, firings)),
        Command::BenchDelivery { messages } => rt.block_on(bench::bench_delivery(messages)),
        Command::BenchReport(args) => rt.block_on(bench_report::bench_report(args)),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let defaults = kairos_generate::GenerateOptions::sample();
    let mut opts = if args.sample {
        defaults
    } else {
        kairos_generate::GenerateOptions {
            seed: args.seed,
            customers: args.customers,
            days: args.days,
            ..defaults
        }
    };
    opts.lift = args
        .lift
        .map(|l| kairos_generate::Lift::from_rule_file(&args.lift_rule, args.base_rate, &l))
        .transpose()?;
    let s = kairos_generate::write_files(&opts, &args.out)?;
    println!(
        "wrote {} profiles and {} events to {}",
        s.profiles,
        s.events,
        args.out.display()
    );
    Ok(())
}
