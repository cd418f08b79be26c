//! Other engines read the tables with a plain glob: DuckDB and polars.

use std::process::Command;

use serde_json::json;

use crate::support::{QUIET, Server, external, post, track};

#[tokio::test]
async fn duckdb_and_polars_read_the_published_tables_with_a_glob() {
    let Some(python) = external("KAIROS_TEST_PYTHON") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    let items: Vec<_> = (0..50)
        .map(|i| {
            track(
                &format!("u{}", i % 7),
                &format!("rd-{i}"),
                if i % 5 == 0 {
                    "Order Completed"
                } else {
                    "Product Viewed"
                },
            )
        })
        .collect();
    assert_eq!(
        post(&server, "/v1/batch", &json!({"batch": items}))
            .await
            .status(),
        200
    );
    server.stop();

    let script = r#"
import sys, duckdb, polars as pl
root = sys.argv[1]
glob = f"{root}/events/**/*.parquet"
con = duckdb.connect()
n, purchases, revenue, ts_type, date = con.execute(f"""
  select count(*), count(*) filter (where event_type = 'purchase'), sum(revenue) filter (where event_type = 'purchase'),
         typeof(any_value(timestamp)), any_value(date)
  from read_parquet('{glob}', hive_partitioning = true)""").fetchone()
df = pl.read_parquet(glob, hive_partitioning=True)
assert df.height == n, (df.height, n)
assert str(df.schema["timestamp"]) == "Datetime(time_unit='us', time_zone='UTC')", df.schema["timestamp"]
assert df.schema["revenue"] == pl.Float64
print(n, purchases, revenue, ts_type, date)
"#;
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "50 10 390.0 TIMESTAMP WITH TIME ZONE 2026-11-20"
    );
}
