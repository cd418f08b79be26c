//! The staging log: where acknowledged events wait to be published.
//!
//! Ingest appends one *frame* per group commit and acknowledges the requests
//! in it only after the append is durable:
//!
//! - local data root: appended to `_staging/<writer>/<seq>.log` and
//!   `fdatasync`ed (the directory too, when the file is new);
//! - object store root: each frame is its own object `_staging/<writer>/<seq>.log`,
//!   durable once the PUT returns.
//!
//! A frame is `[len: u32 LE][crc32: u32 LE][payload]`; the payload is
//! newline-separated JSON [`StagedItem`](kairos_core::event::StagedItem)s. A
//! crash mid-append leaves a torn last frame whose request was never
//! acknowledged; readers stop at the first frame that is short or fails its
//! CRC. Every process writes under its own [`WriterId`], so several ingest
//! processes can share one bucket.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use crate::root::DataRoot;
use crate::{Result, StorageError};

/// A local segment is sealed once it holds this many bytes, so publishes
/// take bounded chunks and a busy server's staging never becomes one huge file.
pub const MAX_SEGMENT_BYTES: u64 = 64 << 20;

/// The folder under the data root holding staged, not yet published frames.
pub const STAGING_DIR: &str = "_staging";

/// Bytes before each frame's payload: length and CRC32.
pub const FRAME_HEADER: usize = 8;

/// Identifies one ingest process's staging segments: start time and pid, so
/// a restarted process never appends after a previous run's torn tail.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriterId(pub String);

impl WriterId {
    /// A fresh id for this process: `<utc start>-<pid>`.
    pub fn fresh() -> WriterId {
        WriterId(format!(
            "{}-{}",
            Utc::now().format("%Y%m%dT%H%M%S%6f"),
            std::process::id()
        ))
    }
}

/// A sealed or open segment found under `_staging/`.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Object path, e.g. `_staging/<writer>/0000000000000003.log`.
    pub path: ObjectPath,
    /// The writer that produced it.
    pub writer: WriterId,
    /// Sequence number within the writer.
    pub seq: u64,
    /// Last modification time.
    pub last_modified: DateTime<Utc>,
    /// Size in bytes.
    pub size: u64,
}

/// Where an append ended: the segment and the byte offset just past the
/// frame. Frames up to a position are an exact prefix of a writer's log, so
/// the rule engine checkpoints positions and the publisher never takes a
/// frame the engine has not consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Position {
    /// Segment sequence number.
    pub seq: u64,
    /// Bytes of that segment up to and including the frame.
    pub end: u64,
}

impl Position {
    /// Whether every frame of `segment` (of `size` bytes) is at or before this position.
    pub fn covers(&self, seq: u64, size: u64) -> bool {
        seq < self.seq || (seq == self.seq && size <= self.end)
    }
}

/// Appends frames for one writer.
pub struct StagingLog {
    root: DataRoot,
    writer: WriterId,
    next_seq: u64,
    /// Local mode: the open segment file, if one was started since the last rotate.
    open: Option<Arc<File>>,
    /// Bytes in the open segment.
    open_bytes: u64,
    /// Bytes this writer staged that are not published yet (shared with the
    /// publisher, which subtracts, and ingest, which refuses work above a limit).
    backlog: Arc<AtomicU64>,
    /// Local mode: the writer's lock, held while the process lives so other
    /// processes can tell a live writer from a crashed one.
    _lock: Option<File>,
}

/// Name of the lock file in a local writer's staging folder.
const LOCK_FILE: &str = "LOCK";

impl StagingLog {
    /// A log for `writer` under `root`; on a local root it takes the
    /// writer's lock file.
    pub fn open(root: DataRoot, writer: WriterId) -> Result<StagingLog> {
        let lock = match &root.local_dir {
            Some(dir) => {
                let folder = dir.join(STAGING_DIR).join(&writer.0);
                std::fs::create_dir_all(&folder).map_err(StorageError::io(folder.display()))?;
                let path = folder.join(LOCK_FILE);
                let file = File::create(&path).map_err(StorageError::io(path.display()))?;
                file.try_lock().map_err(|e| {
                    StorageError::io(path.display())(std::io::Error::other(e.to_string()))
                })?;
                Some(file)
            }
            None => None,
        };
        Ok(StagingLog {
            root,
            writer,
            next_seq: 0,
            open: None,
            open_bytes: 0,
            backlog: Arc::new(AtomicU64::new(0)),
            _lock: lock,
        })
    }

