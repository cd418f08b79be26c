//! [`Server`]: wires storage, ingest, the rules loop, reports, callbacks,
//! erasure, compaction and publishing into one process.
//!
//! Start-up publishes whatever a previous run left staged (in the
//! background: `/healthz` answers at once). SIGTERM or Ctrl-C stops
//! accepting, lets in-flight requests finish and become durable, then
//! publishes everything staged before exiting.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use tower_http::trace::TraceLayer;

use kairos_core::Config;
use kairos_core::event::EventTypes;
use kairos_ingest::{Committer, IngestLimits, IngestState, Normalizer, WriteAccess};
use kairos_storage::{ConsumedGate, DataRoot, Publisher, PublisherOptions, StagingLog, WriterId};

use crate::live;
use crate::metrics::Metrics;

/// A built server: its port is bound, its background work (recovery, the
/// rules loop, committing, publishing) started; [`Server::run`] serves.
pub struct Server {
    listener: TcpListener,
    app: Router,
    limits: crate::listen::Limits,
    read_token: Option<String>,
    root: DataRoot,
    writer: WriterId,
    on_rules_failure: oneshot::Receiver<()>,
    commit_task: JoinHandle<()>,
    rules_task: Option<JoinHandle<anyhow::Result<()>>>,
    forwarder: JoinHandle<()>,
    stop_publisher: oneshot::Sender<()>,
    publish_task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Everything `config` asks for, with the port bound (so a port in use
    /// fails here, before any recovery work).
    pub async fn build(config: Config) -> anyhow::Result<Server> {
        let listen = config.server.listen;
        let limits = crate::listen::Limits {
            max_connections: config.server.max_connections,
            header_timeout: server_duration("header_timeout", &config.server.header_timeout)?,
            body_timeout: server_duration("body_timeout", &config.server.body_timeout)?,
        };
        let root = DataRoot::open(&config.storage.data)
            .with_context(|| format!("opening data root {}", config.storage.data))?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}; is another server using the port?"))?;
        Self::assemble(config, root, listener, limits).await
    }

    /// The address it listens on (the port chosen when asked for :0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// The token that reads reports and metrics; `None` with
    /// `server.insecure_local` and no token configured.
    pub fn read_token(&self) -> Option<&str> {
        self.read_token.as_deref()
    }

    /// Serves until SIGTERM, Ctrl-C or a failed rules batch; then stops
    /// accepting, lets in-flight requests become durable and publishes
    /// everything staged.
    pub async fn run(self) -> anyhow::Result<()> {
        crate::listen::serve(
            self.listener,
            self.app,
            self.limits,
            shutdown_signal(self.on_rules_failure),
        )
        .await;

        // The router (and with it every committer handle) is gone: the
        // committer drains what was queued, then the last publish runs.
        self.commit_task.await.context("committer task")?;
        if let Some(task) = self.rules_task {
            task.await.context("rules task")??;
        }
        let _ = self.forwarder.await;
        let _ = self.stop_publisher.send(());
        self.publish_task.await.context("publisher task")??;
        kairos_storage::staging::remove_writer_dir(&self.root, &self.writer);
        tracing::info!("stopped; everything staged is published");
        Ok(())
    }

