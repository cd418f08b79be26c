//! `kairos demo`: the whole product in one command, offline.
//!
//! `data-samples/` (300 customers of a made-up shop, six weeks) plus a
//! simulated cohort for the cart-abandonment experiment are replayed
//! through ingest, rules, arms, policy and the outbox channel in event
//! time; then the report pages are served. The cohort comes from the
//! response simulator (`kairos-dev generate --lift`): its customers convert
//! more in the triggered and scheduled arms than in the holdout, so the
//! report shows a real, known lift (+20% and +8% conversion) instead of
//! the noise 300 customers would give.
//!
//! The demo runs a copy of the rules folder in which cart abandonment also
//! tries three send delays (`-- variant 1h/6h/24h: delay=…`), simulated
//! with their own lifts (+16%, +28%, +16%: +20% on average), so the program
//! view's timing curve has a known answer: six hours converts best.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::SessionContext;

use kairos_core::Config;
use kairos_report::ReportOptions;

use kairos_generate::{GenerateOptions, Lift};

/// The experiment the simulated cohort answers.
const RULE: &str = "cart_abandonment";
/// The lifts the simulator injects, over the holdout: the triggered arm's
/// delay variants average +20%.
const LIFT: &str =
    "triggered=0.20,scheduled=0.08,triggered:1h=0.16,triggered:6h=0.28,triggered:24h=0.16";
/// The variants the demo's copy of the rule tries, after its `delay` line.
const DELAY_VARIANTS: &str =
    "-- variant 1h: delay=1h\n-- variant 6h: delay=6h\n-- variant 24h: delay=24h\n";
/// Holdout conversion in the cohort: a cart left a few hours ago is bought
/// fairly often, and a high base keeps the intervals of a small cohort
/// narrow enough to show the lift.
const BASE_RATE: f64 = 0.3;
/// Marks a folder as the demo's own, so a rerun may replace it.
const MARKER: &str = ".kairos-demo";
const SAMPLES: [&str; 3] = [
    "profiles.ndjson",
    "events.ndjson",
    "policy-scenarios.ndjson",
];

/// `kairos demo` flags.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Folder for the demo: the simulated cohort under `input/`, the data
    /// root under `data/`. Replaced on every run.
    #[arg(long, default_value = "kairos-demo")]
    pub dir: PathBuf,
    /// The sample files to replay.
    #[arg(long, default_value = "data-samples")]
    pub samples: PathBuf,
    /// Customers in the simulated cart-abandonment cohort.
    #[arg(long, default_value_t = 8_000)]
    pub customers: usize,
    /// Event time per micro-batch of the replay.
    #[arg(long, default_value = "2h")]
    pub batch_span: String,
    /// Address for the report pages.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Replay and print the summary, then exit instead of serving.
    #[arg(long)]
    pub no_serve: bool,
}

/// Runs the demo.
pub fn demo(
    mut config: Config,
    args: DemoArgs,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    let started = Instant::now();
    for f in SAMPLES {
        let path = args.samples.join(f);
        anyhow::ensure!(
            path.is_file(),
            "{} not found: run `kairos demo` from the repository root, or pass --samples DIR",
            path.display()
        );
    }
    let library = config.rules.dir.join(format!("{RULE}.sql"));
    anyhow::ensure!(
        library.is_file(),
        "{} not found: run `kairos demo` from the repository root, or set rules.dir in the config",
        library.display()
    );
    let span_us = crate::replay::batch_span_us(&args.batch_span)?;

    fresh_dir(&args.dir)?;
    config.rules.dir = rules_with_delay_variants(&config.rules.dir, &args.dir.join("rules"))?;
    let rule_file = config.rules.dir.join(format!("{RULE}.sql"));
    let input = args.dir.join("input");
    let data = args.dir.join("data");
    let cohort = simulate(&rule_file, args.customers, &input)?;
    config.storage.data = data.to_str().context("--dir must be UTF-8")?.to_string();
    let mut inputs: Vec<PathBuf> = SAMPLES.iter().map(|f| args.samples.join(f)).collect();
    inputs.push(input.join("profiles.ndjson"));
    inputs.push(input.join("events.ndjson"));
    println!(
        "Replaying data-samples/ and {} simulated customers ({cohort} calls) into {} ...",
        args.customers,
        data.display()
    );
    rt.block_on(crate::replay::replay(config.clone(), &inputs, span_us))?;
    println!("Replay done in {:.1} s.\n", started.elapsed().as_secs_f64());

    rt.block_on(summary(&config, &data))?;
    if args.no_serve {
        return Ok(());
    }
    config.server.listen = args.listen;
    // The replay is the whole history: the server only shows it.
    config.rules.enabled = false;
    rt.block_on(async {
        let server = kairos_server::Server::build(config).await?;
        let addr = server.local_addr()?;
        // The first link carries the read token; the page keeps it as a
        // cookie, so the others need none once it was opened.
        let with_token = server
            .read_token()
            .map(|t| format!("?token={t}"))
            .unwrap_or_default();
        println!("\nReport pages (Ctrl-C stops the server):");
        println!("  http://{addr}/program{with_token}");
        println!("  http://{addr}/experiments/{RULE}");
        println!("  http://{addr}/experiments");
        server.run().await
    })
}

/// Empties `dir` for a new run, refusing a folder the demo did not make.
fn fresh_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        anyhow::ensure!(
            dir.join(MARKER).exists(),
            "{} exists and was not made by `kairos demo`; pass --dir with a new folder",
            dir.display()
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "made by kairos demo; rerunning it replaces this folder\n",
    )?;
    Ok(())
}