    /// Staged-but-unpublished bytes of this writer, live.
    pub fn backlog(&self) -> Arc<AtomicU64> {
        self.backlog.clone()
    }

    /// This log's writer id.
    pub fn writer(&self) -> &WriterId {
        &self.writer
    }

    fn segment_path(&self, seq: u64) -> ObjectPath {
        ObjectPath::from(format!("{STAGING_DIR}/{}/{seq:016}.log", self.writer.0))
    }

    /// Appends `payload` as one frame and returns, once it is durable, the
    /// position just past it.
    pub async fn append(&mut self, payload: &[u8]) -> Result<Position> {
        let frame = encode_frame(payload);
        let frame_len = frame.len() as u64;
        match self.root.local_dir.clone() {
            Some(dir) => {
                let file = match &self.open {
                    Some(f) => f.clone(),
                    None => {
                        let path = self.segment_path(self.next_seq);
                        let file = create_segment_file(dir, path.to_string()).await?;
                        self.next_seq += 1;
                        self.open = Some(file.clone());
                        file
                    }
                };
                let path = self.segment_path(self.next_seq - 1).to_string();
                let len = frame.len() as u64;
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    (&*file).write_all(&frame)?;
                    file.sync_data()
                })
                .await
                .map_err(|e| StorageError::io(&path)(std::io::Error::other(e)))?
                .map_err(StorageError::io(&path))?;
                self.open_bytes += len;
                self.backlog.fetch_add(len, Ordering::Relaxed);
                let at = Position {
                    seq: self.next_seq - 1,
                    end: self.open_bytes,
                };
                if self.open_bytes >= MAX_SEGMENT_BYTES {
                    self.rotate();
                }
                Ok(at)
            }
            None => {
                let path = self.segment_path(self.next_seq);
                self.next_seq += 1;
                self.root
                    .store
                    .put(&path, Bytes::from(frame).into())
                    .await
                    .map_err(StorageError::store(&path))?;
                self.backlog.fetch_add(frame_len, Ordering::Relaxed);
                Ok(Position {
                    seq: self.next_seq - 1,
                    end: frame_len,
                })
            }
        }
    }

    /// Seals the open segment so the publisher may take it; later appends
    /// start a new one. Returns the watermark: this writer's segments with
    /// `seq` below it are sealed.
    pub fn rotate(&mut self) -> u64 {
        self.open = None;
        self.open_bytes = 0;
        self.next_seq
    }
}

async fn create_segment_file(dir: PathBuf, rel: String) -> Result<Arc<File>> {
    let path = dir.join(&rel);
    tokio::task::spawn_blocking(move || -> std::io::Result<Arc<File>> {
        let parent = path.parent().map(PathBuf::from).unwrap_or_default();
        std::fs::create_dir_all(&parent)?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        // The new directory entry must survive a crash too, or an fsync'd
        // frame could vanish with its file name.
        File::open(&parent)?.sync_all()?;
        Ok(Arc::new(file))
    })
    .await
    .map_err(|e| StorageError::io(&rel)(std::io::Error::other(e)))?
    .map_err(StorageError::io(&rel))
}

/// On a local root: whether another process still holds `writer`'s lock.
/// On an object store there is no lock; callers use segment age instead.
pub fn writer_is_live(root: &DataRoot, writer: &WriterId) -> Option<bool> {
    let dir = root.local_dir.as_ref()?;
    Some(lock_held(
        &dir.join(STAGING_DIR).join(&writer.0).join(LOCK_FILE),
    ))
}

/// Whether a process holds the lock file at `path`. Only a missing file
/// means no: any other error counts as held, because taking a live
/// writer's segments would publish them twice.
fn lock_held(path: &std::path::Path) -> bool {
    let held = |e: &dyn std::fmt::Display| {
        tracing::warn!(path = %path.display(), error = %e, "cannot check a writer lock; taking the writer as live");
        true
    };
    match File::open(path) {
        Ok(file) => match file.try_lock() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(std::fs::TryLockError::Error(e)) => held(&e),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => held(&e),
    }
}

