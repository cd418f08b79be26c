//! `kairos`: the one binary. `main` parses, runs, and turns the result into
//! an exit code; the work lives in the library crates.

// Ingest and publish allocate many short strings; glibc malloc and free were
// a sixth of server CPU under load (perf); with mimalloc allocation is under
// a tenth and ingest throughput rose by about 30% (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod access;
mod backtest;
mod bench;
mod bench_report;
mod callbacks;
mod compact;
mod demo;
mod generate;
mod import;
mod listen;
mod live;
mod loadgen;
mod privacy;
mod progress;
mod replay;
mod report;
mod serve;
mod sql;
mod unsubscribe;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Kairos: event-driven marketing automation on SQL trigger rules.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML). Default: ./kairos.toml when present.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server: event intake, publishing, health and metrics.
    Serve {
        /// Data root: a directory or s3://bucket/prefix. Default ./kairos-data.
        #[arg(long)]
        data: Option<String>,
        /// Address to listen on. Default 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Rules folder. Default from config (./sql).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Trust loopback clients when no key or token is configured
        /// (server.insecure_local): for a laptop with nothing else on it.
        #[arg(long)]
        insecure_local: bool,
    },
    /// Load files into the data root without a server.
    Import {
        /// What the file holds.
        #[arg(value_enum)]
        kind: import::ImportKind,
        /// profiles: CSV, Parquet or NDJSON identify calls; events: NDJSON Segment calls.
        file: PathBuf,
        /// Data root. Default from config (./kairos-data).
        #[arg(long)]
        data: Option<String>,
    },
    /// Write synthetic Segment-shaped profiles.ndjson and events.ndjson.
    Generate {
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
    },
    /// Load generator for benchmarks: Segment-shaped gzip batches against a server.
    Loadgen {
        #[command(flatten)]
        args: loadgen::LoadgenArgs,
        /// Instead of sending, count the events published under this data root.
        #[arg(long)]
        verify: Option<PathBuf>,
    },
    /// Store history as ingest would and run it through the rules in event
    /// time; `serve` later carries on without firing anything old.
    Replay {
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
    },
    /// Run rules over stored history and report what they would have done:
    /// firings per day and per customer, messages per customer per week.
    Backtest {
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
    /// Work with the SQL trigger rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Query every table with SQL (DataFusion): one statement list, or an
    /// interactive prompt when no query is given. Tables: docs/tables.md.
    Sql(sql::SqlArgs),
    /// Analyse per-arm sufficient statistics from a JSON file (schema in
    /// docs/reports.md) and print the analysis JSON, as POST /api/analyze.
    Stats {
        /// The sufficient statistics, JSON.
        file: PathBuf,
    },
    /// Print a rule's experiment report (as GET /api/experiments/RULE), or
    /// with --program every rule together (as GET /api/program).
    Report(report::ReportArgs),
    /// Merge each closed hour's small files into one sorted file, swapped in
    /// atomically (glob readers never see a row twice or miss one). Local
    /// data roots; `serve` does it on a schedule (publish.compact_every_secs).
    Compact(compact::CompactArgs),
    /// Erase customers (GDPR Art. 17): every row, message and derived file
    /// naming them or their linked anonymous ids, and suppress later calls
    /// for them. The server must be stopped (while it runs, use its
    /// POST /api/privacy/erase). docs/security.md.
    Forget(privacy::ForgetArgs),
    /// Take ids off the suppression list: calls naming them are kept again.
    Unsuppress(privacy::ForgetArgs),
    /// The whole product in one command: replay data-samples/ and a
    /// simulated cart-abandonment cohort with a known lift through every
    /// stage, print a summary, then serve the report pages.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate every rule file: header, parameters, `${...}` uses, and the
    /// SQL planned against the real table schemas with its required output
    /// columns; then every template the rules send, for each channel, and
    /// the names it uses. Errors as `file:line: message`.
    Check {
        /// Rules folder.
        #[arg(default_value = "sql")]
        dir: PathBuf,
        /// Templates folder.
        #[arg(long, default_value = "templates")]
        templates: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = || kairos_core::Config::load(cli.config.as_deref());
    match cli.command {
        Command::Serve {
            data,
            listen,
            rules,
            insecure_local,
        } => {
            let mut c = config()?;
            c.server.insecure_local |= insecure_local;
            c.storage.data = data.unwrap_or(c.storage.data);
            c.server.listen = listen.unwrap_or(c.server.listen);
            c.rules.dir = rules.unwrap_or(c.rules.dir);
            runtime()?.block_on(serve::serve(c))
        }
        Command::BenchPolicy {
            customers,
            firings,
            rules,
        } => {
            let mut c = config()?;
            c.rules.dir = rules.unwrap_or(c.rules.dir);
            runtime()?.block_on(bench::bench_policy(c, customers, firings))
        }
        Command::BenchDelivery { messages } => runtime()?.block_on(bench::bench_delivery(messages)),
        Command::BenchReport(args) => runtime()?.block_on(bench_report::bench_report(args)),
        Command::BenchRules {
            history,
            batch,
            runs,
            rules,
        } => {
            let mut c = config()?;
            c.rules.dir = rules.unwrap_or(c.rules.dir);
            runtime()?.block_on(bench::bench(c, history, batch, runs.max(1)))
        }
        Command::Backtest {
            rules,
            from,
            to,
            data,
            rules_dir,
            batch_span,
        } => {
            let mut c = config()?;
            c.storage.data = data.unwrap_or(c.storage.data);
            c.rules.dir = rules_dir.unwrap_or(c.rules.dir);
            let span = kairos_rules::rule::parse_duration(&batch_span)
                .map_err(|e| anyhow::anyhow!("--batch-span: {e}"))?;
            let day = 86_400_000_000i64;
            let from_us = kairos_rules::state::parse_time(&from)
                .ok_or_else(|| anyhow::anyhow!("--from {from:?}: use YYYY-MM-DD or RFC 3339"))?;
            let to_us = match kairos_rules::state::parse_time(&to) {
                Some(t) if to.len() == 10 => t + day,
                Some(t) => t,
                None => anyhow::bail!("--to {to:?}: use YYYY-MM-DD or RFC 3339"),
            };
            anyhow::ensure!(to_us > from_us, "--to must be after --from");
            runtime()?.block_on(backtest::backtest(
                c,
                backtest::Backtest {
                    rules,
                    from_us,
                    to_us,
                    span_us: span.max(1) as i64 * 1_000_000,
                },
            ))
        }
        Command::Replay {
            data,
            input,
            rules,
            batch_span,
        } => {
            let mut c = config()?;
            c.storage.data = data.unwrap_or(c.storage.data);
            c.rules.dir = rules.unwrap_or(c.rules.dir);
            let span = kairos_rules::rule::parse_duration(&batch_span)
                .map_err(|e| anyhow::anyhow!("--batch-span: {e}"))?;
            anyhow::ensure!(span > 0, "--batch-span must be positive");
            runtime()?.block_on(replay::replay(c, &input, span as i64 * 1_000_000))
        }
        Command::Import { kind, file, data } => {
            let mut c = config()?;
            c.storage.data = data.unwrap_or(c.storage.data);
            runtime()?.block_on(import::import(c, kind, &file))
        }
        Command::Generate {
            sample,
            seed,
            customers,
            days,
            out,
            lift,
            lift_rule,
            base_rate,
        } => {
            let lift = lift
                .map(|l| simulator(&lift_rule, base_rate, &l))
                .transpose()?;
            generate_files(sample, seed, customers, days, lift, &out)
        }
        Command::Rules {
            command: RulesCommand::Check { dir, templates },
        } => rules_check(&dir, &templates),
        Command::Loadgen {
            verify: Some(dir), ..
        } => loadgen::verify(&dir),
        Command::Loadgen { args, verify: None } => runtime()?.block_on(loadgen::run(args)),
        Command::Report(args) => runtime()?.block_on(report::report(config()?, args)),
        Command::Stats { file } => report::stats(&file),
        Command::Sql(args) => sql::sql(config()?, args, &runtime()?),
        Command::Forget(args) => runtime()?.block_on(privacy::forget(config()?, args)),
        Command::Unsuppress(args) => runtime()?.block_on(privacy::unsuppress(config()?, args)),
        Command::Demo(args) => demo::demo(config()?, args, &runtime()?),
        Command::Compact(args) => runtime()?.block_on(compact::compact_command(config()?, args)),
    }
}

fn rules_check(dir: &std::path::Path, templates: &std::path::Path) -> anyhow::Result<()> {
    let rt = runtime()?;
    let (rules, errors) = rt.block_on(kairos_rules::check_dir(dir));
    let template_errors = match kairos_messaging::Templates::load(templates) {
        Ok(t) => rt.block_on(kairos_messaging::check_rules(&rules, &t)),
        Err(e) => e,
    };
    for e in &errors {
        eprintln!("{e}");
    }
    for e in &template_errors {
        eprintln!("{e}");
    }
    let problems = errors.len() + template_errors.len();
    if problems > 0 {
        anyhow::bail!(
            "{problems} problem(s) in {} and {}; {} rule(s) valid",
            dir.display(),
            templates.display(),
            rules.len()
        );
    }
    println!(
        "{} rule(s) valid in {}, their templates in {}",
        rules.len(),
        dir.display(),
        templates.display()
    );
    Ok(())
}

/// The response simulator for the rule in `file`.
fn simulator(
    file: &std::path::Path,
    base_rate: f64,
    lifts: &str,
) -> anyhow::Result<generate::Lift> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        anyhow::anyhow!(
            "--lift-rule {}: {e}; point it at the rule file the replay will use",
            file.display()
        )
    })?;
    let rule = kairos_rules::parse(file, &text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("--lift-rule does not parse:\n{}", lines.join("\n"))
    })?;
    generate::Lift::for_rule(&rule, base_rate, lifts)
}

fn generate_files(
    sample: bool,
    seed: u64,
    customers: usize,
    days: u32,
    lift: Option<generate::Lift>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let mut opts = if sample {
        generate::GenerateOptions::sample()
    } else {
        generate::GenerateOptions {
            seed,
            customers,
            days,
            ..generate::GenerateOptions::sample()
        }
    };
    opts.lift = lift;
    std::fs::create_dir_all(out)?;
    let mut profiles = std::fs::File::create(out.join("profiles.ndjson"))?;
    let mut events = std::fs::File::create(out.join("events.ndjson"))?;
    let s = generate::generate(&opts, &mut profiles, &mut events)?;
    println!(
        "wrote {} profiles and {} events to {}",
        s.profiles,
        s.events,
        out.display()
    );
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,tower_http=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
