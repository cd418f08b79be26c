//! Erasure requests (GDPR Art. 17), shared by `POST /api/privacy/erase`
//! (the shape of Segment's Regulations API) and the CLI's `kairos forget`
//! and `kairos unsuppress` (`pipeline/cli/src/forget.rs`).
//!
//! A request is durable before anything else happens: its ids are added
//! to the suppression list (from then on ingest and the publisher drop
//! every call naming them) and the request is written to
//! `_kairos/privacy/requests/` (mode 0600: it names the person until it is
//! done). Then, in `kairos forget` or in the server's publish loop:
//!
//! 1. the ids linked below them in `identities/` are added (and suppressed);
//! 2. while a staging segment or a delivery in flight still mentions them,
//!    the request waits (the next publish takes the segment, dropping them);
//! 3. the outbox files that mention an id or one of its contact addresses
//!    are deleted, every table file holding their rows is rewritten
//!    without them ([`kairos_storage::privacy::erase_rows`]), the report
//!    outcomes (rebuilt on the next report) and swapped-out compaction
//!    folders are deleted;
//! 4. an audit record with no personal data (keyed hashes of the ids,
//!    when, and per table how many files and rows) replaces the request.
//!
//! Every step can be repeated, so a crash anywhere is repaired by running
//! the request again: `kairos serve` and `kairos forget` both finish
//! pending requests first.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use serde::{Deserialize, Serialize};

use kairos_core::Config;
use kairos_storage::DataRoot;
use kairos_storage::privacy::{self as p, EraseStats, EraseTable, Suppression};
use kairos_storage::tables as t;

/// Pending requests (they name the person: mode 0600).
pub const REQUESTS_DIR: &str = "_kairos/privacy/requests";
/// Finished requests' audit records (no personal data).
pub const AUDIT_DIR: &str = "_kairos/privacy/audit";
/// Ids per request at most.
pub const MAX_IDS: usize = 1000;

/// A pending erasure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// `erase-<µs>-<random>`.
    pub id: String,
    /// The ids asked for.
    pub ids: Vec<String>,
    /// RFC 3339.
    pub requested_at: String,
    /// Contact addresses found at the first run (the profiles holding them
    /// may be gone by a resumed run).
    #[serde(default)]
    pub contacts: Vec<String>,
}

/// What a finished erasure did; holds no personal data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Audit {
    /// The request.
    pub request: String,
    /// RFC 3339.
    pub requested_at: String,
    /// RFC 3339.
    pub finished_at: String,
    /// Keyed hashes (the suppression list's) of every id erased.
    pub subjects: Vec<String>,
    /// Ids asked for, and linked ids found.
    pub ids_asked: usize,
    /// Linked ids (anonymous ids, aliases) erased with them.
    pub ids_linked: usize,
    /// Per table, files rewritten and rows removed; files deleted.
    pub removed: EraseStats,
}

/// Where a request stands.
#[derive(Debug)]
pub enum Progress {
    /// Done; its audit record.
    Finished(Box<Audit>),
    /// Not yet, and why.
    Waiting(String),
}

/// The erasure of one data root, as a server or a command holds it.
#[derive(Clone)]
pub struct Privacy {
    /// The data root.
    pub root: DataRoot,
    /// The suppression list every stage checks.
    pub suppression: Arc<Suppression>,
    /// Rows per row group in rewritten files.
    pub row_group_rows: usize,
    /// `[retention]` of the tables.
    pub retention: Vec<p::Retention>,
    /// `retention.outbox`, µs.
    pub outbox_max_age_us: Option<i64>,
}

