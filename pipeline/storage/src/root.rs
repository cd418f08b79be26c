//! The data root: one object store holding every table, a local directory by
//! default or `s3://bucket/prefix` for real deployments.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::{Result, StorageError};

/// Where the tables live.
#[derive(Debug, Clone)]
pub struct DataRoot {
    /// The store, rooted at the data root (paths are table-relative: `events/...`).
    pub store: Arc<dyn ObjectStore>,
    /// The local directory, when the root is one: staging then uses an fsync'd file log.
    pub local_dir: Option<PathBuf>,
    /// The root as the user gave it, for messages.
    pub url: String,
}

impl DataRoot {
    /// Opens `dir_or_url`: `s3://bucket[/prefix]` uses the standard `AWS_*`
    /// environment variables (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_REGION`, ...);
    /// anything else is a local directory, created if missing.
    pub fn open(dir_or_url: &str) -> Result<DataRoot> {
        if let Some(rest) = dir_or_url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(StorageError::BadRoot(dir_or_url.to_string()));
            }
            let s3 = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(StorageError::store(dir_or_url))?;
            let prefix = prefix.trim_matches('/');
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            };
            return Ok(DataRoot {
                store,
                local_dir: None,
                url: dir_or_url.to_string(),
            });
        }
        if dir_or_url.contains("://") {
            return Err(StorageError::BadRoot(dir_or_url.to_string()));
        }
        let dir = PathBuf::from(dir_or_url);
        std::fs::create_dir_all(&dir).map_err(StorageError::io(dir.display()))?;
        let dir = dir
            .canonicalize()
            .map_err(StorageError::io(dir.display()))?;
        let store =
            LocalFileSystem::new_with_prefix(&dir).map_err(StorageError::store(dir.display()))?;
        Ok(DataRoot {
            store: Arc::new(store),
            local_dir: Some(dir),
            url: dir_or_url.to_string(),
        })
    }
}

impl DataRoot {
    /// Every object under `prefix`.
    pub async fn list(&self, prefix: &ObjectPath) -> Result<Vec<ObjectMeta>> {
        self.store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(StorageError::store(prefix))
    }

    /// A whole object, or `None` when it does not exist.
    pub async fn read(&self, path: &ObjectPath) -> Result<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(r) => r.bytes().await.map(Some).map_err(StorageError::store(path)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::store(path)(e)),
        }
    }

    /// Stores a secret (a key or token file) once: on a local root the
    /// file is created readable by its owner only (mode 0600) before any
    /// byte is written, and made durable; elsewhere the bucket's policy
    /// guards it. Fails when the object exists already.
    pub async fn put_secret(&self, path: &ObjectPath, bytes: Bytes) -> Result<()> {
        self.write_secret(path, bytes, false).await
    }

    /// Replaces a secret stored by [`DataRoot::put_secret`] as a whole: on a
    /// local root through a 0600 temporary file renamed over it, so the
    /// content is never readable by others, not even for a moment.
    pub async fn replace_secret(&self, path: &ObjectPath, bytes: Bytes) -> Result<()> {
        self.write_secret(path, bytes, true).await
    }

    async fn write_secret(&self, path: &ObjectPath, bytes: Bytes, replace: bool) -> Result<()> {
        let Some(dir) = &self.local_dir else {
            let mode = if replace {
                object_store::PutMode::Overwrite
            } else {
                object_store::PutMode::Create
            };
            let opts = object_store::PutOptions {
                mode,
                ..Default::default()
            };
            return self
                .store
                .put_opts(path, bytes.into(), opts)
                .await
                .map(|_| ())
                .map_err(StorageError::store(path));
        };
        let file = dir.join(path.as_ref());
        let parent = file.parent().unwrap_or(dir).to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::create_dir_all(&parent)?;
            let target = if replace {
                let mut name = file.file_name().unwrap_or_default().to_os_string();
                name.push(format!(".{}.tmp", std::process::id()));
                let tmp = parent.join(name);
                // Left by a writer killed mid-way: never the live secret.
                match std::fs::remove_file(&tmp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                tmp
            } else {
                file.clone()
            };
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            if replace {
                std::fs::rename(&target, &file)?;
            }
            std::fs::File::open(&parent)?.sync_all()
        })
        .await
        .map_err(|e| StorageError::io(path)(std::io::Error::other(e)))?
        .map_err(StorageError::io(path))
    }

    /// Reads a secret stored by [`DataRoot::put_secret`]. On a local root a
    /// file others may read (written by an older version) is narrowed to
    /// mode 0600 first.
    pub async fn read_secret(&self, path: &ObjectPath) -> Result<Option<Bytes>> {
        if let Some(dir) = &self.local_dir {
            use std::os::unix::fs::PermissionsExt as _;
            let file = dir.join(path.as_ref());
            if let Ok(meta) = std::fs::metadata(&file)
                && meta.permissions().mode() & 0o077 != 0
            {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(StorageError::io(file.display()))?;
            }
        }
        self.read(path).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[tokio::test]
    async fn a_replaced_secret_stays_owner_only_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = DataRoot::open(dir.path().to_str().unwrap()).unwrap();
        let path = ObjectPath::from("_kairos/privacy/requests/r1.json");
        root.put_secret(&path, Bytes::from_static(b"first"))
            .await
            .unwrap();
        assert!(
            root.put_secret(&path, Bytes::from_static(b"again"))
                .await
                .is_err()
        );
        root.replace_secret(&path, Bytes::from_static(b"second, longer"))
            .await
            .unwrap();

        let file = dir.path().join(path.as_ref());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"second, longer");
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("r1.json")],
            "no temporary left"
        );
    }
}
