//! `kairos import`: bulk loads straight into the data root, no server needed.
//!
//! Rows are validated like HTTP calls, staged durably, then published with
//! the same publisher the server uses, so dedupe and profile history behave
//! exactly as for live traffic. Re-importing the same file adds nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use arrow::array::{Array, RecordBatch};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use clap::ValueEnum;
use serde_json::Value;
use tokio::sync::Mutex;

use kairos_core::Config;
use kairos_core::event::{EventTypes, ProfileUpdate, StagedItem};
use kairos_core::time::{now_us, parse_rfc3339_us};
use kairos_ingest::calls::{Envelope, Normalizer};
use kairos_storage::{DataRoot, Publisher, PublisherOptions, StagingLog, WriterId};

/// What an import file holds.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ImportKind {
    /// Customer attributes from a CRM: CSV or Parquet with a `customer_id`
    /// (or `user_id`/`userId`) column, or NDJSON identify calls.
    Profiles,
    /// Segment calls as NDJSON, one per line.
    Events,
}

/// Source recorded for imported rows.
const IMPORT_SOURCE: &str = "import";
/// Bytes per staged frame.
const FRAME_BYTES: usize = 4 << 20;

/// Imports `file` into the configured data root.
/// `kairos import` flags.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// What the file holds.
    #[arg(value_enum)]
    kind: ImportKind,
    /// profiles: CSV, Parquet or NDJSON identify calls; events: NDJSON Segment calls.
    file: std::path::PathBuf,
    /// Data root. Default from config (./kairos-data).
    #[arg(long)]
    data: Option<String>,
}

/// `kairos import`.
pub async fn run(mut config: Config, args: ImportArgs) -> anyhow::Result<()> {
    config.storage.data = args.data.unwrap_or(config.storage.data);
    import(config, args.kind, &args.file).await
}

async fn import(config: Config, kind: ImportKind, file: &Path) -> anyhow::Result<()> {
    let items = read_items(&config, kind, file)?;
    let root = DataRoot::open(&config.storage.data)?;
    let log = Arc::new(Mutex::new(StagingLog::open(
        root.clone(),
        WriterId::fresh(),
    )?));
    let mut frame = Vec::new();
    for item in &items.staged {
        serde_json::to_writer(&mut frame, item)?;
        frame.push(b'\n');
        if frame.len() >= FRAME_BYTES {
            log.lock().await.append(&std::mem::take(&mut frame)).await?;
        }
    }
    if !frame.is_empty() {
        log.lock().await.append(&frame).await?;
    }
    let opts = PublisherOptions::from_config(&config);

    // Erased customers stay erased: rows naming them are dropped.
    let suppression = kairos_storage::privacy::Suppression::load(&root).await?;
    let stats = Publisher::new(root.clone(), log, opts)
        .await
        .with_suppression(suppression)
        .publish()
        .await?;
    for e in items.errors.iter().take(20) {
        eprintln!("{}:{}: {}: {}", file.display(), e.0 + 1, e.1, e.2);
    }
    if items.errors.len() > 20 {
        eprintln!("... and {} more rejected rows", items.errors.len() - 20);
    }
    println!(
        "imported {} rows into {}: {} events, {} profile versions, {} trait changes, {} identity links, {} duplicates skipped, {} naming erased customers dropped, {} rejected",
        items.rows,
        root.url,
        stats.events,
        stats.profiles,
        stats.changes,
        stats.identities,
        stats.duplicates,
        stats.suppressed,
        items.errors.len()
    );
    Ok(())
}

pub(crate) struct Items {
    pub(crate) rows: usize,
    pub(crate) staged: Vec<StagedItem>,
    /// (0-based row, field, reason)
    pub(crate) errors: Vec<(usize, String, String)>,
}

pub(crate) fn read_items(config: &Config, kind: ImportKind, file: &Path) -> anyhow::Result<Items> {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match (kind, ext.as_str()) {
        (_, "ndjson" | "jsonl" | "json") => ndjson(config, file),
        (ImportKind::Profiles, "csv") => profile_rows(file, csv_rows(file)?),
        (ImportKind::Profiles, "parquet") => profile_rows(file, parquet_rows(file)?),
        (ImportKind::Events, "csv") => event_rows(config, csv_rows(file)?),
        (ImportKind::Events, "parquet") => event_rows(config, parquet_rows(file)?),
        _ => bail!(
            "{}: unsupported file type; profiles and events take .csv, .parquet or .ndjson",
            file.display()
        ),
    }
}

fn ndjson(config: &Config, file: &Path) -> anyhow::Result<Items> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let (normalizer, env) = validation(config);
    let mut items = Items {
        rows: 0,
        staged: Vec::new(),
        errors: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        items.rows += 1;
        match serde_json::from_str::<&serde_json::value::RawValue>(line) {
            Ok(raw) => {
                if let Err(e) = normalizer.item(raw, None, i, &env, &mut items.staged) {
                    items.errors.push((i, e.field, e.reason));
                }
            }
            Err(e) => items
                .errors
                .push((i, String::new(), format!("malformed JSON: {e}"))),
        }
    }
    Ok(items)
}

