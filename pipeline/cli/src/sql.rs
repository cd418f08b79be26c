//! `kairos sql`: DataFusion over every table under the data root, by name,
//! as one statement list on the command line or an interactive prompt.
//!
//! The session is read-only towards the lake: `INSERT` and `COPY` are
//! refused, because a file written into a table's folder by hand would
//! bypass the publish step that makes every glob see each row once. It
//! reads nothing outside the data root either: `CREATE EXTERNAL TABLE`
//! (which would read any file the user may, `/etc/passwd` included, and
//! show it to whoever sees the output) is refused. Views (`CREATE VIEW`)
//! and in-memory tables live in the session and are allowed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::DFParser;
use futures::StreamExt as _;

use kairos_core::Config;
use kairos_report::Lake;
use kairos_storage::DataRoot;

/// `kairos sql` flags.
#[derive(clap::Args)]
pub struct SqlArgs {
    /// SQL to run; several statements separated by `;` run in order.
    /// Without it, an interactive prompt (history in ~/.kairos_sql_history).
    pub query: Option<String>,
    /// Data root: a directory or s3://bucket/prefix. Default from config
    /// (./kairos-data).
    #[arg(long)]
    pub data: Option<String>,
    /// How results are printed.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Result format.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line (RFC 4180 quoting).
    Csv,
    /// One JSON array of objects per statement; nulls written out.
    Json,
}

/// Opens the lake for queries: every table registered by name.
pub fn open(data: &str) -> anyhow::Result<SessionContext> {
    // DataRoot::open creates a missing directory (servers start on an empty
    // root); a query against one is almost always a mistyped path.
    if !data.contains("://") && !std::path::Path::new(data).is_dir() {
        anyhow::bail!(
            "no data root at {data}: pass --data DIR (or s3://bucket/prefix), or create one with `kairos demo` or `kairos replay`"
        );
    }
    let root = DataRoot::open(data)?;
    Ok(Lake::for_queries(&root, &kairos_server::tables::schemas())?.ctx)
}

/// `kairos sql`.
pub fn sql(config: Config, args: SqlArgs, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let data = args.data.unwrap_or(config.storage.data);
    let ctx = open(&data)?;
    match args.query {
        Some(text) => {
            let mut out = std::io::stdout().lock();
            rt.block_on(run(&ctx, &text, args.format, &mut out))?;
            out.flush()?;
            Ok(())
        }
        None => prompt(&ctx, args.format, &data, rt),
    }
}

