//! Starting and stopping a real server, and reading its tables.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The kairos binary: `KAIROS_BIN`, else the workspace's debug build.
pub fn kairos_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KAIROS_BIN") {
        return PathBuf::from(p);
    }
    built_bin("kairos")
}

/// The developer tools' binary, beside [`kairos_bin`].
pub fn kairos_dev_bin() -> PathBuf {
    let bin = kairos_bin().with_file_name("kairos-dev");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

fn built_bin(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug").join(name);
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` first or set KAIROS_BIN",
        bin.display()
    );
    bin
}

/// A running `kairos serve`, killed on drop.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// The data root argument.
    pub data: String,
    config: PathBuf,
    env: Vec<(String, String)>,
    /// `--insecure-local`: loopback needs no key. True for the tests of
    /// other features; the security tests start servers with the defaults.
    insecure_local: bool,
}

impl Server {
    /// Starts `kairos serve --data DATA --listen 127.0.0.1:0` with `toml` as its config.
    pub fn start(data: &str, toml: &str) -> Server {
        Server::start_with_env(data, toml, Vec::new())
    }

    /// Like [`Server::start`], with the rules in `rules` and the templates
    /// in `templates` instead of the repo's.
    pub fn start_with_rules(data: &str, toml: &str, rules: &Path, templates: &Path) -> Server {
        Server::start_with_env(
            data,
            toml,
            vec![
                ("KAIROS__RULES__DIR".into(), rules.display().to_string()),
                (
                    "KAIROS__MESSAGING__TEMPLATES".into(),
                    templates.display().to_string(),
                ),
            ],
        )
    }

    /// Like [`Server::start`], but with the safe defaults: no
    /// `--insecure-local`, so the first start generates a write key and a
    /// read token (see [`Server::generated`]) unless `toml` sets them.
    pub fn start_secure(data: &str, toml: &str) -> Server {
        Server::start_as(data, toml, Vec::new(), false)
    }

    /// The write key and read token the server generated into its data root.
    pub fn generated(&self) -> (String, String) {
        let path = Path::new(&self.data).join("_kairos/access.json");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&text).expect("access.json");
        (
            v["write_key"].as_str().expect("write_key").to_string(),
            v["read_token"].as_str().expect("read_token").to_string(),
        )
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_with_env(data: &str, toml: &str, env: Vec<(String, String)>) -> Server {
        Server::start_as(data, toml, env, true)
    }

    fn start_as(
        data: &str,
        toml: &str,
        env: Vec<(String, String)>,
        insecure_local: bool,
    ) -> Server {
        let config = std::env::temp_dir().join(format!(
            "kairos-test-{}-{}.toml",
            std::process::id(),
            unique()
        ));
        std::fs::write(&config, toml).expect("write config");
        let mut s = Server {
            child: None,
            base: String::new(),
            data: data.to_string(),
            config,
            env,
            insecure_local,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(kairos_bin());
        cmd.args([
            "serve",
            "--data",
            &self.data,
            "--listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&self.config)
        .args(self.insecure_local.then_some("--insecure-local"))
        .env("RUST_LOG", "warn")
        .env(
            "KAIROS__RULES__DIR",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql"),
        )
        .env("KAIROS__MESSAGING__TEMPLATES", repo_templates())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn kairos");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listen line");
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        self.base = base;
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = probe::healthy(&format!("{}/healthz", self.base));
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "server not healthy within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The server's resident memory, bytes (Linux `/proc`).
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kb * 1024
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM and wait: a clean stop publishes everything staged.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let status = child.wait().expect("wait");
            assert!(status.success(), "kairos exited with {status}");
        }
    }

    /// SIGKILL: no chance to publish or flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            let _ = child.wait();
        }
    }

    /// Starts again on the same data root and config (a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.config);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Tiny blocking helper so `wait_healthy` needs no runtime.
mod probe {
    pub fn healthy(url: &str) -> bool {
        let Some(rest) = url.strip_prefix("http://") else {
            return false;
        };
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let Ok(mut s) = std::net::TcpStream::connect(host) else {
            return false;
        };
        use std::io::{Read, Write};
        let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if write!(
            s,
            "GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .is_err()
        {
            return false;
        }
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf.starts_with("HTTP/1.1 200")
    }
}

/// Every batch of every `*.parquet` under `dir/table/` (recursively).
pub fn read_table(dir: &Path, table: &str) -> Vec<RecordBatch> {
    let mut files = Vec::new();
    collect(&dir.join(table), &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let file = std::fs::File::open(&f).expect("open parquet");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet")
            .build()
            .expect("reader");
        for b in reader {
            out.push(b.expect("batch"));
        }
    }
    out
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
}

/// Values of a string column across batches.
pub fn strings(batches: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    use arrow::array::{Array, StringArray};
    let mut out = Vec::new();
    for b in batches {
        let col = b
            .column_by_name(column)
            .unwrap_or_else(|| panic!("no column {column}"));
        let col = col
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap_or_else(|| panic!("{column} is not Utf8"));
        for i in 0..col.len() {
            out.push(col.is_valid(i).then(|| col.value(i).to_string()));
        }
    }
    out
}

/// Row count across batches.
pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// A config with a long publish interval, so only a stop publishes.
pub const QUIET: &str = "[publish]\ninterval_secs = 3600\n";

/// An external test dependency, or a clear failure saying how to get it.
pub fn external(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("KAIROS_SKIP_EXTERNAL").is_ok() => {
            eprintln!("skipping: {var} unset and KAIROS_SKIP_EXTERNAL set");
            None
        }
        _ => panic!(
            "{var} is not set: run `.ci/run` (or `source ~/.cache/kairos/test-env.sh` after `.ci/setup-test-env`), or set KAIROS_SKIP_EXTERNAL=1 to skip"
        ),
    }
}

/// A Segment track call with a fixed messageId.
pub fn track(user: &str, message_id: &str, event: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "track", "userId": user, "event": event, "messageId": message_id,
        "timestamp": "2026-11-20T10:15:00Z",
        "properties": {"product_id": "sku-1", "price": 19.5, "revenue": 39.0, "currency": "EUR", "order_id": format!("o-{message_id}"), "quantity": 2},
        "context": {"timezone": "Europe/Berlin", "library": {"name": "analytics-node", "version": "6.0.0"}}
    })
}

/// POSTs `body` as JSON to `path` on `server`.
pub async fn post(server: &Server, path: &str, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .expect("send")
}

/// Waits until the rules checkpoint reached `at` (the event clock).
pub fn wait_clock(dir: &Path, at: &str) {
    let want = chrono::DateTime::parse_from_rfc3339(at)
        .expect("time")
        .timestamp_micros();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cp = std::fs::read(dir.join("_kairos/rules/checkpoint.json")).ok();
        let done = cp
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["done"] == true && v["clock_us"].as_i64().unwrap_or(0) >= want);
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "rules never reached {at}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (rule, customer_id, dedupe_key) of every firing, duplicates kept.
pub fn firings(dir: &Path) -> Vec<(String, String, String)> {
    let batches = read_table(dir, "firings");
    let r = strings(&batches, "rule");
    let c = strings(&batches, "customer_id");
    let k = strings(&batches, "dedupe_key");
    r.into_iter()
        .zip(c)
        .zip(k)
        .map(|((r, c), k)| {
            (
                r.unwrap_or_default(),
                c.unwrap_or_default(),
                k.unwrap_or_default(),
            )
        })
        .collect()
}

/// The repository's `templates/` folder.
pub fn repo_templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates")
}

/// A templates folder: the repository's plus `extra` (name, text) files.
pub fn templates_with(extra: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for e in std::fs::read_dir(repo_templates()).expect("templates/") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, dir.path().join(p.file_name().expect("name"))).expect("copy");
    }
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).expect("write template");
    }
    dir
}

/// Runs `kairos ARGS` in `dir` with the repo's templates, asserts it
/// succeeded, and returns its stdout.
pub fn run_kairos(args: &[&str], dir: &Path) -> String {
    run(&kairos_bin(), args, dir)
}

/// [`run_kairos`] for `kairos-dev`.
pub fn run_kairos_dev(args: &[&str], dir: &Path) -> String {
    run(&kairos_dev_bin(), args, dir)
}

fn run(bin: &Path, args: &[&str], dir: &Path) -> String {
    let started = Instant::now();
    let out = Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env("KAIROS__MESSAGING__TEMPLATES", repo_templates())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kairos");
    assert!(
        out.status.success(),
        "kairos {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("kairos {} took {:.1?}", args[0], started.elapsed());
    String::from_utf8(out.stdout).expect("utf8 stdout")
}

/// Every file under `dir`, recursively, as sorted path strings (none when
/// `dir` does not exist).
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out.sort();
    out
}