/// Imported rows are validated like HTTP calls received now.
fn validation(config: &Config) -> (Normalizer, Envelope<'static>) {
    let normalizer = Normalizer::new(
        EventTypes::new(&config.events.mapping),
        config.ingest.max_event_bytes,
        config.ingest.max_future_hours,
    );
    let env = Envelope {
        source: IMPORT_SOURCE,
        received_at_us: now_us(),
        batch_sent_at_us: None,
    };
    (normalizer, env)
}

/// One tabular row: column name -> value (absent when empty/null).
type Row = BTreeMap<String, Value>;

fn csv_rows(file: &Path) -> anyhow::Result<Vec<Row>> {
    let mut reader =
        csv::Reader::from_path(file).with_context(|| format!("reading {}", file.display()))?;
    let headers = reader.headers()?.clone();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.with_context(|| format!("{}: malformed CSV", file.display()))?;
        let row = headers
            .iter()
            .zip(record.iter())
            .filter(|(_, v)| !v.is_empty())
            .map(|(h, v)| (h.to_string(), csv_value(v)))
            .collect();
        rows.push(row);
    }
    Ok(rows)
}

/// CSV cells are text; numbers and booleans are recognised so traits keep their types.
fn csv_value(v: &str) -> Value {
    if let Ok(i) = v.parse::<i64>() {
        return Value::from(i);
    }
    if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
        return Value::from(f);
    }
    match v {
        "true" | "TRUE" | "True" => Value::Bool(true),
        "false" | "FALSE" | "False" => Value::Bool(false),
        _ => Value::String(v.to_string()),
    }
}

fn parquet_rows(file: &Path) -> anyhow::Result<Vec<Row>> {
    let f = std::fs::File::open(file).with_context(|| format!("reading {}", file.display()))?;
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)?.build()?;
    let mut rows = Vec::new();
    for batch in reader {
        rows.extend(batch_rows(&batch?)?);
    }
    Ok(rows)
}

fn batch_rows(batch: &RecordBatch) -> anyhow::Result<Vec<Row>> {
    use arrow::datatypes::DataType as T;
    let schema = batch.schema();
    let opts = FormatOptions::default();
    let mut rows = vec![Row::new(); batch.num_rows()];
    for (field, col) in schema.fields().iter().zip(batch.columns()) {
        let fmt = ArrayFormatter::try_new(col.as_ref(), &opts)?;
        for (i, row) in rows.iter_mut().enumerate() {
            if col.is_null(i) {
                continue;
            }
            let text = fmt.value(i).to_string();
            let value = match field.data_type() {
                T::Boolean => Value::Bool(text == "true"),
                T::Int8
                | T::Int16
                | T::Int32
                | T::Int64
                | T::UInt8
                | T::UInt16
                | T::UInt32
                | T::UInt64 => csv_value(&text),
                T::Float16 | T::Float32 | T::Float64 => csv_value(&text),
                _ => Value::String(text),
            };
            row.insert(field.name().clone(), value);
        }
    }
    Ok(rows)
}

/// Columns of a tabular event export, by role; the first present wins.
/// The rest become `properties`. Covers Segment's names, snake_case ones
/// and clickstream exports such as REES46 (`event_time`, `event_type`).
const EVENT_NAME: [&str; 3] = ["event", "event_name", "event_type"];
const EVENT_USER: [&str; 3] = ["userId", "user_id", "customer_id"];
const EVENT_ANON: [&str; 2] = ["anonymousId", "anonymous_id"];
const EVENT_ID: [&str; 3] = ["messageId", "message_id", "event_id"];
const EVENT_TIME: [&str; 3] = ["timestamp", "event_time", "time"];

/// A time as written in exports: RFC 3339, or `YYYY-MM-DD HH:MM:SS[ UTC]` (UTC).
fn export_time(v: &Value) -> Option<String> {
    let s = v.as_str()?;
    if parse_rfc3339_us(s).is_some() {
        return Some(s.to_string());
    }
    let plain = s.trim().trim_end_matches(" UTC");
    chrono::NaiveDateTime::parse_from_str(plain, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().to_rfc3339())
}