/// Runs every statement of `text` in order, writing each result to `out`;
/// stops at the first error. Returns the rows of each result.
pub async fn run(
    ctx: &SessionContext,
    text: &str,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<Vec<usize>> {
    let statements = DFParser::parse_sql(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let options = SQLOptions::new().with_allow_dml(false);
    let mut rows = Vec::with_capacity(statements.len());
    for (i, statement) in statements.into_iter().enumerate() {
        let which = || format!("statement {}", i + 1);
        let plan = ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(explain)
            .with_context(which)?;
        if let datafusion::logical_expr::LogicalPlan::Ddl(
            datafusion::logical_expr::DdlStatement::CreateExternalTable(t),
        ) = &plan
        {
            anyhow::bail!(
                "{}: CREATE EXTERNAL TABLE {} is refused: kairos sql reads only the tables of the data root (\\d lists them); name a query with CREATE VIEW instead",
                which(),
                t.name
            );
        }
        options.verify_plan(&plan).map_err(|_| {
            anyhow::anyhow!(
                "{}: kairos sql is read-only (INSERT and COPY are refused): tables are written only by Kairos' publish step; to export, print the result with --format csv or json",
                which()
            )
        })?;
        let frame = ctx.execute_logical_plan(plan).await.with_context(which)?;
        let schema: SchemaRef = frame.schema().inner().clone();
        let stream = frame.execute_stream().await.with_context(which)?;
        rows.push(
            write(schema, stream, format, out)
                .await
                .with_context(which)?,
        );
    }
    Ok(rows)
}

/// Names the registered tables when a query names one that does not exist.
fn explain(e: datafusion::error::DataFusionError) -> anyhow::Error {
    let message = e.to_string();
    if message.contains("table") && message.contains("not found") {
        let mut names: Vec<String> = kairos_server::tables::schemas()
            .iter()
            .map(|(n, _)| n.to_string())
            .collect();
        names.sort();
        return anyhow::anyhow!("{message}; the tables are {}", names.join(", "));
    }
    anyhow::anyhow!("{message}")
}

/// Writes one result; returns its row count. CSV and JSON stream batch by
/// batch; the table needs every row to size its columns.
async fn write(
    schema: SchemaRef,
    mut stream: datafusion::physical_plan::SendableRecordBatchStream,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<usize> {
    let mut rows = 0;
    match format {
        Format::Table => {
            let mut batches: Vec<RecordBatch> = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                batches.push(batch);
            }
            // DDL (CREATE VIEW, SET) answers with no columns: nothing to show.
            if !schema.fields().is_empty() {
                if batches.is_empty() {
                    batches.push(RecordBatch::new_empty(schema));
                }
                writeln!(
                    out,
                    "{}",
                    arrow::util::pretty::pretty_format_batches(&batches)?
                )?;
            }
        }
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            let mut wrote = false;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
                wrote = true;
            }
            // The header alone for an empty result, so a reader still sees the columns.
            if !wrote && !schema.fields().is_empty() {
                writer.write(&RecordBatch::new_empty(schema))?;
            }
        }
        Format::Json => {
            let mut writer = arrow::json::WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, arrow::json::writer::JsonArray>(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            // An empty result still prints `[]`: one document per statement.
            writer.finish()?;
            drop(writer);
            out.write_all(b"\n")?;
        }
    }
    Ok(rows)
}

const HELP: &str = "\
Statements end with `;` and may span lines. Tables: events, profiles,
profile_changes, identities, firings, assignments, sends, deliveries, each
with `date` and `hour` (strings) from its folders; docs/tables.md has them all.
  \\d            list the tables
  \\d TABLE      a table's columns
  \\format F     print results as table, csv or json
  \\q            quit (or Ctrl-D); Ctrl-C drops the statement being typed";

/// The interactive prompt: line editing, history across sessions,
/// multi-line statements, and the time each one took.
fn prompt(
    ctx: &SessionContext,
    mut format: Format,
    data: &str,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    use rustyline::error::ReadlineError;

    let mut editor = rustyline::DefaultEditor::new()?;
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kairos_sql_history"));
    if let Some(h) = &history {
        // A first session has no history file yet.
        let _ = editor.load_history(h);
    }
    eprintln!("kairos sql on {data}; \\? for help, \\q to quit");
    let mut pending = String::new();
    loop {
        let line = match editor.readline(if pending.is_empty() {
            "kairos> "
        } else {
            "   ...> "
        }) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                continue;
            }
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(e.into()),
        };
        let trimmed = line.trim();
        if pending.is_empty() && trimmed.starts_with('\\') {
            let _ = editor.add_history_entry(trimmed);
            match command(trimmed, &mut format) {
                Command::Quit => break,
                Command::Print(text) => eprintln!("{text}"),
                Command::Sql(sql) => execute(ctx, &sql, format, rt),
            }
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        pending.push_str(&line);
        pending.push('\n');
        if !trimmed.ends_with(';') {
            continue;
        }
        let statement = std::mem::take(&mut pending);
        let _ = editor.add_history_entry(statement.trim());
        execute(ctx, &statement, format, rt);
    }
    if let Some(h) = &history {
        editor
            .save_history(h)
            .with_context(|| format!("saving history to {}", h.display()))?;
    }
    Ok(())
}

/// What a backslash command asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Quit,
    Print(String),
    Sql(String),
}

fn command(line: &str, format: &mut Format) -> Command {
    let mut words = line.split_whitespace();
    match (words.next().unwrap_or(""), words.next()) {
        ("\\q" | "\\quit", _) => Command::Quit,
        ("\\d", None) => Command::Sql(
            "SELECT table_name FROM information_schema.tables \
             WHERE table_schema = 'public' ORDER BY table_name"
                .into(),
        ),
        ("\\d", Some(table)) => Command::Sql(format!("DESCRIBE {table}")),
        ("\\format", Some(f)) => match <Format as clap::ValueEnum>::from_str(f, true) {
            Ok(f) => {
                *format = f;
                Command::Print(format!(
                    "results as {}",
                    line.split_whitespace().nth(1).unwrap_or("")
                ))
            }
            Err(_) => Command::Print(format!("unknown format {f:?}: use table, csv or json")),
        },
        ("\\?" | "\\h" | "\\help", _) => Command::Print(HELP.into()),
        (other, _) => Command::Print(format!("unknown command {other}; \\? lists them")),
    }
}

