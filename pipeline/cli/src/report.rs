//! `kairos report RULE`, `kairos report --program` and `kairos stats FILE.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use kairos_core::Config;
use kairos_report::ReportOptions;

/// `kairos report` flags: the API's query parameters.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// The rule (experiment).
    #[arg(required_unless_present = "program")]
    pub rule: Option<String>,
    /// Every rule together instead of one (as GET /api/program): pooled
    /// lifts, incremental revenue, the global control group, timing.
    #[arg(long, conflicts_with = "rule")]
    pub program: bool,
    /// Data root. Default from config (./kairos-data).
    #[arg(long)]
    pub data: Option<String>,
    /// Rules folder (for the configured split). Default from config (./sql).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Attribution window after assignment (7d, 36h). Default report.window.
    #[arg(long)]
    pub window: Option<String>,
    /// Conversion event type. Default report.conversion_event.
    #[arg(long)]
    pub conversion_event: Option<String>,
    /// Event type whose revenue counts. Default purchase.
    #[arg(long)]
    pub revenue_event: Option<String>,
    /// Pre-period for the CUPED covariate. Default: the window.
    #[arg(long)]
    pub pre_period: Option<String>,
    /// Revenue cap per recipient: none, an amount (500) or a percentile (p99).
    #[arg(long)]
    pub cap: Option<String>,
    /// CUPED on or off.
    #[arg(long)]
    pub cuped: Option<String>,
    /// Customers assigned from this date (YYYY-MM-DD) or instant.
    #[arg(long)]
    pub from: Option<String>,
    /// Customers assigned up to this date, inclusive, or before an instant.
    #[arg(long)]
    pub to: Option<String>,
    /// Print the report JSON (as GET /api/experiments/RULE or /api/program
    /// serves it).
    #[arg(long)]
    pub json: bool,
}

impl ReportArgs {
    fn params(&self) -> BTreeMap<String, String> {
        [
            ("window", &self.window),
            ("conversion_event", &self.conversion_event),
            ("revenue_event", &self.revenue_event),
            ("pre_period", &self.pre_period),
            ("cap", &self.cap),
            ("cuped", &self.cuped),
            ("from", &self.from),
            ("to", &self.to),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.clone()?)))
        .collect()
    }
}

/// Prints a rule's report.
pub async fn report(mut config: Config, args: ReportArgs) -> anyhow::Result<()> {
    config.storage.data = args.data.clone().unwrap_or(config.storage.data);
    config.rules.dir = args.rules.clone().unwrap_or(config.rules.dir);
    let options = ReportOptions::from_config(&config)?
        .with_params(&args.params())
        .map_err(|e| match e {
            kairos_report::ReportError::BadOption { param, problem } => {
                anyhow::anyhow!("--{}: {problem}", param.replace('_', "-"))
            }
            other => other.into(),
        })?;
    let root = kairos_storage::DataRoot::open(&config.storage.data)
        .with_context(|| format!("opening data root {}", config.storage.data))?;
    let designs = kairos_report::report::load_designs(&config.rules.dir);
    let Some(rule) = &args.rule else {
        let p = kairos_report::program::program(
            &root,
            &designs,
            &options,
            config.experiments.global_control_percent,
        )
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&p)?);
        } else {
            print!("{}", kairos_report::text::render_program(&p));
        }
        return Ok(());
    };
    let r = kairos_report::experiment_report(&root, &designs, rule, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", kairos_report::text::render(&r));
    }
    Ok(())
}

/// Analyses the sufficient statistics in `file` and prints the analysis.
pub fn stats(file: &Path) -> anyhow::Result<()> {
    let body = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let analysis = kairos_report::http::analyze_body(&body)
        .map_err(|(path, e)| anyhow::anyhow!("{}: {path}: {e}", file.display()))?;
    println!("{}", serde_json::to_string_pretty(&analysis)?);
    Ok(())
}