    async fn assemble(
        mut config: Config,
        root: DataRoot,
        listener: TcpListener,
        limits: crate::listen::Limits,
    ) -> anyhow::Result<Server> {
        // One key for signing (delivery) and checking (the /u/ route) unsubscribe
        // links, settled before either starts.
        let read_token = crate::access::settle(&mut config, &root).await?;
        let privacy = crate::privacy::Privacy::open(&root, &config).await?;
        let erase_now = Arc::new(tokio::sync::Notify::new());
        let link_key = kairos_messaging::delivery::link_key(&root, &config.messaging.link_key.0)
            .await
            .context("reading or storing _kairos/link-key")?;
        config.messaging.link_key =
            kairos_core::config::Secret(String::from_utf8_lossy(&link_key).into_owned());
        let writer = WriterId::fresh();
        let log = StagingLog::open(root.clone(), writer.clone())?;
        let backlog = log.backlog();
        let log = Arc::new(Mutex::new(log));
        let metrics = Metrics::new();

        // The rules consume the staging log; the publisher takes only what
        // they consumed (see kairos_rules::runner).
        let gate: ConsumedGate = Arc::default();
        // A failed rules batch stops the server: its state already holds the
        // batch, so only a restart (which redoes it from staging) is safe.
        let (rules_failed, on_rules_failure) = oneshot::channel::<()>();
        // Sends that find a customer unreachable become consent changes,
        // recorded through ingest once it is up (below).
        let (updates, unreachable) = tokio::sync::mpsc::unbounded_channel();
        let (feed, rules_task) = if config.rules.enabled {
            // Rules are checked before the server answers (the port is
            // bound, nothing is served): a bad rule set stops the start. The state is rebuilt in the background, so intake answers
            // at once; what arrives meanwhile waits in the feed (and staging).
            let clock = live::RuleClock::parse(&config.rules.clock)?;
            let rules = live::load_rules(&config).await?;
            if config.messaging.enabled {
                live::load_templates(&config, &rules).await?;
            }
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let (config, root, gate, writer, metrics, updates, suppression) = (
                config.clone(),
                root.clone(),
                gate.clone(),
                writer.clone(),
                metrics.clone(),
                updates.clone(),
                privacy.suppression.clone(),
            );
            let task = tokio::spawn(async move {
                let result = async {
                    let (mut runner, dispatcher) = live::recover(
                        &config,
                        &root,
                        gate,
                        clock,
                        &metrics,
                        &writer,
                        live::Wiring {
                            updates: Some(updates),
                            ..Default::default()
                        },
                    )
                    .await?;
                    runner.engine.state.set_suppression(suppression);
                    live::run(live::Live {
                        runner,
                        dispatcher,
                        writer,
                        feed: rx,
                        interval: Duration::from_millis(config.rules.interval_ms.max(1)),
                        clock,
                        wall: kairos_core::time::Clock::system(),
                        metrics,
                    })
                    .await
                }
                .await;
                if let Err(e) = &result {
                    tracing::error!(error = %format!("{e:#}"), "rules stopped; shutting down so a restart redoes the batch");
                    let _ = rules_failed.send(());
                }
                result
            });
            (Some(tx), Some(task))
        } else {
            (None, None)
        };
        let (committer, commit_task) = Committer::start(
            log.clone(),
            config.ingest.group_commit_max_bytes,
            Duration::from_millis(config.ingest.group_commit_max_delay_ms),
            metrics.ingest.clone(),
            feed,
        );
        let mut publisher =
            Publisher::new(root.clone(), log, PublisherOptions::from_config(&config))
                .await
                .with_suppression(privacy.suppression.clone());
        if config.rules.enabled {
            publisher = publisher.with_gate(gate);
        }
        let (stop_publisher, stopped) = oneshot::channel();
        let interval = Duration::from_secs(config.publish.interval_secs.max(1));
        let compaction = Compaction::from_config(&config, &root);
        let publish_task = tokio::spawn(publish_loop(
            publisher,
            interval,
            compaction,
            (privacy.clone(), erase_now.clone()),
            backlog.clone(),
            metrics.clone(),
            stopped,
        ));

        let state = Arc::new(IngestState {
            normalizer: Normalizer::new(
                EventTypes::new(&config.events.mapping),
                config.ingest.max_event_bytes,
                config.ingest.max_future_hours,
            )
            .with_protected_traits(config.ingest.protected_traits.clone())
            .with_suppression(privacy.suppression.clone()),
            committer,
            metrics: metrics.ingest.clone(),
            access: WriteAccess {
                server_keys: config.ingest.write_keys.clone(),
                client_keys: config.ingest.client_keys.clone(),
                open_loopback: config.server.insecure_local,
            },
            limits: IngestLimits {
                max_body_bytes: config.ingest.max_body_bytes,
                max_batch_items: config.ingest.max_batch_items.max(1),
                max_import_lines: config.ingest.max_import_lines.max(1),
            },
            backlog: backlog.clone(),
            max_staged_bytes: config.ingest.max_staged_bytes,
        });
        drop(updates);
        // Holds an ingest handle until the delivery workers stop; they stop
        // after the committer drains, so it must not keep the committer alive:
        // a weak handle. A consent change that finds ingest gone is recorded
        // at the next start (delivery recovery re-reports `unreachable` rows).
        let forwarder = crate::callbacks::forward(Arc::downgrade(&state), unreachable);
        let callbacks = crate::callbacks::Callbacks::new(
            link_key.clone(),
            state.clone(),
            root.clone(),
            &config.messaging.public_url,
            config.messaging.channels.clone(),
        );
        let checks = Arc::new(crate::listen::RequestChecks {
            hostnames: config.server.hostnames.clone(),
            browser_origins: config.ingest.browser_origins.clone(),
        });
        let app = Router::new()
            .merge(crate::unsubscribe::router(link_key, state.clone()))
            .merge(crate::callbacks::router(callbacks))
            .merge(kairos_ingest::router(
                state,
                &config.ingest.browser_origins,
            )?)
            .merge(report_router(&config, &root)?)
            .merge(metrics_router(metrics, backlog, read_token.clone()))
            .merge(crate::privacy::router(
                privacy,
                read_token.clone(),
                erase_now,
            ))
            .route("/healthz", get(|| async { "ok\n" }))
            .layer(axum::middleware::from_fn_with_state(
                checks,
                crate::listen::check_requests,
            ))
            .layer(TraceLayer::new_for_http());

        let local = listener.local_addr()?;
        tracing::info!(addr = %local, data = %root.url, writer = %writer.0, "kairos listening");
        // Tests and scripts read this line to learn the port when asked for
        // :0; the port is open, and what arrives waits for `run`.
        println!("listening on http://{local}");
        Ok(Server {
            listener,
            app,
            limits,
            read_token,
            root,
            writer,
            on_rules_failure,
            commit_task,
            rules_task,
            forwarder,
            stop_publisher,
            publish_task,
        })
    }
}

