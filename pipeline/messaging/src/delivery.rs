//! Delivery: from the policy's `send` decisions to provider calls, with an
//! intent log so a crash never silently sends twice, and `deliveries/`.
//!
//! Two halves, so a slow provider never holds up the micro-batch loop:
//!
//! - [`Messaging`], a stage of each durable batch, queues every `send`
//!   decision (dropping those cancelled later), and when one is due renders
//!   it (template, profile, computed traits, the firing's columns) and hands
//!   it to the channel's worker. A message that cannot be rendered or has no
//!   address is recorded as failed in the batch's own `deliveries/` file.
//! - [`Dispatcher`] runs one worker per channel. A worker takes the messages
//!   that are waiting (up to [`CHUNK`]), writes an intent file listing them,
//!   sends them (rate-limited, retried with exponential backoff and jitter),
//!   writes every attempt to a `deliveries/` file, then deletes the intent.
//!
//! On start, [`recover`] reads `deliveries/` (what is finished), leftover
//! intents (sends in doubt: started, outcome unknown) and `sends/` (what
//! should go), and re-queues the rest. A send in doubt is retried
//! (at-least-once) or recorded as `in_doubt_dropped` (at-most-once) per the
//! channel's setting; the outbox is idempotent (same file), so it retries.

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use object_store::ObjectStoreExt as _;
use object_store::path::Path as ObjectPath;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use kairos_policy::Channel;
use kairos_policy::stage::{Decision, SendRow};
use kairos_policy::tables::Decided;
use kairos_rules::runner::{BatchStage, Outputs};
use kairos_rules::state::State;
use kairos_rules::{Rule, TickReport};
use kairos_storage::tables::read_parquet;
use kairos_storage::{DataRoot, StorageError, columns};

use crate::callbacks::StatusUpdate;
use crate::channel::{Adapter, Failure, Outgoing};
use crate::limits;
use crate::template::Templates;

/// `deliveries/`: every attempt and final status.
pub const DELIVERIES: &str = "deliveries";
/// Where intents wait until their deliveries are written.
pub const INTENTS_DIR: &str = "_kairos/deliveries/intents";
/// Messages a worker takes at once (one intent file, one deliveries file).
pub const CHUNK: usize = 256;

/// `deliveries/` schema.
pub static DELIVERIES_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let ts = |n: &str| {
        Field::new(
            n,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )
    };
    Arc::new(Schema::new(vec![
        Field::new("send_id", DataType::Utf8, false),
        Field::new("rule", DataType::Utf8, false),
        Field::new("step", DataType::Int64, false),
        Field::new("customer_id", DataType::Utf8, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("provider", DataType::Utf8, false),
        Field::new("attempt", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("provider_message_id", DataType::Utf8, true),
        Field::new("error", DataType::Utf8, true),
        Field::new("latency_ms", DataType::Float64, false),
        ts("at"),
    ]))
});

/// One row of `deliveries/`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    /// The send.
    pub send_id: String,
    /// Rule.
    pub rule: String,
    /// Step.
    pub step: u32,
    /// Customer.
    pub customer_id: String,
    /// Channel.
    pub channel: Channel,
    /// Provider.
    pub provider: String,
    /// 1, 2, …; 0 for rows written without a provider call.
    pub attempt: u32,
    /// `sent`, `retry` (this attempt failed, another follows), `failed`
    /// (final), `unreachable` (final: the provider says the address is dead
    /// or the recipient blocked us; consent is withdrawn), `in_doubt_dropped`.
    pub status: &'static str,
    /// The provider's message id.
    pub provider_message_id: Option<String>,
    /// The provider's reason.
    pub error: Option<String>,
    /// How long the call took, ms.
    pub latency_ms: f64,
    /// When, µs.
    pub at: i64,
}

impl DeliveryRow {
    fn is_final(&self) -> bool {
        self.status != "retry"
    }
}

/// Rows of `deliveries/`.
pub fn deliveries_batch(rows: &[DeliveryRow]) -> Result<RecordBatch, ArrowError> {
    let s = |f: &dyn Fn(&DeliveryRow) -> Option<&str>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<StringArray>())
    };
    let cols: Vec<ArrayRef> = vec![
        s(&|r| Some(&r.send_id)),
        s(&|r| Some(&r.rule)),
        Arc::new(
            rows.iter()
                .map(|r| i64::from(r.step))
                .collect::<Int64Array>(),
        ),
        s(&|r| Some(&r.customer_id)),
        s(&|r| Some(r.channel.as_str())),
        s(&|r| Some(&r.provider)),
        Arc::new(
            rows.iter()
                .map(|r| i64::from(r.attempt))
                .collect::<Int64Array>(),
        ),
        s(&|r| Some(r.status)),
        s(&|r| r.provider_message_id.as_deref()),
        s(&|r| r.error.as_deref()),
        Arc::new(rows.iter().map(|r| r.latency_ms).collect::<Float64Array>()),
        Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|r| r.at).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
    ];
    RecordBatch::try_new(DELIVERIES_SCHEMA.clone(), cols)
}

/// A firing's context, as the engine wrote it: a JSON object.
fn firing_context(text: &str) -> Result<Map<String, Value>, StorageError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(corrupt_firing(format!(
            "a context is not an object: {other}"
        ))),
        Err(e) => Err(corrupt_firing(format!("a context is not JSON: {e}"))),
    }
}

fn corrupt_firing(reason: String) -> StorageError {
    StorageError::Schema {
        table: kairos_rules::firings::FIRINGS.into(),
        reason,
    }
}