/// `[retention]` as rules: (table rules, outbox age µs).
pub fn retention_rules(config: &Config) -> anyhow::Result<(Vec<p::Retention>, Option<i64>)> {
    let r = &config.retention;
    let age = |name: &str, value: &str| -> anyhow::Result<Option<i64>> {
        if value.trim().is_empty() {
            return Ok(None);
        }
        match kairos_core::time::parse_duration(value) {
            Ok(0) => anyhow::bail!("retention.{name}: must be longer than 0 (empty keeps forever)"),
            Ok(s) if s > 100 * 366 * 86_400 => {
                anyhow::bail!(
                    "retention.{name}: {value:?} is over a century; leave it empty to keep forever"
                )
            }
            Ok(s) => Ok(Some(s as i64 * 1_000_000)),
            Err(e) => anyhow::bail!("retention.{name}: {e} (e.g. \"400d\")"),
        }
    };
    // Erasure finds a person's anonymous history through identity links;
    // links dropped before the events they join would leave those events
    // behind, unreachable by a later erasure.
    let (events_age, links_age) = (age("events", &r.events)?, age("identities", &r.identities)?);
    if let Some(links) = links_age
        && events_age.is_none_or(|events| links < events)
    {
        anyhow::bail!(
            "retention.identities ({:?}) is shorter than retention.events ({:?}): erasure finds anonymous events through identity links, so keep links at least as long as events",
            r.identities,
            if r.events.trim().is_empty() {
                "forever"
            } else {
                r.events.as_str()
            }
        );
    }
    let tables = erase_tables();
    let table = |name: &str| tables.iter().find(|t| t.name == name).cloned();
    let mut rules = Vec::new();
    for (name, max_age, keep) in [
        (
            t::EVENTS,
            events_age,
            Some(("event_type", &kairos_rules::state::OPT_OUT_EVENTS[..])),
        ),
        (
            t::PROFILE_CHANGES,
            age("profile_changes", &r.profile_changes)?,
            None,
        ),
        (t::IDENTITIES, links_age, None),
    ] {
        if let (Some(max_age_us), Some(table)) = (max_age, table(name)) {
            rules.push(p::Retention {
                table,
                max_age_us,
                keep,
            });
        }
    }
    Ok((rules, age("outbox", &r.outbox)?))
}

/// The tables erasure rewrites, and the columns naming a customer.
pub fn erase_tables() -> Vec<EraseTable> {
    crate::tables::all()
        .iter()
        .map(crate::tables::Table::erase)
        .collect()
}

/// Why a list of ids cannot be erased.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIds {
    /// None given.
    #[error("no ids given")]
    Empty,
    /// More than [`MAX_IDS`].
    #[error("{0} ids; at most {MAX_IDS} per request")]
    TooMany(usize),
    /// Empty or longer than ingest accepts.
    #[error("id {0:?}: must be 1 to 1024 bytes")]
    Length(String),
    /// A control character (never in an id ingest accepted).
    #[error("id {0:?}: contains a control character")]
    Control(String),
}

/// Ids an erasure may name: 1 to [`MAX_IDS`] of them, each as ingest
/// would accept it.
fn validate_ids(ids: &[String]) -> Result<(), InvalidIds> {
    if ids.is_empty() {
        return Err(InvalidIds::Empty);
    }
    if ids.len() > MAX_IDS {
        return Err(InvalidIds::TooMany(ids.len()));
    }
    for id in ids {
        if id.is_empty() || id.len() > kairos_ingest::calls::MAX_ID_BYTES {
            return Err(InvalidIds::Length(id.clone()));
        }
        if id.chars().any(char::is_control) {
            return Err(InvalidIds::Control(id.clone()));
        }
    }
    Ok(())
}

impl Privacy {
    /// The erasure and retention of `root` (loads the suppression list).
    pub async fn open(root: &DataRoot, config: &Config) -> anyhow::Result<Privacy> {
        let (retention, outbox_max_age_us) = retention_rules(config)?;
        Ok(Privacy {
            root: root.clone(),
            suppression: Suppression::load(root)
                .await
                .context("loading the suppression list")?,
            row_group_rows: config.publish.row_group_rows,
            retention,
            outbox_max_age_us,
        })
    }

    /// Drops what `[retention]` says is too old; returns (files changed,
    /// rows removed, outbox files deleted).
    pub async fn enforce_retention(&self) -> anyhow::Result<(usize, usize, usize)> {
        let now = kairos_core::time::now_us();
        let by_table =
            p::enforce_retention(&self.root, &self.retention, now, self.row_group_rows).await?;
        let outbox = match self.outbox_max_age_us {
            Some(age) => {
                p::expire_dated(&self.root, kairos_messaging::outbox::OUTBOX_DIR, age, now).await?
            }
            None => 0,
        };
        let files = by_table.values().map(|(f, _)| f).sum();
        let rows = by_table.values().map(|(_, r)| r).sum();
        Ok((files, rows, outbox))
    }

