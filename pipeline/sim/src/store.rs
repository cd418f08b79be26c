//! An object store that fails on purpose.
//!
//! It wraps [`InMemory`] (the durable bucket, which outlives every
//! simulated process) and counts every write: put, delete, copy, rename.
//! At the planned write it "crashes": the write happens or not (a coin
//! toss: the process may die just before or just after the store took it),
//! and every later call fails until the simulator starts a fresh process
//! ([`FaultStore::restart`]). Besides, any write may fail transiently, with
//! or without having happened (a timeout after the bucket took it), and
//! reads may fail. Every fault is traced for the replay.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// What went wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// The process died at a write that the store took.
    CrashAfterWrite,
    /// The process died at a write that the store did not take.
    CrashBeforeWrite,
    /// A write failed and did not happen.
    WriteFailed,
    /// A write happened but its answer was an error (a timeout).
    WriteFailedAfterApplying,
    /// A read failed.
    ReadFailed,
}

impl FaultKind {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::CrashAfterWrite => "crash_after_write",
            FaultKind::CrashBeforeWrite => "crash_before_write",
            FaultKind::WriteFailed => "write_failed",
            FaultKind::WriteFailedAfterApplying => "write_failed_after_applying",
            FaultKind::ReadFailed => "read_failed",
        }
    }
}

/// One injected fault, for the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// The write counter when it happened (the read counter for
    /// [`FaultKind::ReadFailed`]).
    pub op: u64,
    /// What.
    pub kind: FaultKind,
    /// On which object.
    pub path: String,
}

/// When and how often to fail.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    /// Writes (1-based, counted over the whole run) at which the process
    /// crashes, ascending.
    pub crash_at: Vec<u64>,
    /// Writes that fail transiently without happening (targeted tests).
    pub fail_at: Vec<u64>,
    /// Chance that a write fails transiently.
    pub write_error: f64,
    /// Chance that a read fails.
    pub read_error: f64,
}

#[derive(Debug)]
struct Inner {
    plan: FaultPlan,
    rng: StdRng,
    writes: u64,
    reads: u64,
    crashed: bool,
    trace: Vec<Fault>,
}

/// The failing store; clones share the bucket and the plan.
#[derive(Debug, Clone)]
pub struct FaultStore {
    bucket: Arc<InMemory>,
    inner: Arc<Mutex<Inner>>,
}

/// Whether a write goes ahead.
enum Verdict {
    Apply,
    /// Fail without applying.
    Fail,
    /// Apply, then fail.
    ApplyThenFail,
}