/// `server.NAME` as a duration.
fn server_duration(name: &str, value: &str) -> anyhow::Result<Duration> {
    match kairos_core::time::parse_duration(value) {
        Ok(0) => anyhow::bail!("server.{name}: must be longer than 0"),
        Ok(s) => Ok(Duration::from_secs(s)),
        Err(e) => anyhow::bail!("server.{name}: {e} (e.g. \"10s\")"),
    }
}

/// `GET /metrics`: Prometheus text, behind the read token like the reports
/// (queue depths and rates tell an outsider about the business).
fn metrics_router(
    metrics: Arc<Metrics>,
    backlog: Arc<std::sync::atomic::AtomicU64>,
    token: Option<String>,
) -> Router {
    let token = Arc::new(token);
    Router::new()
        .route(
            "/metrics",
            get(move || async move {
                metrics
                    .publish
                    .staged_bytes
                    .set(backlog.load(std::sync::atomic::Ordering::Relaxed) as i64);
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            token,
            kairos_report::http::read_token_required,
        ))
}

/// `/api/...` and `/experiments...`: experiment reports over the same data root.
fn report_router(config: &Config, root: &DataRoot) -> anyhow::Result<Router> {
    let token = config.report.token.0.trim();
    let secs = |name: &str, value: &str| -> anyhow::Result<Duration> {
        kairos_core::time::parse_duration(value)
            .map(Duration::from_secs)
            .map_err(|e| anyhow::anyhow!("report.{name}: {e} (e.g. \"10s\")"))
    };
    let defaults = kairos_report::ReportOptions::from_config(config)?;
    let outcomes = Arc::new(kairos_report::outcomes::Outcomes::new(secs(
        "outcomes_max_age",
        &config.report.outcomes_max_age,
    )?));
    let every = secs("outcomes_refresh", &config.report.outcomes_refresh)?;
    if !every.is_zero() {
        tokio::spawn(refresh_outcomes(
            outcomes.clone(),
            root.clone(),
            kairos_report::outcomes::OutcomeKey::of(&defaults),
            every,
        ));
    }
    Ok(kairos_report::http::router(Arc::new(
        kairos_report::http::ReportState {
            root: root.clone(),
            rules_dir: config.rules.dir.clone(),
            defaults,
            token: (!token.is_empty()).then(|| token.to_string()),
            limit: kairos_report::http::ReportLimit::new(
                config.report.max_concurrent,
                secs("queue_timeout", &config.report.queue_timeout)?,
            ),
            outcomes,
            global_control_percent: config.experiments.global_control_percent,
        },
    )))
}

/// Keeps the reports' outcomes up to date as data arrives, so a report
/// finds little or nothing left to recompute. Stops with the process; a
/// refresh cut short leaves the last state intact.
async fn refresh_outcomes(
    outcomes: Arc<kairos_report::outcomes::Outcomes>,
    root: DataRoot,
    key: kairos_report::outcomes::OutcomeKey,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = outcomes.refresh(&root, &key).await {
            tracing::warn!(error = %e, "refreshing the report outcomes failed (check that the data root is writable and has space); it is retried next interval");
        }
    }
}

/// Staged bytes that trigger a publish before the interval is up.
const EARLY_PUBLISH_BYTES: u64 = 256 << 20;

/// Compaction on a schedule, run by the publish loop between publishes so
/// it never races a publish into the same hour.
struct Compaction {
    root: DataRoot,
    every: Duration,
    row_group_rows: usize,
}

impl Compaction {
    fn from_config(config: &Config, root: &DataRoot) -> Option<Compaction> {
        // Object stores cannot swap an hour's files atomically (see
        // kairos_storage::compact), so only local roots are compacted.
        (config.publish.compact_every_secs > 0 && root.local_dir.is_some()).then(|| Compaction {
            root: root.clone(),
            every: Duration::from_secs(config.publish.compact_every_secs),
            row_group_rows: config.publish.row_group_rows,
        })
    }