/// Tabular rows (CSV, Parquet) into `track` calls, validated like HTTP ones.
fn event_rows(config: &Config, rows: Vec<Row>) -> anyhow::Result<Items> {
    let (normalizer, env) = validation(config);
    let mut items = Items {
        rows: rows.len(),
        staged: Vec::new(),
        errors: Vec::new(),
    };
    for (i, mut row) in rows.into_iter().enumerate() {
        let mut take = |names: &[&str]| names.iter().find_map(|n| row.remove(*n));
        let event = take(&EVENT_NAME);
        let user = take(&EVENT_USER);
        let anon = take(&EVENT_ANON);
        let id = take(&EVENT_ID);
        let time = take(&EVENT_TIME);
        let mut call = serde_json::Map::new();
        call.insert("type".into(), "track".into());
        if let Some(e) = event {
            call.insert("event".into(), e);
        }
        if let Some(u) = user {
            call.insert("userId".into(), u);
        }
        if let Some(a) = anon {
            call.insert("anonymousId".into(), a);
        }
        if let Some(m) = id {
            call.insert("messageId".into(), m);
        }
        match time.as_ref().map(|t| (t, export_time(t))) {
            Some((_, Some(t))) => {
                call.insert("timestamp".into(), t.into());
            }
            Some((t, None)) => {
                items.errors.push((
                    i + 1,
                    "timestamp".into(),
                    format!("{t} is not a time (RFC 3339 or YYYY-MM-DD HH:MM:SS UTC)"),
                ));
                continue;
            }
            None => {}
        }
        if !row.contains_key("category")
            && let Some(c) = row.remove("category_code")
        {
            row.insert("category".into(), c);
        }
        call.insert(
            "properties".into(),
            Value::Object(row.into_iter().collect()),
        );
        let text = serde_json::to_string(&call)?;
        let raw: Box<serde_json::value::RawValue> = serde_json::value::RawValue::from_string(text)?;
        if let Err(e) = normalizer.item(&raw, None, i, &env, &mut items.staged) {
            items.errors.push((i + 1, e.field, e.reason));
        }
    }
    Ok(items)
}

const ID_COLUMNS: [&str; 3] = ["customer_id", "user_id", "userId"];
const TIME_COLUMNS: [&str; 2] = ["updated_at", "timestamp"];

/// Tabular rows into identify-equivalent profile updates. Dotted column
/// names (`consent.email`) become nested traits.
fn profile_rows(file: &Path, rows: Vec<Row>) -> anyhow::Result<Items> {
    let now = now_us();
    let mut items = Items {
        rows: rows.len(),
        staged: Vec::new(),
        errors: Vec::new(),
    };
    for (i, mut row) in rows.into_iter().enumerate() {
        let id = ID_COLUMNS.iter().find_map(|c| row.remove(*c));
        let Some(customer_id) =
            id.map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        else {
            items.errors.push((
                i,
                "customer_id".into(),
                format!(
                    "missing; {} needs a customer_id (or user_id) column",
                    file.display()
                ),
            ));
            continue;
        };
        let mut ts = now;
        if let Some(t) = TIME_COLUMNS.iter().find_map(|c| row.remove(*c)) {
            match t.as_str().and_then(parse_rfc3339_us) {
                Some(us) => ts = us,
                None => {
                    items.errors.push((
                        i,
                        "updated_at".into(),
                        format!("{t} is not an RFC 3339 timestamp"),
                    ));
                    continue;
                }
            }
        }
        let mut traits = BTreeMap::new();
        for (k, v) in row {
            insert_dotted(&mut traits, &k, v);
        }
        let content = serde_json::to_string(&traits)?;
        let event_id = format!("import-{:032x}", row_hash(&customer_id, &content));
        items.staged.push(StagedItem::Profile(ProfileUpdate {
            event_id,
            source: IMPORT_SOURCE.into(),
            customer_id,
            timestamp_us: ts,
            received_at_us: now,
            traits,
            first_only: Default::default(),
        }));
    }
    Ok(items)
}

fn insert_dotted(into: &mut BTreeMap<String, Value>, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            into.insert(key.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = into
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Default::default()));
            if !entry.is_object() {
                *entry = Value::Object(Default::default());
            }
            if let Value::Object(map) = entry {
                let mut nested: BTreeMap<String, Value> = std::mem::take(map).into_iter().collect();
                insert_dotted(&mut nested, rest, value);
                *map = nested.into_iter().collect();
            }
        }
    }
}

/// A stable id for an imported row, so the same row imported twice dedupes.
fn row_hash(customer: &str, content: &str) -> u128 {
    kairos_storage::dedupe::id_key("import", customer, content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_keep_types_and_dotted_columns_nest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("crm.csv");
        std::fs::write(&path, "customer_id,email,orders,consent.email,consent.sms,updated_at\nc1,a@example.com,3,true,false,2026-01-01T00:00:00Z\n,x@example.com,1,true,true,\nc3,c@example.com,,true,true,not-a-date\n").expect("write");
        let items = profile_rows(&path, csv_rows(&path).expect("csv")).expect("rows");
        assert_eq!(items.rows, 3);
        assert_eq!(items.staged.len(), 1);
        assert_eq!(
            items
                .errors
                .iter()
                .map(|e| (e.0, e.1.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "customer_id"), (2, "updated_at")]
        );
        let StagedItem::Profile(p) = &items.staged[0] else {
            panic!("profile")
        };
        assert_eq!(p.customer_id, "c1");
        assert_eq!(p.traits["orders"], 3);
        assert_eq!(
            p.traits["consent"],
            serde_json::json!({"email": true, "sms": false})
        );
        assert_eq!(
            p.timestamp_us,
            parse_rfc3339_us("2026-01-01T00:00:00Z").expect("ts")
        );
    }
}