impl FaultStore {
    /// An empty bucket failing per `plan`, its coin tosses seeded.
    pub fn new(plan: FaultPlan, seed: u64) -> FaultStore {
        FaultStore {
            bucket: Arc::new(InMemory::new()),
            inner: Arc::new(Mutex::new(Inner {
                plan,
                rng: StdRng::seed_from_u64(seed ^ 0x5354_4f52_4500_0000),
                writes: 0,
                reads: 0,
                crashed: false,
                trace: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding it is a bug the run reports anyway.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the process has crashed (every call fails until restart).
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// A fresh process starts: calls succeed again.
    pub fn restart(&self) {
        self.lock().crashed = false;
    }

    /// Writes so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// The faults injected so far.
    pub fn trace(&self) -> Vec<Fault> {
        self.lock().trace.clone()
    }

    /// Stops injecting faults (the checks read the bucket through it).
    pub fn calm(&self) {
        let mut i = self.lock();
        i.plan = FaultPlan::default();
        i.crashed = false;
    }

    fn crash_error(path: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "sim",
            source: format!("simulated crash: the process is gone ({path})").into(),
        }
    }

    fn write_verdict(&self, path: &str) -> std::result::Result<Verdict, object_store::Error> {
        let mut i = self.lock();
        if i.crashed {
            return Err(Self::crash_error(path));
        }
        i.writes += 1;
        let op = i.writes;
        let fault = |i: &mut Inner, kind| {
            i.trace.push(Fault {
                op,
                kind,
                path: path.to_string(),
            })
        };
        if i.plan.crash_at.first() == Some(&op) {
            i.plan.crash_at.remove(0);
            i.crashed = true;
            return Ok(if i.rng.random_bool(0.5) {
                fault(&mut i, FaultKind::CrashAfterWrite);
                Verdict::ApplyThenFail
            } else {
                fault(&mut i, FaultKind::CrashBeforeWrite);
                Verdict::Fail
            });
        }
        if i.plan.fail_at.contains(&op) {
            fault(&mut i, FaultKind::WriteFailed);
            return Ok(Verdict::Fail);
        }
        let p = i.plan.write_error;
        if p > 0.0 && i.rng.random_bool(p) {
            return Ok(if i.rng.random_bool(0.5) {
                fault(&mut i, FaultKind::WriteFailedAfterApplying);
                Verdict::ApplyThenFail
            } else {
                fault(&mut i, FaultKind::WriteFailed);
                Verdict::Fail
            });
        }
        Ok(Verdict::Apply)
    }

    fn check_read(&self, path: &str) -> Result<()> {
        let mut i = self.lock();
        if i.crashed {
            return Err(Self::crash_error(path));
        }
        i.reads += 1;
        let p = i.plan.read_error;
        if p > 0.0 && i.rng.random_bool(p) {
            let op = i.reads;
            i.trace.push(Fault {
                op,
                kind: FaultKind::ReadFailed,
                path: path.to_string(),
            });
            return Err(object_store::Error::Generic {
                store: "sim",
                source: format!("simulated read failure ({path})").into(),
            });
        }
        Ok(())
    }

    /// Runs one write per the plan.
    async fn write<T>(
        &self,
        path: &str,
        apply: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let failed = || object_store::Error::Generic {
            store: "sim",
            source: format!("simulated write failure ({path})").into(),
        };
        match self.write_verdict(path)? {
            Verdict::Apply => apply.await,
            Verdict::Fail => {
                if self.crashed() {
                    Err(Self::crash_error(path))
                } else {
                    Err(failed())
                }
            }
            Verdict::ApplyThenFail => {
                apply.await?;
                if self.crashed() {
                    Err(Self::crash_error(path))
                } else {
                    Err(failed())
                }
            }
        }
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.bucket)
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.write(
            location.as_ref(),
            self.bucket.put_opts(location, payload, opts),
        )
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // Kairos writes whole objects; an upload counts as one write when
        // it starts (its parts land only if it completes).
        self.write(
            location.as_ref(),
            self.bucket.put_multipart_opts(location, opts),
        )
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.check_read(location.as_ref())?;
        self.bucket.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.check_read(location.as_ref())?;
        self.bucket.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let this = self.clone();
        locations
            .then(move |location| {
                let this = this.clone();
                async move {
                    let location = location?;
                    let bucket = this.bucket.clone();
                    let one = location.clone();
                    this.write(location.as_ref(), async move {
                        let mut s = bucket.delete_stream(futures::stream::iter([Ok(one)]).boxed());
                        match s.next().await {
                            Some(r) => r.map(|_| ()),
                            None => Ok(()),
                        }
                    })
                    .await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let what = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.check_read(&what) {
            Ok(()) => self.bucket.list(prefix),
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let what = prefix.map(|p| p.to_string()).unwrap_or_default();
        self.check_read(&what)?;
        self.bucket.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.write(to.as_ref(), self.bucket.copy_opts(from, to, options))
            .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.write(to.as_ref(), self.bucket.rename_opts(from, to, options))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt as _;

    #[tokio::test]
    async fn a_crash_fails_every_call_until_restart_and_is_traced() {
        let s = FaultStore::new(
            FaultPlan {
                crash_at: vec![2],
                ..FaultPlan::default()
            },
            7,
        );
        let p = Path::from("a/1");
        s.put(&p, Bytes::from_static(b"x").into())
            .await
            .expect("first write");
        assert!(
            s.put(&Path::from("a/2"), Bytes::new().into())
                .await
                .is_err()
        );
        assert!(s.crashed());
        assert!(s.get(&p).await.is_err(), "reads fail after a crash too");
        s.restart();
        assert_eq!(
            s.get(&p)
                .await
                .expect("read")
                .bytes()
                .await
                .expect("bytes")
                .as_ref(),
            b"x"
        );
        let trace = s.trace();
        assert_eq!(trace.len(), 1);
        assert_eq!(trace[0].op, 2);
        assert!(matches!(
            trace[0].kind,
            FaultKind::CrashAfterWrite | FaultKind::CrashBeforeWrite
        ));
        // Whether the crashed write landed matches what the trace says.
        let landed = s.head(&Path::from("a/2")).await.is_ok();
        assert_eq!(landed, trace[0].kind == FaultKind::CrashAfterWrite);
    }

    #[tokio::test]
    async fn deletes_count_as_writes() {
        let s = FaultStore::new(
            FaultPlan {
                crash_at: vec![2],
                ..FaultPlan::default()
            },
            1,
        );
        let p = Path::from("a/1");
        s.put(&p, Bytes::from_static(b"x").into())
            .await
            .expect("write");
        assert!(s.delete(&p).await.is_err());
        assert_eq!(s.writes(), 2);
    }
}