    /// Records an erasure of `ids`: suppressed at once, erased by
    /// [`Privacy::run_pending`]. Returns the request id.
    pub async fn submit(&self, ids: Vec<String>) -> anyhow::Result<String> {
        validate_ids(&ids)?;
        let set: BTreeSet<String> = ids.iter().cloned().collect();
        self.suppression.add(&self.root, &set).await?;
        let now = chrono::Utc::now();
        let id = format!(
            "erase-{}-{}",
            now.timestamp_micros(),
            kairos_core::secret::random_token(4)
        );
        let request = Request {
            id: id.clone(),
            ids: set.into_iter().collect(),
            requested_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            contacts: Vec::new(),
        };
        self.root
            .put_secret(
                &request_path(&id),
                Bytes::from(serde_json::to_vec(&request)?),
            )
            .await?;
        Ok(id)
    }

    /// Every pending request, oldest first.
    pub async fn pending(&self) -> anyhow::Result<Vec<Request>> {
        let mut out = Vec::new();
        for meta in self.root.list(&ObjectPath::from(REQUESTS_DIR)).await? {
            let Some(bytes) = self.root.read_secret(&meta.location).await? else {
                continue;
            };
            out.push(serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is damaged; restore it or submit the erasure again",
                    meta.location
                )
            })?);
        }
        out.sort_by(|a: &Request, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Works every pending request as far as it can go now.
    pub async fn run_pending(&self) -> anyhow::Result<Vec<(String, Progress)>> {
        let mut out = Vec::new();
        for request in self.pending().await? {
            let id = request.id.clone();
            let progress = self
                .run(request)
                .await
                .with_context(|| format!("erasure {id}"))?;
            out.push((id, progress));
        }
        Ok(out)
    }

    async fn run(&self, mut request: Request) -> anyhow::Result<Progress> {
        let asked: BTreeSet<String> = request.ids.iter().cloned().collect();
        let ids = p::linked_ids(&self.root, &asked).await?;
        self.suppression.add(&self.root, &ids).await?;
        if request.contacts.is_empty() {
            request.contacts = p::contact_values(&self.root, &ids)
                .await?
                .into_iter()
                .collect();
            // Kept with the request: a resumed run may find the profiles gone.
            let path = request_path(&request.id);
            self.root
                .replace_secret(&path, Bytes::from(serde_json::to_vec(&request)?))
                .await?;
        }
        for (dir, what) in [
            (
                kairos_storage::staging::STAGING_DIR,
                "staged calls not yet published (the next publish drops them)",
            ),
            (
                kairos_messaging::delivery::INTENTS_DIR,
                "a delivery in flight (it finishes within seconds)",
            ),
        ] {
            if p::any_mentioning(&self.root, dir, &ids).await? {
                return Ok(Progress::Waiting(format!("waiting for {what}")));
            }
        }
        let mut removed = EraseStats::default();
        let mut needles = ids.clone();
        needles.extend(request.contacts.iter().cloned());
        removed.outbox_files =
            p::delete_mentioning(&self.root, kairos_messaging::outbox::OUTBOX_DIR, &needles)
                .await?;
        p::erase_rows(
            &self.root,
            &erase_tables(),
            &ids,
            self.row_group_rows,
            &mut removed,
        )
        .await?;
        removed.derived_files += p::delete_all(&self.root, kairos_report::outcomes::DIR).await?;
        let root = self.root.clone();
        removed.derived_files +=
            tokio::task::spawn_blocking(move || kairos_storage::compact::purge_swapped_out(&root))
                .await
                .context("purging compaction leftovers")??;

        let audit = Audit {
            request: request.id.clone(),
            requested_at: request.requested_at.clone(),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            subjects: ids.iter().map(|i| self.suppression.hash(i)).collect(),
            ids_asked: asked.len(),
            ids_linked: ids.len() - asked.len(),
            removed,
        };
        self.root
            .store
            .put(
                &audit_path(&request.id),
                Bytes::from(serde_json::to_vec_pretty(&audit)?).into(),
            )
            .await?;
        self.root.store.delete(&request_path(&request.id)).await?;
        Ok(Progress::Finished(Box::new(audit)))
    }

    /// A request's state: pending, finished (its audit), or unknown.
    pub async fn status(&self, id: &str) -> anyhow::Result<Option<Progress>> {
        if id.contains(['/', '\\']) || id.contains("..") {
            return Ok(None);
        }
        if let Some(b) = self.root.read(&audit_path(id)).await? {
            return Ok(Some(Progress::Finished(Box::new(serde_json::from_slice(
                &b,
            )?))));
        }
        if self.root.read_secret(&request_path(id)).await?.is_some() {
            return Ok(Some(Progress::Waiting("pending".into())));
        }
        Ok(None)
    }
}

