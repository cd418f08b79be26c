//! `kairos compact`: one compaction pass with the server stopped
//! (`kairos_server::compact` decides which hours are safe).

use std::time::Instant;

use anyhow::Context as _;

use kairos_core::Config;
use kairos_server::compact::run;
use kairos_storage::DataRoot;

/// `kairos compact` flags.
#[derive(clap::Args)]
pub struct CompactArgs {
    /// Data root (a local directory). Default from config (./kairos-data).
    #[arg(long)]
    pub data: Option<String>,
    /// Merge an hour once it ended this long ago (90m, 6h, 1d).
    #[arg(long, default_value = "1h")]
    pub settle: String,
}

/// `kairos compact`.
pub async fn compact(config: Config, args: CompactArgs) -> anyhow::Result<()> {
    let data = args.data.unwrap_or(config.storage.data.clone());
    let root = DataRoot::open(&data).with_context(|| format!("opening data root {data}"))?;
    if let Some(dir) = &root.local_dir
        && kairos_storage::staging::any_writer_live(dir)
    {
        anyhow::bail!(
            "a server is running on {data}; it compacts on its own schedule (publish.compact_every_secs), so stop it or leave compaction to it"
        );
    }
    let settle = kairos_core::time::parse_duration_us(&args.settle).context("--settle")?;
    let started = Instant::now();
    let s = run(&root, settle, config.publish.row_group_rows).await?;
    for why in &s.skipped {
        eprintln!("skipped {why}");
    }
    println!(
        "compacted {} hour(s): {} files ({} rows, {:.1} MB) into {} ({:.1} MB) in {:.1?}",
        s.hours,
        s.files_before,
        s.rows,
        s.bytes_before as f64 / 1e6,
        s.hours,
        s.bytes_after as f64 / 1e6,
        started.elapsed()
    );
    Ok(())
}
