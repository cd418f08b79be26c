//! Runs the trigger library's golden tests, `sql/tests/*.slt`.
//!
//! Each file drives the real engine with a small fixture. Besides SQL
//! queries (over `firings` and the state tables), the harness understands
//! three statements:
//!
//! ```text
//! statement ok
//! rule cart_abandonment delay=6h     -- load sql/cart_abandonment.sql (fresh engine)
//!
//! statement ok
//! events                             -- Segment calls, one JSON per line,
//! {"type":"track","event":"Product Added","userId":"c1","timestamp":"..."}
//!
//! statement ok
//! tick 2026-09-01T11:00:00Z          -- run one tick at this rule clock
//! ```
//!
//! `firings` holds every firing so far: rule, customer_id, dedupe_key,
//! due_at, clock and context. Run one file with
//! `cargo test -p kairos-rules --test library -- cart_abandonment`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use sqllogictest::{DBOutput, DefaultColumnType};

use kairos_core::event::{EventTypes, StagedItem};
use kairos_ingest::calls::{Envelope, Normalizer};
use kairos_rules::rule::Param;
use kairos_rules::{Engine, EngineOptions, Firing};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Error(String);

struct Db {
    sql_dir: PathBuf,
    rules: Vec<kairos_rules::Rule>,
    overrides: BTreeMap<String, BTreeMap<String, Param>>,
    engine: Option<Engine>,
    pending: Vec<StagedItem>,
    firings: Vec<Firing>,
    clock: i64,
    normalizer: Normalizer,
    line: usize,
}

fn err(e: impl ToString) -> Error {
    Error(e.to_string())
}

impl Db {
    fn new(sql_dir: PathBuf) -> Db {
        Db {
            sql_dir,
            rules: Vec::new(),
            overrides: BTreeMap::new(),
            engine: None,
            pending: Vec::new(),
            firings: Vec::new(),
            clock: 0,
            normalizer: Normalizer::new(EventTypes::new(&BTreeMap::new()), 64 << 10, 24 * 365 * 20),
            line: 0,
        }
    }

    fn engine(&mut self) -> &mut Engine {
        let (rules, overrides) = (&self.rules, &self.overrides);
        self.engine.get_or_insert_with(|| {
            Engine::new(
                rules.clone(),
                overrides,
                kairos_rules::state::State::default(),
                EngineOptions {
                    // Fixtures jump days at a time; they test windows, not downtime.
                    catch_up_us: i64::MAX / 4,
                    // A tick's clock is what the fixtures assert.
                    event_clock: false,
                    ..EngineOptions::default()
                },
            )
            .expect("engine")
        })
    }

