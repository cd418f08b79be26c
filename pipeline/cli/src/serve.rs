//! `kairos serve`: [`kairos_server::Server`] with the flags applied.

use std::net::SocketAddr;
use std::path::PathBuf;

use kairos_core::Config;

/// `kairos serve` flags: each overrides its config key.
#[derive(clap::Args)]
pub struct ServeArgs {
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
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn run(mut config: Config, args: ServeArgs) -> anyhow::Result<()> {
    config.server.insecure_local |= args.insecure_local;
    config.storage.data = args.data.unwrap_or(config.storage.data);
    config.server.listen = args.listen.unwrap_or(config.server.listen);
    config.rules.dir = args.rules.unwrap_or(config.rules.dir);
    kairos_server::Server::build(config).await?.run().await
}
