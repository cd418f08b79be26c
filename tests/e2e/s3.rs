//! The S3 path against a real S3-compatible server (s3s-fs) on loopback.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{QUIET, Server, external, post, read_table, rows, strings, track};

struct S3Server {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ACCESS: &str = "kairos-test-access";
const SECRET: &str = "kairos-test-secret-key";
const BUCKET: &str = "lake";

fn start_s3s(bin: &str) -> S3Server {
    let root = tempfile::tempdir().expect("tempdir");
    // s3s-fs maps each bucket to a folder under its root.
    std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    let child = Command::new(bin)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            ACCESS,
            "--secret-key",
            SECRET,
        ])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn s3s-fs");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    S3Server { child, port, root }
}

#[tokio::test]
async fn s3_round_trip_stage_publish_restart() {
    let Some(bin) = external("KAIROS_TEST_S3S_FS") else {
        return;
    };
    let s3 = start_s3s(&bin);
    let env = vec![
        (
            "AWS_ENDPOINT".to_string(),
            format!("http://127.0.0.1:{}", s3.port),
        ),
        ("AWS_ALLOW_HTTP".to_string(), "true".to_string()),
        ("AWS_ACCESS_KEY_ID".to_string(), ACCESS.to_string()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET.to_string()),
        ("AWS_REGION".to_string(), "us-east-1".to_string()),
    ];
    let data = format!("s3://{BUCKET}/prod/kairos");
    let mut server = Server::start_with_env(&data, QUIET, env);
    let batch = json!({"batch": [
        track("u1", "s3-1", "Order Completed"),
        track("u2", "s3-2", "Product Viewed"),
        {"type": "identify", "userId": "u1", "messageId": "s3-3", "traits": {"email": "u1@example.com"}},
    ]});
    assert_eq!(post(&server, "/v1/batch", &batch).await.status(), 200);
    // Acked means a staging object exists in the bucket before any publish.
    let staged = s3.root.path().join(BUCKET).join("prod/kairos/_staging");
    assert!(staged.is_dir(), "staging objects are in the bucket");
    server.stop();

    // A restart and a duplicate: still stored once.
    server.restart();
    assert_eq!(post(&server, "/v1/batch", &batch).await.status(), 200);
    server.stop();

    let lake = s3.root.path().join(BUCKET).join("prod/kairos");
    let events = read_table(&lake, "events");
    let mut ids: Vec<_> = strings(&events, "event_id").into_iter().flatten().collect();
    ids.sort();
    assert_eq!(ids, vec!["s3-1", "s3-2"]);
    assert_eq!(rows(&read_table(&lake, "profiles")), 1);
    let leftovers: Vec<_> = crate::support::files_under(&lake.join("_staging"))
        .into_iter()
        .filter(|p| p.ends_with(".log"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "published segments are deleted: {leftovers:?}"
    );
}