fn request_path(id: &str) -> ObjectPath {
    ObjectPath::from(format!("{REQUESTS_DIR}/{id}.json"))
}

fn audit_path(id: &str) -> ObjectPath {
    ObjectPath::from(format!("{AUDIT_DIR}/{id}.json"))
}

/// `POST /api/privacy/erase` and `GET /api/privacy/erase/{id}`, behind the
/// read token (the operator's credential). The body follows Segment's
/// Regulations API: `{"regulationType": "SUPPRESS_WITH_DELETE",
/// "subjectType": "USER_ID" | "ANONYMOUS_ID", "subjectIds": [...]}`;
/// the answer `{"data": {"regulateId": ...}}`. `wake` asks the publish
/// loop to work the request at once.
pub fn router(
    privacy: Privacy,
    token: Option<String>,
    wake: Arc<tokio::sync::Notify>,
) -> axum::Router {
    use axum::routing::{get, post};
    let state = Arc::new((privacy, wake));
    let token = Arc::new(token);
    axum::Router::new()
        .route("/api/privacy/erase", post(erase))
        .route("/api/privacy/erase/{id}", get(erase_status))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            token,
            kairos_report::http::read_token_required,
        ))
}

type Shared = Arc<(Privacy, Arc<tokio::sync::Notify>)>;

fn answer(status: axum::http::StatusCode, message: impl Into<String>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (
        status,
        axum::Json(serde_json::json!({"error": message.into()})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EraseBody {
    #[serde(default)]
    regulation_type: Option<String>,
    #[serde(default)]
    subject_type: Option<String>,
    subject_ids: Vec<String>,
}

async fn erase(
    axum::extract::State(s): axum::extract::State<Shared>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    let body: EraseBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                format!("body: {e}; send {{\"subjectIds\": [\"user-1\"]}}"),
            );
        }
    };
    if let Some(t) = body.regulation_type.as_deref()
        && t != "SUPPRESS_WITH_DELETE"
    {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("regulationType {t:?}: only SUPPRESS_WITH_DELETE is supported"),
        );
    }
    if let Some(t) = body.subject_type.as_deref()
        && !matches!(t, "USER_ID" | "ANONYMOUS_ID")
    {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("subjectType {t:?}: use USER_ID or ANONYMOUS_ID"),
        );
    }
    if let Err(e) = validate_ids(&body.subject_ids) {
        return answer(StatusCode::BAD_REQUEST, format!("subjectIds: {e}"));
    }
    let (privacy, wake) = &*s;
    match privacy.submit(body.subject_ids).await {
        Ok(id) => {
            wake.notify_one();
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"data": {"regulateId": id}})),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "recording an erasure failed");
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("could not record the erasure ({e:#}); retry"),
            )
        }
    }
}

async fn erase_status(
    axum::extract::State(s): axum::extract::State<Shared>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    match s.0.status(&id).await {
        Ok(Some(Progress::Finished(a))) => axum::Json(serde_json::json!({
            "data": {"regulateId": id, "overallStatus": "FINISHED", "audit": a}
        }))
        .into_response(),
        Ok(Some(Progress::Waiting(_))) => axum::Json(serde_json::json!({
            "data": {"regulateId": id, "overallStatus": "RUNNING"}
        }))
        .into_response(),
        Ok(None) => answer(StatusCode::NOT_FOUND, format!("no erasure {id:?}")),
        Err(e) => answer(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(retention: &str) -> anyhow::Result<(Vec<p::Retention>, Option<i64>)> {
        retention_rules(&Config::from_toml(&format!("[retention]\n{retention}"))?)
    }

    #[test]
    fn identity_links_outlive_the_events_they_join() {
        let (tables, outbox) = rules("events = \"30d\"\nidentities = \"400d\"\noutbox = \"7d\"")
            .expect("links kept longer than events");
        assert_eq!(tables.len(), 2);
        assert_eq!(outbox, Some(7 * 86_400 * 1_000_000));
        let shorter = rules("events = \"400d\"\nidentities = \"30d\"").unwrap_err();
        assert!(
            shorter.to_string().contains("keep links at least as long"),
            "{shorter}"
        );
        let events_forever = rules("identities = \"30d\"").unwrap_err();
        assert!(
            events_forever.to_string().contains("\"forever\""),
            "{events_forever}"
        );
        assert!(rules("events = \"0d\"").is_err());
    }
}