    fn load_rule(&mut self, args: &str) -> Result<(), Error> {
        let mut parts = args.split_whitespace();
        let name = parts
            .next()
            .ok_or_else(|| err("rule NAME [param=value ...]"))?;
        let path = self.sql_dir.join(format!("{name}.sql"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let rule = kairos_rules::parse(&path, &text).map_err(|es| {
            err(es
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"))
        })?;
        let mut o = BTreeMap::new();
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| err(format!("{kv}: want param=value")))?;
            o.insert(k.to_string(), Param::parse(v).map_err(err)?);
        }
        self.overrides.insert(rule.name.clone(), o);
        self.rules.push(rule);
        self.engine = None;
        Ok(())
    }

    fn events(&mut self, lines: &str) -> Result<(), Error> {
        let env = Envelope {
            source: "slt",
            received_at_us: kairos_core::time::now_us(),
            batch_sent_at_us: None,
        };
        for line in lines.lines().filter(|l| !l.trim().is_empty()) {
            self.line += 1;
            let raw: &serde_json::value::RawValue =
                serde_json::from_str(line).map_err(|e| err(format!("{line}: {e}")))?;
            self.normalizer
                .item(raw, None, self.line, &env, &mut self.pending)
                .map_err(|e| err(format!("{line}: {}: {}", e.field, e.reason)))?;
        }
        Ok(())
    }

    async fn tick(&mut self, at: &str) -> Result<(), Error> {
        let now = kairos_core::time::parse_rfc3339_us(at.trim())
            .ok_or_else(|| err(format!("{at}: not an RFC 3339 instant")))?;
        self.clock = now;
        let items = std::mem::take(&mut self.pending);
        let report = self.engine().tick(items, now).await;
        if let Some(f) = report.failures.first() {
            return Err(err(format!("rule {} failed: {}", f.rule, f.error)));
        }
        self.firings.extend(report.firings);
        Ok(())
    }

    fn firings_batch(&self) -> RecordBatch {
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("rule", DataType::Utf8, false),
            Field::new("customer_id", DataType::Utf8, false),
            Field::new("dedupe_key", DataType::Utf8, false),
            Field::new("due_at", ts(), false),
            Field::new("clock", ts(), false),
            Field::new("context", DataType::Utf8, false),
        ]));
        let f = &self.firings;
        let s = |g: fn(&Firing) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(f.iter().map(g)))
        };
        let t = |g: fn(&Firing) -> i64| -> ArrayRef {
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(f.iter().map(g)).with_timezone("UTC"),
            )
        };
        let cols = vec![
            s(|x| &x.rule),
            s(|x| &x.customer_id),
            s(|x| &x.dedupe_key),
            t(|x| x.due_at_us),
            t(|x| x.clock_us),
            s(|x| &x.context),
        ];
        RecordBatch::try_new(schema.clone(), cols)
            .unwrap_or_else(|_| RecordBatch::new_empty(schema))
    }

    async fn query(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let ctx = SessionContext::new();
        let clock = self.clock;
        let firings = self.firings_batch();
        let state = &self.engine().state;
        let tables = [
            ("firings", firings),
            ("customers", state.customers_table(None).map_err(err)?),
            ("carts", state.carts_table(None, clock).map_err(err)?),
            (
                "product_views",
                state.views_table(None, clock).map_err(err)?,
            ),
        ];
        for (name, batch) in tables {
            let t = MemTable::try_new(batch.schema(), vec![vec![batch]]).map_err(err)?;
            ctx.register_table(name, Arc::new(t)).map_err(err)?;
        }
        let batches = ctx
            .sql(sql)
            .await
            .map_err(err)?
            .collect()
            .await
            .map_err(err)?;
        let mut rows = Vec::new();
        let mut types = Vec::new();
        let opts = FormatOptions::default().with_null("NULL");
        for b in &batches {
            types = b
                .schema()
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt64 => DefaultColumnType::Integer,
                    DataType::Float32 | DataType::Float64 => DefaultColumnType::FloatingPoint,
                    _ => DefaultColumnType::Text,
                })
                .collect();
            let fmts = b
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            for r in 0..b.num_rows() {
                rows.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
            }
        }
        Ok(DBOutput::Rows { types, rows })
    }
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for Db {
    type Error = Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Error> {
        let sql = sql.trim();
        let (head, rest) = sql.split_once(char::is_whitespace).unwrap_or((sql, ""));
        match head {
            "rule" => self
                .load_rule(rest)
                .map(|()| DBOutput::StatementComplete(0)),
            "events" => self.events(rest).map(|()| DBOutput::StatementComplete(0)),
            "tick" => self
                .tick(rest)
                .await
                .map(|()| DBOutput::StatementComplete(0)),
            _ => self.query(sql).await,
        }
    }

    async fn shutdown(&mut self) {}
}

/// Speaks enough of libtest's command line for `cargo test` and
/// `cargo nextest`: `--list` (one `name: test` line per file, none with
/// `--ignored`), a name filter, and `--exact`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    // Values of options such as `--format terse` are not test names.
    let mut filter = None;
    let mut skip_value = false;
    for a in &args {
        if skip_value {
            skip_value = false;
        } else if matches!(
            a.as_str(),
            "--format" | "--logfile" | "--test-threads" | "--skip" | "--color"
        ) {
            skip_value = true;
        } else if !a.starts_with('-') {
            filter = Some(a.clone());
        }
    }
    let sql_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(sql_dir.join("tests"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|f| f.extension().is_some_and(|e| e == "slt"));
    files.sort();
    assert!(!files.is_empty(), "no sql/tests/*.slt found");
    let stem = |f: &Path| {
        f.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string()
    };
    if has("--list") {
        if !has("--ignored") {
            for f in &files {
                println!("{}: test", stem(f));
            }
        }
        return;
    }
    let exact = has("--exact");
    files.retain(|f| {
        filter.as_ref().is_none_or(|want| {
            let name = stem(f);
            if exact {
                &name == want
            } else {
                name.contains(want.as_str())
            }
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut failed = 0;
    for file in &files {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if filter.as_ref().is_some_and(|f| !name.contains(f.as_str())) {
            continue;
        }
        let dir = sql_dir.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let dir = dir.clone();
            async move { Ok::<_, Error>(Db::new(dir)) }
        });
        match rt.block_on(runner.run_file_async(file)) {
            Ok(()) => println!("ok   {}", file.display()),
            Err(e) => {
                failed += 1;
                println!("FAIL {}\n{e}", file.display());
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} rule test file(s) failed");
        std::process::exit(1);
    }
}