/// When a send's outcome is unknown after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InDoubt {
    /// Send again (at-least-once).
    Retry,
    /// Record `in_doubt_dropped` (at-most-once).
    Drop,
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Attempts per message, first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time, with jitter.
    pub base_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Per channel: messages per second (none: unlimited).
    pub rate_per_second: HashMap<Channel, f64>,
    /// Per channel: how long one attempt may take before it counts as a
    /// retryable timeout (none: [`DEFAULT_ATTEMPT_TIMEOUT`]). A guard over
    /// the adapter's own timeouts (HTTP, SMTP), for what they do not cover.
    pub attempt_timeout: HashMap<Channel, Duration>,
    /// Per channel: what a crash leaves in doubt becomes.
    pub in_doubt: HashMap<Channel, InDoubt>,
    /// Base URL of this server, for unsubscribe links.
    pub public_url: String,
    /// Key signing unsubscribe links.
    pub link_key: Vec<u8>,
    /// Longest SMS, in segments.
    pub max_sms_segments: usize,
    /// Where a send that finds its customer unreachable (dead token, hard
    /// bounce, recipient blocked) reports it, to withdraw consent; none:
    /// only logged.
    pub status_updates: Option<mpsc::UnboundedSender<StatusUpdate>>,
    /// The clock delivery rows are stamped with: the machine's, or a
    /// simulation's.
    pub wall: kairos_core::time::Clock,
    /// Names this process's intent and deliveries files; unique per
    /// process sharing the data root (the server's staging writer id). A
    /// restart under the same name would overwrite the files of the run
    /// before it.
    pub instance: String,
}

impl Settings {
    /// What a send in doubt on `channel` becomes: `messaging.in_doubt`,
    /// whose default is `retry` (at-least-once) for every channel.
    pub fn in_doubt_for(&self, channel: Channel) -> InDoubt {
        self.in_doubt
            .get(&channel)
            .copied()
            .unwrap_or(InDoubt::Retry)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_attempts: 5,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(60),
            rate_per_second: HashMap::default(),
            attempt_timeout: HashMap::default(),
            in_doubt: HashMap::default(),
            public_url: "http://127.0.0.1:8080".into(),
            link_key: Vec::new(),
            max_sms_segments: 3,
            status_updates: None,
            wall: kairos_core::time::Clock::system(),
            instance: format!("{:016x}", rand::random::<u64>()),
        }
    }
}

/// A signed token naming (customer, channel): the unsubscribe link's.
pub fn unsubscribe_token(key: &[u8], customer_id: &str, channel: Channel) -> String {
    crate::callbacks::sign_fields(
        key,
        crate::callbacks::Purpose::Unsubscribe,
        &[customer_id, channel.as_str()],
    )
}

/// The key signing unsubscribe links: `configured`, else the one kept in
/// the data root (made once), so links stay valid across restarts.
pub async fn link_key(root: &DataRoot, configured: &str) -> Result<Vec<u8>, StorageError> {
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    let path = ObjectPath::from("_kairos/link-key");
    if let Some(bytes) = root.read_secret(&path).await? {
        return Ok(bytes.to_vec());
    }
    let key = kairos_core::secret::random_token(32);
    root.put_secret(&path, Bytes::from(key.clone())).await?;
    Ok(key.into_bytes())
}

/// The (customer, channel) of a token, if its signature holds.
pub fn verify_unsubscribe_token(key: &[u8], token: &str) -> Option<(String, Channel)> {
    let f = crate::callbacks::verify_fields(key, crate::callbacks::Purpose::Unsubscribe, token, 2)?;
    Some((f[0].clone(), Channel::parse(&f[1])?))
}

/// Templates of a rule: (variant or step) -> template name.
#[derive(Debug, Clone, Default)]
struct RuleTemplates {
    /// Transactional messages need no marketing consent.
    transactional: bool,
    template: String,
    variants: HashMap<String, String>,
    steps: HashMap<u32, String>,
}

/// A `send` decision waiting for its time.
#[derive(Debug, Clone)]
struct Job {
    row: SendRow,
}

/// The batch stage: queues `send` decisions and hands due ones, rendered,
/// to the channel workers.
pub struct Messaging {
    templates: Arc<Templates>,
    rules: HashMap<String, RuleTemplates>,
    settings: Settings,
    queue: BTreeMap<(i64, String), Job>,
    queued: HashMap<String, i64>,
    /// Firing columns by (rule, customer, key).
    contexts: HashMap<(String, String, String), Map<String, Value>>,
    finished: HashSet<String>,
    workers: HashMap<Channel, mpsc::UnboundedSender<Outgoing>>,
}

