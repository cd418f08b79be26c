//! `kairos`: the product binary. `main` parses the command line and calls
//! the library crates (the server is `kairos_server`); the developer tools
//! (generator, load generator, benchmarks) are the separate `kairos-dev`.

// Ingest and publish allocate many short strings; glibc malloc and free were
// a sixth of server CPU under load (perf); with mimalloc allocation is under
// a tenth and ingest throughput rose by about 30% (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod backtest;
mod compact;
mod demo;
mod forget;
mod import;
mod progress;
mod replay;
mod report;
mod rules;
mod serve;
mod sql;

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
    /// Run the server: intake, rules, policy, delivery, reports and publishing.
    Serve(serve::ServeArgs),
    /// Load files into the data root without a server.
    Import(import::ImportArgs),
    /// Store history as ingest would and run it through the rules in event
    /// time; `serve` later carries on without firing anything old.
    Replay(replay::ReplayArgs),
    /// Run rules over stored history and report what they would have done:
    /// firings per day and per customer, messages per customer per week.
    Backtest(backtest::BacktestArgs),
    /// Work with the SQL trigger rules.
    Rules {
        #[command(subcommand)]
        command: rules::RulesCommand,
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
    Forget(forget::ForgetArgs),
    /// Take ids off the suppression list: calls naming them are kept again.
    Unsuppress(forget::ForgetArgs),
    /// The whole product in one command: replay data-samples/ and a
    /// simulated cart-abandonment cohort with a known lift through every
    /// stage, print a summary, then serve the report pages.
    Demo(demo::DemoArgs),
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
    // Loaded only by the commands that use it: `stats` and `rules check`
    // work beside a broken kairos.toml.
    let config = || kairos_core::Config::load(cli.config.as_deref());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Serve(args) => rt.block_on(serve::run(config()?, args)),
        Command::Import(args) => rt.block_on(import::run(config()?, args)),
        Command::Replay(args) => rt.block_on(replay::run(config()?, args)),
        Command::Backtest(args) => rt.block_on(backtest::run(config()?, args)),
        Command::Rules { command } => rules::run(command, &rt),
        Command::Sql(args) => sql::sql(config()?, args, &rt),
        Command::Stats { file } => report::stats(&file),
        Command::Report(args) => rt.block_on(report::report(config()?, args)),
        Command::Compact(args) => rt.block_on(compact::compact(config()?, args)),
        Command::Forget(args) => rt.block_on(forget::forget(config()?, args)),
        Command::Unsuppress(args) => rt.block_on(forget::unsuppress(config()?, args)),
        Command::Demo(args) => demo::demo(config()?, args, &rt),
    }
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