/// Whether any process holds a writer lock under the local root `dir`: a
/// server (or import) is running on it. A staging folder that cannot be
/// read counts as running (see [`lock_held`]).
pub fn any_writer_live(dir: &std::path::Path) -> bool {
    let staging = dir.join(STAGING_DIR);
    match std::fs::read_dir(&staging) {
        Ok(entries) => entries.into_iter().any(|e| match e {
            Ok(e) => lock_held(&e.path().join(LOCK_FILE)),
            Err(e) => {
                tracing::warn!(path = %staging.display(), error = %e, "cannot list the staging folder; taking a writer as live");
                true
            }
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(path = %staging.display(), error = %e, "cannot list the staging folder; taking a writer as live");
            true
        }
    }
}

/// Removes a dead local writer's folder once its segments are published.
pub fn remove_writer_dir(root: &DataRoot, writer: &WriterId) {
    if let Some(dir) = &root.local_dir {
        let folder = dir.join(STAGING_DIR).join(&writer.0);
        let _ = std::fs::remove_file(folder.join(LOCK_FILE));
        let _ = std::fs::remove_dir(folder);
    }
}

/// Encodes one frame: length, CRC32 of the payload, payload.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a segment into frame payloads. Stops at a torn or corrupt tail and
/// reports how many bytes were ignored there (a crash mid-append).
pub fn decode_frames(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut frames = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= FRAME_HEADER {
        let len =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + FRAME_HEADER;
        let Some(payload) = bytes.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        frames.push(payload);
        at = start + len;
    }
    (frames, bytes.len() - at)
}

/// Every segment under `_staging/`, sorted by writer then sequence.
pub async fn list_segments(root: &DataRoot) -> Result<Vec<Segment>> {
    let prefix = ObjectPath::from(STAGING_DIR);
    let metas = root.list(&prefix).await?;
    let mut out: Vec<Segment> = metas
        .into_iter()
        .filter_map(|m| {
            let mut parts = m.location.parts();
            let _staging = parts.next()?;
            let writer = parts.next()?.as_ref().to_string();
            let file = parts.next()?;
            let seq = file.as_ref().strip_suffix(".log")?.parse().ok()?;
            Some(Segment {
                path: m.location,
                writer: WriterId(writer),
                seq,
                last_modified: m.last_modified,
                size: m.size,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.writer, a.seq).cmp(&(&b.writer, b.seq)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_torn_tail_is_ignored() {
        let mut seg = encode_frame(b"one");
        seg.extend(encode_frame(b"two\nlines"));
        let full = seg.len();
        seg.extend(encode_frame(b"torn"));
        seg.truncate(full + 6);
        let (frames, ignored) = decode_frames(&seg);
        assert_eq!(frames, vec![&b"one"[..], &b"two\nlines"[..]]);
        assert_eq!(ignored, 6);
    }

    #[test]
    fn corrupt_frame_stops_reading() {
        let mut seg = encode_frame(b"good");
        let mut bad = encode_frame(b"bad!");
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        seg.extend(bad);
        seg.extend(encode_frame(b"after"));
        let (frames, _) = decode_frames(&seg);
        assert_eq!(frames, vec![&b"good"[..]]);
    }

    #[tokio::test]
    async fn local_log_appends_rotates_and_lists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let mut log = StagingLog::open(root.clone(), WriterId("w1".into())).expect("open");
        assert_eq!(writer_is_live(&root, &WriterId("w1".into())), Some(true));
        assert_eq!(writer_is_live(&root, &WriterId("gone".into())), Some(false));
        log.append(b"a").await.expect("append");
        log.append(b"b").await.expect("append");
        assert_eq!(log.rotate(), 1);
        log.append(b"c").await.expect("append");
        let segs = list_segments(&root).await.expect("list");
        assert_eq!(segs.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![0, 1]);
        let bytes =
            std::fs::read(dir.path().join("_staging/w1/0000000000000000.log")).expect("read");
        let (frames, ignored) = decode_frames(&bytes);
        assert_eq!((frames, ignored), (vec![&b"a"[..], &b"b"[..]], 0));
    }
}