impl Messaging {
    /// A stage for `rules`, handing messages to `dispatcher`'s workers.
    pub fn new(
        rules: &[Rule],
        templates: Arc<Templates>,
        settings: Settings,
        dispatcher: &Dispatcher,
    ) -> Messaging {
        let rules = rules
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    RuleTemplates {
                        transactional: r.transactional,
                        template: r.template.clone(),
                        variants: r
                            .variants
                            .iter()
                            .filter_map(|v| Some((v.name.clone(), v.template.clone()?)))
                            .collect(),
                        steps: r
                            .steps
                            .iter()
                            .map(|s| (s.number, s.template.clone()))
                            .collect(),
                    },
                )
            })
            .collect();
        Messaging {
            templates,
            rules,
            settings,
            queue: BTreeMap::new(),
            queued: HashMap::default(),
            contexts: HashMap::default(),
            finished: HashSet::default(),
            workers: dispatcher.senders(),
        }
    }

    /// Messages waiting for their time.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    fn accept(&mut self, row: &SendRow) {
        match row.decision {
            Decision::Send if !self.finished.contains(&row.send_id) => {
                let at = row.send_at.unwrap_or(row.decided_at);
                if let Some(old) = self.queued.insert(row.send_id.clone(), at) {
                    self.queue.remove(&(old, row.send_id.clone()));
                }
                self.queue
                    .insert((at, row.send_id.clone()), Job { row: row.clone() });
            }
            Decision::Cancelled => {
                if let Some(at) = self.queued.remove(&row.send_id) {
                    self.queue.remove(&(at, row.send_id.clone()));
                }
            }
            _ => {}
        }
    }

    fn template_of(&self, row: &SendRow) -> Option<String> {
        let t = self.rules.get(&row.rule)?;
        if row.step > 0 {
            return t.steps.get(&row.step).cloned();
        }
        Some(
            row.variant
                .as_ref()
                .and_then(|v| t.variants.get(v))
                .unwrap_or(&t.template)
                .clone(),
        )
    }

    /// Renders and addresses a due send.
    /// Whether the customer still lets `row` go on `channel`, by their
    /// traits and opt-out events as of now.
    fn consent_now(
        &self,
        row: &SendRow,
        channel: Channel,
        state: &State,
    ) -> Result<(), kairos_policy::NoChannel> {
        let transactional = self.rules.get(&row.rule).is_some_and(|r| r.transactional);
        let mut consent = state
            .traits(&row.customer_id)
            .map(kairos_policy::Consent::from_traits)
            .unwrap_or_default();
        for e in state.opt_outs(&row.customer_id) {
            consent.apply_event(e);
        }
        consent
            .choose(Some(channel), None, transactional)
            .map(|_| ())
    }

    fn prepare(&self, row: &SendRow, state: &State) -> Result<Outgoing, String> {
        let channel = row.channel.ok_or("no channel chosen")?;
        let name = self
            .template_of(row)
            .ok_or_else(|| format!("rule {} is not loaded", row.rule))?;
        let traits = state.traits(&row.customer_id).cloned().unwrap_or_default();
        let address = |k: &str| traits.get(k).and_then(Value::as_str).map(str::to_string);
        let to = match channel {
            Channel::Email => address("email"),
            Channel::Sms | Channel::Whatsapp => address("phone"),
            Channel::Push => address("push_token"),
            Channel::Webhook => Some(String::new()),
        }
        .ok_or_else(|| format!("no_address:{}", channel.as_str()))?;
        let base = self.settings.public_url.trim_end_matches('/');
        let unsubscribe_url = (channel != Channel::Webhook).then(|| {
            format!(
                "{base}/u/{}",
                unsubscribe_token(&self.settings.link_key, &row.customer_id, channel)
            )
        });
        let reference = crate::callbacks::reference(
            &self.settings.link_key,
            &row.customer_id,
            channel,
            &row.send_id,
        );
        let mut ctx = self
            .contexts
            .get(&(
                row.rule.clone(),
                row.customer_id.clone(),
                row.dedupe_key.clone(),
            ))
            .cloned()
            .unwrap_or_default();
        ctx.insert("profile".into(), Value::Object(traits));
        ctx.insert(
            "customer".into(),
            Value::Object(crate::computed_traits(state, &row.customer_id)?),
        );
        ctx.insert(
            "message".into(),
            serde_json::json!({
                "rule": row.rule, "step": row.step, "arm": row.arm.as_str(),
                "variant": row.variant, "channel": channel.as_str(),
                "send_id": row.send_id, "unsubscribe_url": unsubscribe_url,
            }),
        );
        let rendered = self.templates.render(&name, channel.as_str(), &ctx)?;
        match channel {
            Channel::Sms => {
                let size = limits::sms_size(&rendered.body);
                if size.segments > self.settings.max_sms_segments {
                    return Err(format!(
                        "SMS of {} {} takes {} segments (limit {})",
                        size.units,
                        if size.gsm7 {
                            "GSM-7 septets"
                        } else {
                            "UCS-2 units"
                        },
                        size.segments,
                        self.settings.max_sms_segments
                    ));
                }
            }
            Channel::Whatsapp => limits::check_whatsapp_parameters(&rendered.parameters())?,
            _ => {}
        }
        Ok(Outgoing {
            send_id: row.send_id.clone(),
            rule: row.rule.clone(),
            step: row.step,
            customer_id: row.customer_id.clone(),
            channel,
            to,
            rendered,
            unsubscribe_url,
            status_url: format!("{base}/callbacks/{}/{reference}", channel.as_str()),
            reference,
            send_at: row.send_at.unwrap_or(row.decided_at),
        })
    }

    /// Restores what recovery found: sends still to go, finished ids, and
    /// the firing columns they need.
    pub fn restore(&mut self, r: Recovered) {
        self.finished = r.finished;
        self.contexts = r.contexts;
        for row in &r.sends {
            self.accept(row);
        }
    }
}

impl BatchStage for Messaging {
    fn next_work(&self) -> Option<i64> {
        self.queue.first_key_value().map(|((at, _), _)| *at)
    }

    fn process(
        &mut self,
        report: &TickReport,
        state: &State,
        clock_us: i64,
        outputs: &mut Outputs,
    ) -> Result<(), StorageError> {
        for f in &report.firings {
            self.contexts.insert(
                (f.rule.clone(), f.customer_id.clone(), f.dedupe_key.clone()),
                firing_context(&f.context)?,
            );
        }
        let Decided(decided) = outputs.get::<Decided>().ok_or_else(|| {
            StorageError::Unsupported(
                "messaging runs after the policy stage, which decided nothing for this batch"
                    .into(),
            )
        })?;
        for row in decided {
            self.accept(row);
        }
        let mut failed = Vec::new();
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > clock_us {
                break;
            }
            let job = entry.remove();
            self.queued.remove(&job.row.send_id);
            let row = job.row;
            if state.erased(&row.customer_id) {
                // Queued before the erasure; no row may name them again.
                tracing::info!(rule = %row.rule, "a queued message of an erased customer dropped");
                self.finished.insert(row.send_id);
                continue;
            }
            // The policy stage decides every send with its channel, and
            // `send_rows` refuses one without; never guess a channel.
            let Some(channel) = row.channel else {
                tracing::error!(send_id = %row.send_id, "a send without a channel; not sent");
                self.finished.insert(row.send_id);
                continue;
            };
            // Consent again as the message goes: an opt-out made durable
            // since the decision (while the server was down, or in this
            // very batch, dated after the message was due) stops it.
            if let Err(why) = self.consent_now(&row, channel, state) {
                self.finished.insert(row.send_id.clone());
                failed.push(not_attempted(
                    row,
                    channel,
                    "opted_out",
                    why.reason(),
                    clock_us,
                ));
                continue;
            }
            let result = self.prepare(&row, state).and_then(|m| {
                self.workers
                    .get(&channel)
                    .ok_or_else(|| format!("no adapter for {}", channel.as_str()))?
                    .send(m)
                    .map_err(|_| "the delivery workers have stopped".to_string())
            });
            if let Err(reason) = result {
                self.finished.insert(row.send_id.clone());
                failed.push(not_attempted(row, channel, "failed", reason, clock_us));
            }
        }
        if !failed.is_empty() {
            outputs.write(DELIVERIES, deliveries_batch(&failed)?);
        }
        Ok(())
    }
}

