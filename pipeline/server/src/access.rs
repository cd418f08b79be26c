//! Who may send and read, by default: like a local notebook server, the
//! first start with no key configured generates a write key and a read
//! token, keeps them in the data root (`_kairos/access.json`, mode 0600)
//! and prints them once. Loopback is not trusted unless
//! `server.insecure_local` is set: any web page the operator visits, a
//! reverse proxy on the same host, or a DNS-rebound name all reach
//! loopback. The HTTP-level checks (`Host`, `Origin`, the peer) live in
//! [`crate::listen`].

use anyhow::Context as _;
use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use kairos_core::Config;
use kairos_core::secret::{Secret, random_token};
use kairos_storage::DataRoot;

/// Where generated credentials are kept, relative to the data root.
pub const ACCESS_FILE: &str = "_kairos/access.json";

#[derive(Serialize, Deserialize)]
struct Generated {
    write_key: String,
    read_token: String,
}

/// Fills in a server write key and a read token where the config has
/// none (unless `server.insecure_local`): the ones kept in the data root,
/// or new ones, stored and printed on stderr this once. Returns the read
/// token to put in page links (`None` when reads need none).
pub async fn settle(config: &mut Config, root: &DataRoot) -> anyhow::Result<Option<String>> {
    let no_key = config.ingest.write_keys.is_empty() && config.ingest.client_keys.is_empty();
    let no_token = config.report.token.0.trim().is_empty();
    if config.server.insecure_local || !(no_key || no_token) {
        let token = config.report.token.0.trim();
        return Ok((!token.is_empty()).then(|| token.to_string()));
    }
    let path = ObjectPath::from(ACCESS_FILE);
    let where_ = format!("{}/{ACCESS_FILE}", root.url.trim_end_matches('/'));
    let (g, fresh) = match root.read_secret(&path).await? {
        Some(bytes) => (
            serde_json::from_slice::<Generated>(&bytes).with_context(|| {
                format!("{where_} is damaged; delete it to generate new credentials (clients then need the new key)")
            })?,
            false,
        ),
        None => {
            let g = Generated {
                write_key: random_token(16),
                read_token: random_token(16),
            };
            root.put_secret(&path, Bytes::from(serde_json::to_vec_pretty(&g)?))
                .await
                .with_context(|| format!("storing generated credentials in {where_}"))?;
            (g, true)
        }
    };
    if no_key {
        config.ingest.write_keys = vec![Secret(g.write_key.clone())];
    }
    if no_token {
        config.report.token = Secret(g.read_token.clone());
    }
    if fresh {
        // Once, on stderr: stdout's first line belongs to `listening on`.
        eprintln!(
            "kairos: generated credentials (kept in {where_}, readable by you only):\n  write key (HTTP Basic user or Bearer on /v1/*): {}\n  read token (Bearer on /api/*, /metrics; ?token= on pages): {}\n  set ingest.write_keys and report.token to choose your own; server.insecure_local = true trusts loopback instead",
            g.write_key, g.read_token
        );
    } else {
        tracing::info!(file = %where_, "using the generated write key and read token");
    }
    Ok(Some(config.report.token.0.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_start_generates_and_later_starts_reuse() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = DataRoot::open(&dir.path().display().to_string())?;
        let mut first = Config::from_toml("")?;
        let token = settle(&mut first, &root).await?.expect("a token");
        assert_eq!(first.ingest.write_keys.len(), 1);
        assert_eq!(first.report.token.0, token);
        let file = dir.path().join(ACCESS_FILE);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&file)?.permissions().mode() & 0o777,
            0o600
        );

        let mut again = Config::from_toml("")?;
        settle(&mut again, &root).await?;
        assert_eq!(again.ingest.write_keys, first.ingest.write_keys);
        assert_eq!(again.report.token, first.report.token);

        // Configured credentials win; insecure_local generates nothing.
        let mut own = Config::from_toml("[ingest]\nwrite_keys = [\"mine\"]\n")?;
        settle(&mut own, &root).await?;
        assert_eq!(own.ingest.write_keys, vec![Secret("mine".into())]);
        assert_eq!(
            own.report.token.0, token,
            "only the missing token is filled in"
        );
        let mut open = Config::from_toml("[server]\ninsecure_local = true\n")?;
        assert_eq!(settle(&mut open, &root).await?, None);
        assert!(open.ingest.write_keys.is_empty());
        Ok(())
    }
}
