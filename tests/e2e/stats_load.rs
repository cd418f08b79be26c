//! Issue 15: statistics that never hang. Analyses of experiments with
//! millions to a trillion recipients per arm (statrs' t quantile looped
//! forever past ~7.25M per arm) answer at once, and while several run,
//! `/healthz` keeps answering and SIGTERM stops the server promptly.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{QUIET, Server};

/// Two evenly split arms of `n` recipients, counts written as floats as a
/// warehouse export writes them.
fn body(n: f64) -> Value {
    let arm = |name: &str, rate: f64, spend: f64| {
        let conversions = (n * rate).round();
        json!({
            "name": name, "n": n, "conversions": conversions,
            "revenue_sum": conversions * spend, "revenue_sum_squares": conversions * spend * spend * 1.5
        })
    };
    json!({"arms": [arm("holdout", 0.031, 52.0), arm("triggered", 0.0314, 52.5)]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_analyses_answer_and_never_block_health_or_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    // A hang must fail the test, not stall it.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");

    let sizes = [7.25e6, 7.5e6, 1e7, 1.5e7, 1e9, 1e12, 7.5e6, 1e12];
    let analyses: Vec<_> = sizes
        .iter()
        .map(|&n| {
            let (client, url) = (client.clone(), server.url("/api/analyze"));
            tokio::spawn(async move {
                let started = Instant::now();
                let r = client
                    .post(url)
                    .json(&body(n))
                    .send()
                    .await
                    .expect("analysis answered");
                let status = r.status().as_u16();
                let v: Value = r.json().await.expect("json");
                (n, status, v, started.elapsed())
            })
        })
        .collect();
    // Meanwhile the health check answers promptly, every time.
    for _ in 0..10 {
        let started = Instant::now();
        let r = client
            .get(server.url("/healthz"))
            .send()
            .await
            .expect("healthz");
        assert_eq!(r.status().as_u16(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "/healthz took {:?} during the analyses",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for a in analyses {
        let (n, status, v, took) = a.await.expect("task");
        eprintln!("{n:e} per arm: {status} in {took:?}");
        assert_eq!(status, 200, "{n:e} per arm: {v}");
        let c = &v["comparisons"][0]["conversion"]["absolute"];
        assert_eq!(c["status"], "estimated", "{n:e}: {c}");
        assert!(c["dof"].as_f64().expect("dof") > n, "{n:e}: {c}");
        let ci = c["ci"].as_array().expect("ci");
        assert!(ci[0].as_f64().expect("lo") < ci[1].as_f64().expect("hi"));
        assert_eq!(
            v["arms"][0]["n"].as_f64(),
            Some(n),
            "the float count was taken"
        );
    }

    // A count that is not whole is refused, naming the field once.
    let mut bad = body(1e6);
    bad["arms"][1]["n"] = json!(1000.5);
    let r = client
        .post(server.url("/api/analyze"))
        .json(&bad)
        .send()
        .await
        .expect("400");
    assert_eq!(r.status().as_u16(), 400);
    let e: Value = r.json().await.expect("json");
    assert_eq!(e["path"], "arms[1].n", "{e}");
    let mut bad = body(1e6);
    bad["alpha"] = json!(2);
    let e: Value = client
        .post(server.url("/api/analyze"))
        .json(&bad)
        .send()
        .await
        .expect("400")
        .json()
        .await
        .expect("json");
    assert_eq!(
        e["error"], "alpha: must lie strictly between 0 and 1, got 2",
        "{e}"
    );

    // SIGTERM while clients keep posting the largest analyses: the server
    // stops within seconds, and the clients then see it gone.
    let posters: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), server.url("/api/analyze"));
            tokio::spawn(async move {
                let mut answered = 0;
                while client.post(&url).json(&body(1e12)).send().await.is_ok() {
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stopped cleanly");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?} with analyses in flight",
        started.elapsed()
    );
    let mut answered = 0;
    for p in posters {
        answered += tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("clients see the server gone")
            .expect("task");
    }
    assert!(answered > 0, "no analysis was answered before SIGTERM");
}