/// The final row of a send Kairos ended without calling a provider.
fn not_attempted(
    row: SendRow,
    channel: Channel,
    status: &'static str,
    reason: String,
    at: i64,
) -> DeliveryRow {
    DeliveryRow {
        send_id: row.send_id,
        rule: row.rule,
        step: row.step,
        customer_id: row.customer_id,
        channel,
        provider: "kairos".into(),
        attempt: 0,
        status,
        provider_message_id: None,
        error: Some(reason),
        latency_ms: 0.0,
        at,
    }
}

/// What recovery found.
#[derive(Default)]
pub struct Recovered {
    /// `send` and `cancelled` rows not finished, in decision order.
    pub sends: Vec<SendRow>,
    /// Send ids with a final delivery row.
    pub finished: HashSet<String>,
    /// Firing columns of the sends still to go.
    pub contexts: HashMap<(String, String, String), Map<String, Value>>,
    /// Sends in doubt that were dropped (at-most-once channels).
    pub dropped: usize,
    /// Sends in doubt that will be retried.
    pub retried: usize,
    /// Every send that found its customer unreachable, to record again:
    /// the consent change of one that finished while the server stopped
    /// may not have been recorded (its event ids make a repeat a no-op).
    pub unreachable: Vec<StatusUpdate>,
}

fn strings<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a StringArray, StorageError> {
    columns::strings(b, DELIVERIES, name)
}

/// Rebuilds the delivery state from the lake; `skip` is the batch being
/// redone (its files are rewritten by the redo).
pub async fn recover(
    root: &DataRoot,
    skip: Option<&str>,
    settings: &Settings,
) -> Result<Recovered, StorageError> {
    let mut r = Recovered::default();
    let mut with_unreachable = Vec::new();
    for path in kairos_rules::firings::batch_files(root, DELIVERIES, skip).await? {
        for b in read_parquet(root, &path, Some(&["send_id", "status"])).await? {
            let (id, st) = (strings(&b, "send_id")?, strings(&b, "status")?);
            for i in 0..b.num_rows() {
                if st.value(i) != "retry" {
                    r.finished.insert(id.value(i).to_string());
                }
            }
            if st.iter().any(|s| s == Some("unreachable")) && with_unreachable.last() != Some(&path)
            {
                with_unreachable.push(path.clone());
            }
        }
    }
    // Few files hold such rows; only they are read whole.
    for path in with_unreachable {
        for b in read_parquet(root, &path, None).await? {
            let col = |n| strings(&b, n);
            let (id, st, cust, ch, prov, err) = (
                col("send_id")?,
                col("status")?,
                col("customer_id")?,
                col("channel")?,
                col("provider")?,
                col("error")?,
            );
            let at = columns::timestamps_us(&b, DELIVERIES, "at")?;
            for i in (0..b.num_rows()).filter(|&i| st.value(i) == "unreachable") {
                let channel = Channel::parse(ch.value(i)).ok_or_else(|| StorageError::Schema {
                    table: DELIVERIES.into(),
                    reason: format!("unknown channel {:?}", ch.value(i)),
                })?;
                r.unreachable.push(StatusUpdate::unreachable(
                    cust.value(i),
                    channel,
                    id.value(i),
                    prov.value(i),
                    (!err.is_null(i)).then(|| err.value(i).to_string()),
                    Some(at.value(i)),
                ));
            }
        }
    }
    // Intents whose deliveries file was never written: in doubt.
    let sends = kairos_policy::tables::read_sends(root, skip).await?;
    // The batch being redone handed its due sends to the workers before the
    // crash, so its intents are in doubt like any other: its sends/ file
    // (when it was written) names their channels. The redo decides them
    // again, and one dropped here is then finished and not sent twice.
    let redone = match skip {
        Some(batch) => kairos_policy::tables::read_batch_sends(root, batch).await?,
        None => Vec::new(),
    };
    let by_id: HashMap<&str, &SendRow> = sends
        .iter()
        .chain(&redone)
        .map(|s| (s.send_id.as_str(), s))
        .collect();
    let mut dropped_rows = Vec::new();
    let now = settings.wall.now_us();
    let intents = root.list(&ObjectPath::from(INTENTS_DIR)).await?;
    for m in &intents {
        let Some(bytes) = root.read(&m.location).await? else {
            continue;
        };
        // An intent that does not read cannot say which sends were in
        // flight: stop rather than treat none as in doubt (at-most-once
        // channels would send again) or delete it.
        let ids: Vec<String> =
            serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt {
                path: m.location.to_string(),
                reason: format!(
                    "a delivery intent is not a JSON list of send ids ({e}); \
                     check which sends it names, then delete it"
                ),
            })?;
        for id in ids {
            if r.finished.contains(&id) {
                continue;
            }
            let Some(row) = by_id.get(id.as_str()) else {
                continue;
            };
            let Some(channel) = row.channel else {
                return Err(StorageError::Schema {
                    table: kairos_policy::tables::SENDS.into(),
                    reason: format!("the send {id} has no channel"),
                });
            };
            match settings.in_doubt_for(channel) {
                InDoubt::Retry => r.retried += 1,
                InDoubt::Drop => {
                    r.dropped += 1;
                    r.finished.insert(id.clone());
                    dropped_rows.push(DeliveryRow {
                        send_id: id,
                        rule: row.rule.clone(),
                        step: row.step,
                        customer_id: row.customer_id.clone(),
                        channel,
                        provider: "kairos".into(),
                        attempt: 0,
                        status: "in_doubt_dropped",
                        provider_message_id: None,
                        error: Some(
                            "the process stopped during the provider call; at-most-once".into(),
                        ),
                        latency_ms: 0.0,
                        at: now,
                    });
                }
            }
        }
    }
    if !dropped_rows.is_empty() {
        kairos_rules::firings::write_table(
            root,
            DELIVERIES,
            &deliveries_batch(&dropped_rows)?,
            &format!("recovered-{}", settings.instance),
            now,
        )
        .await?;
    }
    for m in &intents {
        if let Err(e) = root.store.delete(&m.location).await {
            // Harmless to the sends (a later start finds them finished),
            // but compaction of deliveries/ waits behind a stale intent.
            tracing::warn!(intent = %m.location, error = %e, "a recovered delivery intent could not be deleted");
        }
    }
    let wanted: HashSet<(String, String, String)> = sends
        .iter()
        .filter(|s| s.decision == Decision::Send && !r.finished.contains(&s.send_id))
        .map(|s| (s.rule.clone(), s.customer_id.clone(), s.dedupe_key.clone()))
        .collect();
    if !wanted.is_empty() {
        for path in
            kairos_rules::firings::batch_files(root, kairos_rules::firings::FIRINGS, None).await?
        {
            for b in read_parquet(
                root,
                &path,
                Some(&["rule", "customer_id", "dedupe_key", "context"]),
            )
            .await?
            {
                let col = |n| columns::strings(&b, kairos_rules::firings::FIRINGS, n);
                let (rule, c, k, ctx) = (
                    col("rule")?,
                    col("customer_id")?,
                    col("dedupe_key")?,
                    col("context")?,
                );
                for i in 0..b.num_rows() {
                    let key = (
                        rule.value(i).to_string(),
                        c.value(i).to_string(),
                        k.value(i).to_string(),
                    );
                    if wanted.contains(&key) {
                        r.contexts.insert(key, firing_context(ctx.value(i))?);
                    }
                }
            }
        }
    }
    r.sends = sends
        .into_iter()
        .filter(|s| matches!(s.decision, Decision::Send | Decision::Cancelled))
        .filter(|s| !r.finished.contains(&s.send_id))
        .collect();
    Ok(r)
}