/// Runs statements for the prompt: errors are printed, not fatal.
fn execute(ctx: &SessionContext, sql: &str, format: Format, rt: &tokio::runtime::Runtime) {
    let started = Instant::now();
    let mut out = std::io::stdout().lock();
    match rt.block_on(run(ctx, sql, format, &mut out)) {
        Ok(rows) => {
            let _ = out.flush();
            if let Some(n) = rows.last() {
                eprintln!(
                    "{n} row{} in {:.3} s",
                    if *n == 1 { "" } else { "s" },
                    started.elapsed().as_secs_f64()
                );
            }
        }
        Err(e) => eprintln!("error: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn query(ctx: &SessionContext, sql: &str, format: Format) -> anyhow::Result<String> {
        let mut out = Vec::new();
        run(ctx, sql, format, &mut out).await?;
        Ok(String::from_utf8(out).expect("utf8"))
    }

    fn lake() -> (tempfile::TempDir, SessionContext) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = open(dir.path().to_str().expect("utf8")).expect("open");
        (dir, ctx)
    }

    #[tokio::test]
    async fn every_table_is_registered_with_its_columns_and_folders() {
        let (_dir, ctx) = lake();
        for (name, schema) in kairos_server::tables::schemas() {
            let out = query(
                &ctx,
                &format!("SELECT count(*) AS n FROM {name}"),
                Format::Csv,
            )
            .await
            .expect(name);
            assert_eq!(out, "n\n0\n", "{name} with no files is empty");
            let columns = query(&ctx, &format!("DESCRIBE {name}"), Format::Csv)
                .await
                .expect(name);
            for field in schema.fields() {
                assert!(
                    columns.contains(&format!("\n{},", field.name())),
                    "{name}.{}",
                    field.name()
                );
            }
            assert!(
                columns.contains("\ndate,") && columns.contains("\nhour,"),
                "{columns}"
            );
        }
    }

    #[tokio::test]
    async fn formats() {
        let (_dir, ctx) = lake();
        let sql = "SELECT * FROM (VALUES (1, 'a,b', NULL), (2, 'c', 2.5)) AS t(n, s, x) ORDER BY n";
        assert_eq!(
            query(&ctx, sql, Format::Csv).await.expect("csv"),
            "n,s,x\n1,\"a,b\",\n2,c,2.5\n"
        );
        assert_eq!(
            query(&ctx, sql, Format::Json).await.expect("json"),
            "[{\"n\":1,\"s\":\"a,b\",\"x\":null},{\"n\":2,\"s\":\"c\",\"x\":2.5}]\n"
        );
        let table = query(&ctx, sql, Format::Table).await.expect("table");
        assert!(table.contains("| 1 | a,b |     |"), "{table}");
        // Empty results keep their columns (CSV) and are valid JSON.
        let empty = "SELECT customer_id FROM events";
        assert_eq!(
            query(&ctx, empty, Format::Csv).await.expect("csv"),
            "customer_id\n"
        );
        assert_eq!(
            query(&ctx, empty, Format::Json).await.expect("json"),
            "[]\n"
        );
    }

    #[tokio::test]
    async fn statements_run_in_order_and_views_persist() {
        let (_dir, ctx) = lake();
        let out = query(
            &ctx,
            "CREATE VIEW buyers AS SELECT customer_id FROM events WHERE event_type = 'purchase'; \
             SELECT count(*) AS n FROM buyers;",
            Format::Csv,
        )
        .await
        .expect("two statements");
        assert_eq!(out, "n\n0\n");
        assert_eq!(
            query(&ctx, "SELECT count(*) AS n FROM buyers", Format::Csv)
                .await
                .expect("the view outlives its statement"),
            "n\n0\n"
        );
    }

    #[tokio::test]
    async fn errors_say_what_to_do() {
        let (dir, ctx) = lake();
        let e = query(&ctx, "SELECT * FROM evnts", Format::Table)
            .await
            .expect_err("unknown table");
        assert!(
            format!("{e:#}").contains("the tables are assignments, deliveries, events"),
            "{e:#}"
        );
        let e = query(
            &ctx,
            "SELECT 1; INSERT INTO events (event_id) VALUES ('x')",
            Format::Csv,
        )
        .await
        .expect_err("read-only");
        assert!(
            format!("{e:#}").starts_with("statement 2: kairos sql is read-only"),
            "{e:#}"
        );
        let secret = dir.path().join("outside.csv");
        std::fs::write(&secret, "root:x:0:0\n").expect("write");
        let e = query(
            &ctx,
            &format!(
                "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '{}'; SELECT * FROM pw",
                secret.display()
            ),
            Format::Csv,
        )
        .await
        .expect_err("outside the data root");
        assert!(
            format!("{e:#}").starts_with("statement 1: CREATE EXTERNAL TABLE pw is refused"),
            "{e:#}"
        );
        let e = query(&ctx, "SELEC 1", Format::Csv)
            .await
            .expect_err("syntax");
        assert!(format!("{e:#}").contains("SELEC"), "{e:#}");
        let missing = dir.path().join("nope");
        let Err(e) = open(missing.to_str().expect("utf8")) else {
            panic!("a missing root opened");
        };
        assert!(e.to_string().contains("pass --data"), "{e}");
        assert!(!missing.exists(), "a query never creates a data root");
    }

    #[test]
    fn backslash_commands() {
        let mut format = Format::Table;
        assert_eq!(command("\\q", &mut format), Command::Quit);
        assert!(
            matches!(command("\\d", &mut format), Command::Sql(s) if s.contains("information_schema.tables"))
        );
        assert_eq!(
            command("\\d events", &mut format),
            Command::Sql("DESCRIBE events".into())
        );
        assert!(matches!(
            command("\\format CSV", &mut format),
            Command::Print(_)
        ));
        assert!(format == Format::Csv);
        assert!(
            matches!(command("\\format xml", &mut format), Command::Print(s) if s.contains("table, csv or json"))
        );
        assert!(format == Format::Csv, "a bad format keeps the last one");
        assert!(
            matches!(command("\\x", &mut format), Command::Print(s) if s.contains("unknown command"))
        );
    }
}
