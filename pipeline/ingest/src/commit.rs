//! Group commit: concurrent requests share one durable append.
//!
//! Handlers send their serialized items to one committer task. While an
//! append (and its fsync or PUT) is in flight, new requests queue; the next
//! append takes everything queued, up to `group_commit_max_bytes`, waiting
//! at most `group_commit_max_delay_ms` for more. Every request in a commit is
//! acknowledged only after the append returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc, oneshot};

use kairos_core::event::StagedItem;
use kairos_storage::{Position, StagingLog};

use crate::metrics::Metrics;

/// The staging append failed; the client should retry (its messageIds make that safe).
#[derive(Debug, Clone, thiserror::Error)]
#[error("could not make the events durable: {0}; retry the request")]
pub struct CommitError(pub String);

struct Pending {
    payload: Vec<u8>,
    items: Vec<StagedItem>,
    ack: oneshot::Sender<Result<(), CommitError>>,
}

/// One durable append, handed to the rule engine so it never re-reads
/// what was just written.
#[derive(Debug)]
pub struct Committed {
    /// Where the frame ends in this process's staging log.
    pub at: Position,
    /// The frame's items, as ingest parsed them: the engine takes them
    /// as they are instead of parsing the frame's JSON again (recovery
    /// after a restart parses the frames from staging).
    pub items: Vec<StagedItem>,
}

/// Handle to the committer task.
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Pending>,
}

impl Committer {
    /// Starts the committer over `log`; every durable append also goes to
    /// `feed` when given.
    pub fn start(
        log: Arc<Mutex<StagingLog>>,
        max_bytes: usize,
        max_delay: Duration,
        metrics: Arc<Metrics>,
        feed: Option<mpsc::UnboundedSender<Committed>>,
    ) -> (Committer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        let task = tokio::spawn(run(rx, log, max_bytes, max_delay, metrics, feed));
        (Committer { tx }, task)
    }

    /// Makes `payload` (`items` as newline-terminated JSON) durable; returns
    /// when it is.
    pub async fn commit(
        &self,
        payload: Vec<u8>,
        items: Vec<StagedItem>,
    ) -> Result<(), CommitError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Pending {
                payload,
                items,
                ack,
            })
            .await
            .map_err(|_| CommitError("the server is shutting down".into()))?;
        done.await
            .map_err(|_| CommitError("the committer stopped".into()))?
    }
}

async fn run(
    mut rx: mpsc::Receiver<Pending>,
    log: Arc<Mutex<StagingLog>>,
    max_bytes: usize,
    max_delay: Duration,
    metrics: Arc<Metrics>,
    feed: Option<mpsc::UnboundedSender<Committed>>,
) {
    while let Some(first) = rx.recv().await {
        let deadline = tokio::time::Instant::now() + max_delay;
        let mut buf = first.payload;
        let mut staged = first.items;
        let mut acks = vec![first.ack];
        while buf.len() < max_bytes {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            let Some(p) = next else { break };
            buf.extend_from_slice(&p.payload);
            staged.extend(p.items);
            acks.push(p.ack);
        }
        let items = staged.len();
        let started = Instant::now();
        let result = log.lock().await.append(&buf).await;
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.commit_items.observe(items as f64);
        let result = result.map_err(|e| {
            metrics.store_error("stage");
            tracing::error!(error = %e, items, "staging append failed; requests answered 503");
            CommitError(e.to_string())
        });
        if let Ok(at) = &result {
            metrics.accepted.inc_by(items as u64);
            if let Some(feed) = &feed {
                // The engine may have stopped at shutdown; the frame is
                // durable and recovery reads it from staging.
                let _ = feed.send(Committed {
                    at: *at,
                    items: staged,
                });
            }
        }
        for ack in acks {
            let _ = ack.send(result.clone().map(|_| ()));
        }
    }
}