/// The channel workers.
pub struct Dispatcher {
    senders: HashMap<Channel, mpsc::UnboundedSender<Outgoing>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts one worker per channel in `adapters`, writing to `root`.
    pub fn start(
        root: DataRoot,
        adapters: Vec<(Channel, Arc<dyn Adapter>)>,
        settings: Settings,
    ) -> Dispatcher {
        let mut senders = HashMap::default();
        let mut handles = Vec::new();
        for (channel, adapter) in adapters {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.insert(channel, tx);
            let w = Worker {
                root: root.clone(),
                adapter,
                channel,
                settings: settings.clone(),
                name: format!("{}-{}", settings.instance, channel.as_str()),
                seq: 0,
            };
            handles.push(tokio::spawn(w.run(rx)));
        }
        Dispatcher { senders, handles }
    }

    fn senders(&self) -> HashMap<Channel, mpsc::UnboundedSender<Outgoing>> {
        self.senders.clone()
    }

    /// Hands a rendered message straight to its channel's worker (what the
    /// stage does for due sends; benchmarks use it directly).
    pub fn submit(&self, m: Outgoing) -> Result<(), SubmitError> {
        self.senders
            .get(&m.channel)
            .ok_or(SubmitError::NoWorker(m.channel))?
            .send(m)
            .map_err(|_| SubmitError::Stopped)
    }

    /// Stops taking messages and waits until every queued one is delivered
    /// and recorded (the stage must be dropped first: it holds senders too).
    pub async fn finish(self) {
        drop(self.senders);
        for h in self.handles {
            if let Err(e) = h.await {
                tracing::error!(error = %e, "a delivery worker ended abnormally; its queued sends are redone from their intents at the next start");
            }
        }
    }
}

/// Why [`Dispatcher::submit`] did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The dispatcher was made without this channel.
    #[error("no delivery worker for {}", .0.as_str())]
    NoWorker(Channel),
    /// The workers have stopped (the server is shutting down).
    #[error("the delivery workers have stopped")]
    Stopped,
}