    async fn run(&self) {
        // An hour is merged once it ended an hour ago: late events still
        // arrive into it as new files, and the next pass merges those.
        match crate::compact::run(&self.root, kairos_core::time::HOUR_US, self.row_group_rows).await
        {
            Ok(s) if s.hours > 0 => tracing::info!(
                hours = s.hours,
                files = s.files_before,
                rows = s.rows,
                moved_back = s.moved_back,
                "compacted"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "compaction failed; the tables are unchanged and it is retried next time")
            }
        }
    }
}

async fn publish_loop(
    mut publisher: Publisher,
    interval: Duration,
    compaction: Option<Compaction>,
    (privacy, erase_now): (crate::privacy::Privacy, Arc<tokio::sync::Notify>),
    backlog: Arc<std::sync::atomic::AtomicU64>,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) -> anyhow::Result<()> {
    // Publish every `interval`, or sooner once EARLY_PUBLISH_BYTES are
    // staged: under heavy load that keeps files large and the backlog far
    // below ingest.max_staged_bytes, so backpressure is the exception.
    let mut tick = tokio::time::interval(interval.min(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_publish: Option<std::time::Instant> = None;
    let mut last_compaction = std::time::Instant::now();
    let mut last_retention: Option<std::time::Instant> = None;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = erase_now.notified() => false,
            _ = &mut stop => true,
        };
        // An erasure waits for what is staged: publish it now, not at the
        // next interval.
        let erasing = match privacy.pending().await {
            Ok(p) => !p.is_empty(),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reading pending erasures failed; retried next second");
                false
            }
        };
        let due = erasing
            || last_publish.is_none_or(|t| t.elapsed() >= interval)
            || backlog.load(std::sync::atomic::Ordering::Relaxed) >= EARLY_PUBLISH_BYTES;
        if !due && !last {
            continue;
        }
        last_publish = Some(std::time::Instant::now());
        let started = std::time::Instant::now();
        match publisher.publish().await {
            Ok(s) if s.items > 0 || s.redone > 0 => {
                metrics
                    .publish
                    .rows
                    .inc_by((s.events + s.profiles + s.changes + s.identities) as u64);
                metrics.publish.duplicates.inc_by(s.duplicates as u64);
                metrics.publish.lag_seconds.set(s.oldest_age.as_secs_f64());
                tracing::info!(
                    segments = s.segments,
                    items = s.items,
                    events = s.events,
                    profiles = s.profiles,
                    changes = s.changes,
                    identities = s.identities,
                    duplicates = s.duplicates,
                    files = s.files,
                    redone = s.redone,
                    ms = started.elapsed().as_millis() as u64,
                    "published"
                );
            }
            Ok(_) => {}
            Err(e) if last => {
                return Err(e).context(
                    "final publish failed; staged events are kept and publish on the next start",
                );
            }
            Err(e) => {
                metrics.ingest.store_error("publish");
                tracing::error!(error = %e, "publish failed; staged events are kept and retried next interval");
            }
        }
        if last {
            return Ok(());
        }
        if erasing {
            erase(&privacy, &mut publisher).await;
        }
        if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
            last_retention = Some(std::time::Instant::now());
            match privacy.enforce_retention().await {
                Ok((0, _, 0)) => {}
                Ok((files, rows, outbox)) => {
                    tracing::info!(files, rows, outbox, "retention: old data dropped")
                }
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "retention failed; retried in an hour")
                }
            }
        }
        if let Some(c) = &compaction
            && last_compaction.elapsed() >= c.every
        {
            c.run().await;
            last_compaction = std::time::Instant::now();
        }
    }
}

/// How often `[retention]` is enforced (and once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Works the pending erasures between two publishes (so no publish writes
/// a file an erasure rewrites). A failure is retried at the next tick.
async fn erase(privacy: &crate::privacy::Privacy, publisher: &mut Publisher) {
    match privacy.run_pending().await {
        Ok(done) => {
            for (id, progress) in done {
                match progress {
                    crate::privacy::Progress::Finished(a) => {
                        // Its merged profiles may hold the person.
                        publisher.reload_profiles();
                        let rows: usize = a.removed.tables.values().map(|(_, r)| r).sum();
                        tracing::info!(request = %id, rows, outbox_files = a.removed.outbox_files, "erasure finished");
                    }
                    crate::privacy::Progress::Waiting(why) => {
                        tracing::info!(request = %id, %why, "erasure waiting");
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "erasure failed; retried at the next tick")
        }
    }
}

async fn shutdown_signal(rules_failed: oneshot::Receiver<()>) {
    // Without rules the sender is dropped at once: that is not a failure.
    let rules_failed = async {
        if rules_failed.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with Ctrl-C for a graceful shutdown");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
        _ = rules_failed => {},
    }
    tracing::info!("shutdown requested; finishing requests and publishing");
}