/// Copies the rule files of `library` into `out`, adding the delay
/// variants to the cart-abandonment rule; returns `out`.
fn rules_with_delay_variants(library: &Path, out: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out)?;
    for entry in
        std::fs::read_dir(library).with_context(|| format!("reading {}", library.display()))?
    {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "sql") {
            continue;
        }
        let mut text = std::fs::read_to_string(&path)?;
        if path.file_stem().is_some_and(|s| s == RULE) {
            let at = text
                .find("-- param delay:")
                .and_then(|i| text[i..].find('\n').map(|j| i + j + 1))
                .with_context(|| format!("{} has no `-- param delay:` line", path.display()))?;
            text.insert_str(at, DELAY_VARIANTS);
        }
        std::fs::write(out.join(path.file_name().context("file name")?), text)?;
    }
    Ok(out.to_path_buf())
}

/// Writes the simulated cohort to `out`; returns its number of calls.
fn simulate(rule_file: &Path, customers: usize, out: &Path) -> anyhow::Result<usize> {
    let lift = Lift::from_rule_file(rule_file, BASE_RATE, LIFT)?;
    let opts = GenerateOptions {
        seed: 6,
        customers,
        lift: Some(lift),
        id_prefix: "sim-",
        ..GenerateOptions::sample()
    };
    let s = kairos_generate::write_files(&opts, out)?;
    Ok(s.profiles + s.events)
}

/// Prints what the replay did and the experiment's headline.
async fn summary(config: &Config, data: &Path) -> anyhow::Result<()> {
    let ctx = crate::sql::open(&config.storage.data)?;
    let one = |rows: Vec<(String, i64)>| rows.first().map_or(0, |r| r.1);
    let events = one(counts(&ctx, "SELECT 'events', count(*) FROM events").await?);
    let customers = one(counts(
        &ctx,
        "SELECT 'customers', count(DISTINCT customer_id) FROM events",
    )
    .await?);
    println!("events      {events} from {customers} customers");
    line(
        "firings",
        counts(
            &ctx,
            "SELECT rule, count(*) FROM firings GROUP BY rule ORDER BY 2 DESC",
        )
        .await?,
    );
    line(
        "decisions",
        counts(
            &ctx,
            "SELECT decision, count(*) FROM sends GROUP BY decision ORDER BY 2 DESC",
        )
        .await?,
    );
    line(
        "sends",
        counts(
            &ctx,
            "SELECT channel, count(*) FROM sends WHERE decision = 'send' GROUP BY channel ORDER BY 2 DESC",
        )
        .await?,
    );
    line(
        "suppressed",
        counts(
            &ctx,
            "SELECT reason, count(*) FROM sends WHERE decision = 'suppressed' GROUP BY reason ORDER BY 2 DESC, 1 LIMIT 8",
        )
        .await?,
    );
    line(
        "delivered",
        counts(
            &ctx,
            "SELECT status, count(*) FROM (
               SELECT status, row_number() OVER (PARTITION BY send_id ORDER BY at DESC, attempt DESC) AS latest
               FROM deliveries) WHERE latest = 1 GROUP BY status ORDER BY 2 DESC",
        )
        .await?,
    );
    println!("outbox      {}", data.join("outbox").display());

    let root = kairos_storage::DataRoot::open(&config.storage.data)?;
    let designs = kairos_report::report::load_designs(&config.rules.dir);
    let options = ReportOptions::from_config(config)?;
    let report = kairos_report::experiment_report(&root, &designs, RULE, &options).await?;
    println!(
        "\nExperiment {RULE} ({} recipients; simulated lift {LIFT}):",
        report.recipients
    );
    for h in kairos_report::text::headlines(&report) {
        println!("  {h}");
    }
    let program = kairos_report::program::program(
        &root,
        &designs,
        &options,
        config.experiments.global_control_percent,
    )
    .await?;
    println!("\nThe program, every rule together (served at /program):");
    for h in kairos_report::text::program_headlines(&program) {
        println!("  {h}");
    }
    println!(
        "\nQuery it:   kairos sql --data {} \"SELECT arm, count(*) FROM assignments GROUP BY arm\"",
        data.display()
    );
    // Absolute: a notebook's kernel runs in the notebook's own folder.
    let absolute = std::path::absolute(data).unwrap_or_else(|_| data.to_path_buf());
    println!(
        "Notebooks:  KAIROS_DATA={} jupyter lab notebooks/   (notebooks/README.md)",
        absolute.display()
    );
    Ok(())
}

/// `label  key n · key n · ...`
fn line(label: &str, rows: Vec<(String, i64)>) {
    let parts: Vec<String> = rows.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "{label:<11} {}",
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(" · ")
        }
    );
}

/// Rows of a two-column query: a key (any type, shown as text) and a count.
async fn counts(ctx: &SessionContext, sql: &str) -> anyhow::Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for batch in ctx.sql(sql).await?.collect().await? {
        let keys = arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
        let keys = keys.as_string::<i32>();
        let n = arrow::compute::cast(batch.column(1), &DataType::Int64)?;
        let n = n.as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let key = if keys.is_valid(i) {
                keys.value(i)
            } else {
                "(none)"
            };
            out.push((key.to_string(), n.value(i)));
        }
    }
    Ok(out)
}