struct Worker {
    root: DataRoot,
    adapter: Arc<dyn Adapter>,
    channel: Channel,
    settings: Settings,
    name: String,
    seq: u64,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
        while let Some(first) = rx.recv().await {
            let mut chunk = vec![first];
            while chunk.len() < CHUNK {
                match rx.try_recv() {
                    Ok(m) => chunk.push(m),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.deliver(chunk).await {
                tracing::error!(channel = self.channel.as_str(), error = %e, "a chunk's delivery records could not be made; its sends are resolved at the next start");
            }
        }
    }

    async fn deliver(&mut self, chunk: Vec<Outgoing>) -> Result<(), StorageError> {
        self.seq += 1;
        let id = format!("{}-{:08}", self.name, self.seq);
        // 1. The intent: these sends are about to start.
        let intent = ObjectPath::from(format!("{INTENTS_DIR}/{id}.json"));
        let ids: Vec<&str> = chunk.iter().map(|m| m.send_id.as_str()).collect();
        let body = serde_json::to_vec(&ids).map_err(|e| StorageError::Corrupt {
            path: intent.to_string(),
            reason: format!("the delivery intent does not serialise: {e}"),
        })?;
        let body = Bytes::from(body);
        until_written(&intent.to_string(), || async {
            self.root
                .store
                .put(&intent, body.clone().into())
                .await
                .map(|_| ())
                .map_err(|source| StorageError::ObjectStore {
                    path: intent.to_string(),
                    source,
                })
        })
        .await;
        // 2. The calls, rate-limited, each retried on its own.
        let pace = self
            .settings
            .rate_per_second
            .get(&self.channel)
            .filter(|r| **r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r));
        let mut rows = Vec::new();
        let mut calls = futures::stream::FuturesUnordered::new();
        let start = tokio::time::Instant::now();
        for (i, m) in chunk.iter().enumerate() {
            let adapter = self.adapter.clone();
            let settings = self.settings.clone();
            let at = pace.map(|p| start + p * i as u32);
            calls.push(async move {
                if let Some(at) = at {
                    tokio::time::sleep_until(at).await;
                }
                attempt_all(adapter.as_ref(), m, &settings).await
            });
        }
        use futures::StreamExt as _;
        while let Some(r) = calls.next().await {
            rows.extend(r);
        }
        drop(calls);
        // 3. The outcome, then the intent can go.
        let now = self.settings.wall.now_us();
        let batch = deliveries_batch(&rows)?;
        until_written(&format!("the deliveries of {id}"), || async {
            kairos_rules::firings::write_table(&self.root, DELIVERIES, &batch, &id, now)
                .await
                .map(|_| ())
        })
        .await;
        if let Err(e) = self.root.store.delete(&intent).await {
            tracing::warn!(intent = %intent, error = %e, "a finished delivery intent could not be deleted; the next start resolves it");
        }
        // 4. Consent changes, once their rows are durable.
        for r in rows.iter().filter(|r| r.status == "unreachable") {
            let update = StatusUpdate::unreachable(
                &r.customer_id,
                r.channel,
                &r.send_id,
                &r.provider,
                r.error.clone(),
                Some(r.at),
            );
            match &self.settings.status_updates {
                Some(tx) if tx.send(update.clone()).is_ok() => {}
                _ => {
                    tracing::warn!(customer = %update.customer_id, channel = update.channel.as_str(), reason = ?update.error, "customer unreachable; nothing records the consent change here")
                }
            }
        }
        Ok(())
    }
}

