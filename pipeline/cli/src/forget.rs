//! `kairos forget` and `kairos unsuppress`: erasure with the server stopped
//! (`kairos_server::privacy` holds the request lifecycle the server shares).

use anyhow::Context as _;

use kairos_core::Config;
use kairos_server::privacy::{AUDIT_DIR, Privacy, Progress};
use kairos_storage::DataRoot;

/// `kairos forget` flags.
#[derive(clap::Args)]
pub struct ForgetArgs {
    /// Customer ids (userId or anonymousId) to erase; their linked
    /// anonymous ids go with them.
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Data root. Default from config (./kairos-data).
    #[arg(long)]
    pub data: Option<String>,
}

/// `kairos forget`: erase now (the server must be stopped; while it runs,
/// use `POST /api/privacy/erase`).
pub async fn forget(config: Config, args: ForgetArgs) -> anyhow::Result<()> {
    let privacy = offline(&config, args.data.as_deref(), "forget").await?;
    let id = privacy.submit(args.ids).await?;
    println!("erasure {id}: suppressed; erasing");
    let started = std::time::Instant::now();
    for (id, progress) in privacy.run_pending().await? {
        match progress {
            Progress::Finished(a) => {
                let rows: usize = a.removed.tables.values().map(|(_, r)| r).sum();
                let files: usize = a.removed.tables.values().map(|(f, _)| f).sum();
                println!(
                    "erasure {id}: finished in {:.1?}: {} id(s) ({} linked), {rows} row(s) in {files} file(s), {} outbox file(s), {} derived file(s); audit in {AUDIT_DIR}/{id}.json",
                    started.elapsed(),
                    a.ids_asked + a.ids_linked,
                    a.ids_linked,
                    a.removed.outbox_files,
                    a.removed.derived_files,
                );
            }
            Progress::Waiting(why) => println!(
                "erasure {id}: {why}; start `kairos serve`, which finishes it (the ids are suppressed already)"
            ),
        }
    }
    Ok(())
}

/// `kairos unsuppress`: lets calls naming these ids in again (their
/// erased data stays erased).
pub async fn unsuppress(config: Config, args: ForgetArgs) -> anyhow::Result<()> {
    let privacy = offline(&config, args.data.as_deref(), "unsuppress").await?;
    let n = privacy.suppression.remove(&privacy.root, &args.ids).await?;
    println!(
        "{n} of {} id(s) were suppressed and no longer are; {} remain",
        args.ids.len(),
        privacy.suppression.len()
    );
    Ok(())
}

async fn offline(config: &Config, data: Option<&str>, what: &str) -> anyhow::Result<Privacy> {
    let data = data.unwrap_or(&config.storage.data);
    let root = DataRoot::open(data).with_context(|| format!("opening data root {data}"))?;
    if let Some(dir) = &root.local_dir
        && kairos_storage::staging::any_writer_live(dir)
    {
        anyhow::bail!(
            "a server is running on {data}: `kairos {what}` would race it; use its POST /api/privacy/erase, or stop it first"
        );
    }
    Privacy::open(&root, config).await
}