/// Retries a write the worker cannot go on without, backing off to 30 s,
/// for as long as the process lives. Giving up would leave its sends
/// unattempted (the intent) or in doubt (the outcome) until a restart,
/// while the worker went on with later ones (found by kairos-sim seed 41:
/// one failed intent PUT and an order confirmation never went).
async fn until_written<F, Fut>(what: &str, write: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), StorageError>>,
{
    let mut wait = Duration::from_millis(100);
    loop {
        match write().await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(what, error = %e, retry_in_ms = wait.as_millis() as u64, "a delivery record could not be written; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The attempt timeout of a channel without its own (the outbox).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Every attempt at one message, until sent, permanently failed or out of
/// attempts.
async fn attempt_all(adapter: &dyn Adapter, m: &Outgoing, s: &Settings) -> Vec<DeliveryRow> {
    let mut rows = Vec::new();
    let limit = s
        .attempt_timeout
        .get(&m.channel)
        .copied()
        .unwrap_or(DEFAULT_ATTEMPT_TIMEOUT);
    let in_doubt = s.in_doubt_for(m.channel);
    for attempt in 1..=s.max_attempts.max(1) {
        let t = Instant::now();
        let result = match tokio::time::timeout(limit, adapter.send(m)).await {
            Ok(r) => r,
            // The provider may have the message: in doubt, not retryable.
            Err(_) => Err(Failure::InDoubt {
                reason: format!("timed out after {limit:?}"),
            }),
        };
        let result = match result {
            Err(Failure::InDoubt { reason }) if in_doubt == InDoubt::Retry => {
                Err(Failure::Retryable {
                    reason: format!("{reason} (in doubt; retried: messaging.in_doubt = retry)"),
                    retry_after: None,
                })
            }
            other => other,
        };
        let latency_ms = t.elapsed().as_secs_f64() * 1000.0;
        let row = |status: &'static str, id: Option<String>, error: Option<String>| DeliveryRow {
            send_id: m.send_id.clone(),
            rule: m.rule.clone(),
            step: m.step,
            customer_id: m.customer_id.clone(),
            channel: m.channel,
            provider: adapter.provider().to_string(),
            attempt,
            status,
            provider_message_id: id,
            error,
            latency_ms,
            at: s.wall.now_us(),
        };
        match result {
            Ok(receipt) => {
                rows.push(row("sent", Some(receipt.provider_message_id), None));
                break;
            }
            Err(Failure::Permanent { reason }) => {
                rows.push(row("failed", None, Some(reason)));
                break;
            }
            Err(Failure::Unreachable { reason }) => {
                rows.push(row("unreachable", None, Some(reason)));
                break;
            }
            Err(Failure::InDoubt { reason }) => {
                rows.push(row(
                    "in_doubt_dropped",
                    None,
                    Some(format!(
                        "{reason}; not sent again: messaging.in_doubt = drop"
                    )),
                ));
                break;
            }
            Err(Failure::Retryable {
                reason,
                retry_after,
            }) => {
                if attempt == s.max_attempts.max(1) {
                    rows.push(row(
                        "failed",
                        None,
                        Some(format!("{reason} (after {attempt} attempts)")),
                    ));
                    break;
                }
                rows.push(row("retry", None, Some(reason)));
                // A provider's Retry-After is honoured up to the longest
                // backoff: a day's Retry-After would stall the channel's
                // worker, and every message queued behind this one, a day.
                let wait = retry_after
                    .map_or_else(|| backoff(s, &m.send_id, attempt), |d| d.min(s.max_backoff));
                tokio::time::sleep(wait).await;
            }
        }
    }
    debug_assert!(rows.last().is_some_and(DeliveryRow::is_final));
    rows
}

/// Exponential backoff with jitter: in [d/2, d] where d doubles per
/// attempt up to the maximum. The jitter is a hash of the send and the
/// attempt, so retries of different sends spread out while a seeded
/// simulation waits exactly as long every run.
fn backoff(s: &Settings, send_id: &str, attempt: u32) -> Duration {
    use std::hash::{Hash as _, Hasher as _};
    let d = s
        .base_backoff
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(s.max_backoff);
    // SipHash with fixed keys: the same on every run.
    let mut h = std::hash::DefaultHasher::new();
    (send_id, attempt).hash(&mut h);
    let half = d / 2;
    half + half.mul_f64(h.finish() as f64 / u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsubscribe_tokens_verify_and_reject_tampering() {
        let key = b"secret";
        let t = unsubscribe_token(key, "cust-1", Channel::Email);
        assert_eq!(
            verify_unsubscribe_token(key, &t),
            Some(("cust-1".to_string(), Channel::Email))
        );
        let other = unsubscribe_token(key, "cust-2", Channel::Email);
        let forged = format!(
            "{}.{}",
            other.split_once('.').expect("dot").0,
            t.split_once('.').expect("dot").1
        );
        assert_eq!(verify_unsubscribe_token(key, &forged), None);
        assert_eq!(verify_unsubscribe_token(b"other", &t), None);
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let s = Settings::default();
        for attempt in 1..6 {
            let d = backoff(&s, "send-1", attempt);
            let full = s.base_backoff * (1 << (attempt - 1));
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
        assert!(backoff(&s, "send-1", 30) <= s.max_backoff);
        // Spread over sends, the same for one send.
        assert_ne!(backoff(&s, "send-1", 3), backoff(&s, "send-2", 3));
        assert_eq!(backoff(&s, "send-2", 3), backoff(&s, "send-2", 3));
    }

    struct Flaky {
        fail_first: u32,
        calls: std::sync::atomic::AtomicU32,
        permanent: bool,
    }

    #[async_trait::async_trait]
    impl Adapter for Flaky {
        fn provider(&self) -> &str {
            "flaky"
        }
        async fn send(&self, _m: &Outgoing) -> Result<crate::channel::Receipt, Failure> {
            let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if self.permanent {
                return Err(Failure::Permanent {
                    reason: "invalid number".into(),
                });
            }
            if n <= self.fail_first {
                return Err(Failure::Retryable {
                    reason: "503".into(),
                    retry_after: Some(Duration::from_millis(1)),
                });
            }
            Ok(crate::channel::Receipt {
                provider: "flaky".into(),
                provider_message_id: format!("m{n}"),
            })
        }
    }

    /// Always busy, asking for an hour's pause.
    struct Busy;

    #[async_trait::async_trait]
    impl Adapter for Busy {
        fn provider(&self) -> &str {
            "busy"
        }
        async fn send(&self, _m: &Outgoing) -> Result<crate::channel::Receipt, Failure> {
            Err(Failure::Retryable {
                reason: "429".into(),
                retry_after: Some(Duration::from_secs(3600)),
            })
        }
    }

    #[tokio::test]
    async fn a_long_retry_after_waits_no_longer_than_the_longest_backoff() {
        let s = Settings {
            max_attempts: 2,
            max_backoff: Duration::from_millis(20),
            ..Settings::default()
        };
        let rows =
            tokio::time::timeout(Duration::from_secs(5), attempt_all(&Busy, &outgoing(), &s))
                .await
                .expect("the worker waited for the provider's hour");
        let status: Vec<&str> = rows.iter().map(|r| r.status).collect();
        assert_eq!(status, ["retry", "failed"]);
    }

    fn outgoing() -> Outgoing {
        Outgoing {
            send_id: "r:0:c:k".into(),
            rule: "r".into(),
            step: 0,
            customer_id: "c".into(),
            channel: Channel::Sms,
            to: "+15550100".into(),
            rendered: crate::template::Rendered::default(),
            unsubscribe_url: None,
            reference: "ref".into(),
            status_url: "http://127.0.0.1:8080/callbacks/ref".into(),
            send_at: 0,
        }
    }

    #[tokio::test]
    async fn retries_until_sent_and_never_retries_a_permanent_error() {
        let s = Settings {
            max_attempts: 4,
            ..Settings::default()
        };
        let flaky = Flaky {
            fail_first: 2,
            calls: 0.into(),
            permanent: false,
        };
        let rows = attempt_all(&flaky, &outgoing(), &s).await;
        let got: Vec<(u32, &str)> = rows.iter().map(|r| (r.attempt, r.status)).collect();
        assert_eq!(got, vec![(1, "retry"), (2, "retry"), (3, "sent")]);
        assert_eq!(rows[2].provider_message_id.as_deref(), Some("m3"));

        let dead = Flaky {
            fail_first: 0,
            calls: 0.into(),
            permanent: true,
        };
        let rows = attempt_all(&dead, &outgoing(), &s).await;
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].status, rows[0].error.as_deref()),
            ("failed", Some("invalid number"))
        );
        assert_eq!(dead.calls.load(std::sync::atomic::Ordering::SeqCst), 1);

        let always = Flaky {
            fail_first: 99,
            calls: 0.into(),
            permanent: false,
        };
        let rows = attempt_all(&always, &outgoing(), &s).await;
        assert_eq!(rows.len(), 4, "max_attempts");
        assert_eq!(rows[3].status, "failed");
    }

    /// A provider that never answers.
    struct Hangs;

    #[async_trait::async_trait]
    impl Adapter for Hangs {
        fn provider(&self) -> &str {
            "hangs"
        }
        async fn send(&self, _: &Outgoing) -> Result<crate::Receipt, Failure> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_timed_out_attempt_is_in_doubt_retried_or_dropped_per_channel() {
        let m = outgoing();
        let s = Settings {
            max_attempts: 2,
            base_backoff: Duration::from_millis(1),
            attempt_timeout: [(m.channel, Duration::from_millis(50))]
                .into_iter()
                .collect(),
            ..Settings::default()
        };
        let rows = tokio::time::timeout(Duration::from_secs(5), attempt_all(&Hangs, &m, &s))
            .await
            .expect("the channel's limit, not the 30 s default");
        let got: Vec<&str> = rows.iter().map(|r| r.status).collect();
        assert_eq!(got, ["retry", "failed"], "in_doubt = retry (the default)");
        assert!(
            rows[0]
                .error
                .as_deref()
                .is_some_and(|e| e.starts_with("timed out after 50ms (in doubt")),
            "{:?}",
            rows[0].error
        );
        // On an at-most-once channel the provider may have it: never twice.
        let drop = Settings {
            in_doubt: [(m.channel, InDoubt::Drop)].into_iter().collect(),
            ..s
        };
        let rows = attempt_all(&Hangs, &m, &drop).await;
        let got: Vec<&str> = rows.iter().map(|r| r.status).collect();
        assert_eq!(got, ["in_doubt_dropped"]);
    }

    /// A provider that says every address is dead.
    struct Gone;

    #[async_trait::async_trait]
    impl Adapter for Gone {
        fn provider(&self) -> &str {
            "fcm"
        }
        async fn send(&self, _m: &Outgoing) -> Result<crate::channel::Receipt, Failure> {
            Err(Failure::Unreachable {
                reason: "HTTP 404: UNREGISTERED".into(),
            })
        }
    }

    #[tokio::test]
    async fn an_unreachable_customer_is_reported_once_recorded_and_again_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let settings = Settings {
            status_updates: Some(tx),
            ..Settings::default()
        };
        let d = Dispatcher::start(
            root.clone(),
            vec![(Channel::Push, Arc::new(Gone))],
            settings.clone(),
        );
        let mut m = outgoing();
        m.channel = Channel::Push;
        d.submit(m).expect("submit");
        d.finish().await;
        let u = rx.recv().await.expect("an update");
        assert_eq!(
            (u.customer_id.as_str(), u.channel, u.withdraws.as_deref()),
            ("c", Channel::Push, Some("fcm_unreachable"))
        );
        assert_eq!(u.calls()[1]["event"], "Push Opted Out");
        assert!(rx.try_recv().is_err(), "reported once, not retried");
        // A restart reports it again with the same time, so ingest's
        // exact de-duplication makes the repeat a no-op.
        let r = recover(&root, None, &settings).await.expect("recover");
        assert_eq!(r.unreachable, vec![u.clone()]);
        assert!(r.finished.contains("r:0:c:k"));
        assert_eq!(r.unreachable[0].calls(), u.calls());
    }

    /// Found by reading for issue 19 (H1): an intent naming a send of the
    /// batch a restart redoes was skipped and deleted, so the redo sent it
    /// again, even on an at-most-once channel.
    #[tokio::test]
    async fn a_send_in_doubt_from_the_batch_being_redone_is_dropped_not_sent_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let batch = kairos_rules::firings::batch_id(7);
        let row = SendRow {
            send_id: "r:0:c:k".into(),
            rule: "r".into(),
            step: 0,
            customer_id: "c".into(),
            dedupe_key: "k".into(),
            arm: kairos_experiments::Arm::Triggered,
            variant: None,
            channel: Some(Channel::Email),
            decision: Decision::Send,
            reason: None,
            send_at: Some(1_000),
            decided_at: 1_000,
            new_assignment: true,
        };
        kairos_rules::firings::write_table(
            &root,
            kairos_policy::tables::SENDS,
            &kairos_policy::tables::sends_batch(std::slice::from_ref(&row)).expect("batch"),
            &batch,
            1_000,
        )
        .await
        .expect("sends");
        let intent = dir.path().join(INTENTS_DIR).join("p-email-00000001.json");
        std::fs::create_dir_all(intent.parent().expect("dir")).expect("mkdir");
        std::fs::write(&intent, br#"["r:0:c:k"]"#).expect("intent");
        let settings = Settings {
            in_doubt: [(Channel::Email, InDoubt::Drop)].into_iter().collect(),
            ..Settings::default()
        };
        let r = recover(&root, Some(&batch), &settings)
            .await
            .expect("recover");
        assert_eq!(r.dropped, 1, "counted as in doubt and dropped");
        assert!(
            r.finished.contains("r:0:c:k"),
            "finished, so the redo's decision does not send it again"
        );
        // A second start finds the dropped row in deliveries/.
        let again = recover(&root, Some(&batch), &settings)
            .await
            .expect("recover");
        assert!(again.finished.contains("r:0:c:k"));
    }

    #[tokio::test]
    async fn an_unreadable_delivery_intent_stops_recovery_and_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let intent = dir.path().join(INTENTS_DIR).join("email-00000001.json");
        std::fs::create_dir_all(intent.parent().expect("dir")).expect("mkdir");
        // Torn by a crash mid-write: which sends were in flight is unknown.
        std::fs::write(&intent, b"[\"r:0:c:k\", \"r:0").expect("write");
        let settings = Settings::default();
        let err = match recover(&root, None, &settings).await {
            Ok(_) => panic!("an unreadable intent was taken as no sends in doubt"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("email-00000001.json") && err.contains("not a JSON list of send ids"),
            "{err}"
        );
        assert!(intent.exists(), "the evidence is kept");
    }
}
