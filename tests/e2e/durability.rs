//! Acknowledged means durable; retried means once.

use std::collections::HashSet;

use serde_json::json;

use crate::support::{QUIET, Server, post, read_table, rows, strings, track};

#[tokio::test]
async fn same_message_id_is_stored_once_across_requests_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    let batch = json!({"batch": [track("u1", "dup-1", "Order Completed"), track("u2", "dup-2", "Order Completed")]});
    for _ in 0..3 {
        assert_eq!(post(&server, "/v1/batch", &batch).await.status(), 200);
    }
    server.stop();
    assert_eq!(rows(&read_table(dir.path(), "events")), 2);

    // After a restart the ids come from the published files.
    server.restart();
    let again = json!({"batch": [track("u1", "dup-1", "Order Completed"), track("u3", "dup-3", "Order Completed")]});
    assert_eq!(post(&server, "/v1/batch", &again).await.status(), 200);
    server.stop();
    let events = read_table(dir.path(), "events");
    let mut ids: Vec<_> = strings(&events, "event_id").into_iter().flatten().collect();
    ids.sort();
    assert_eq!(ids, vec!["dup-1", "dup-2", "dup-3"]);
}

#[tokio::test]
async fn kill_9_right_after_acks_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(dir.path().to_str().expect("utf8"), QUIET);
    let c = reqwest::Client::new();
    // 40 concurrent senders, 25 batches of 20 each: group commits share fsyncs.
    let mut tasks = Vec::new();
    for s in 0..40 {
        let c = c.clone();
        let url = server.url("/v1/batch");
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for b in 0..25 {
                let ids: Vec<String> = (0..20).map(|i| format!("k9-{s}-{b}-{i}")).collect();
                let items: Vec<_> = ids
                    .iter()
                    .map(|id| track(&format!("cust-{s}"), id, "Product Viewed"))
                    .collect();
                let r = c
                    .post(&url)
                    .json(&json!({"batch": items}))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status(), 200);
                acked.extend(ids);
            }
            acked
        }));
    }
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await.expect("sender"));
    }
    // Nothing was published yet (interval is an hour): all of it is staged only.
    assert_eq!(rows(&read_table(dir.path(), "events")), 0);
    server.kill9();

    server.restart();
    // Clients whose acks were lost would retry: resend a slice of them.
    let retry: Vec<_> = (0..20)
        .map(|i| track("cust-0", &format!("k9-0-0-{i}"), "Product Viewed"))
        .collect();
    assert_eq!(
        post(&server, "/v1/batch", &json!({"batch": retry}))
            .await
            .status(),
        200
    );
    server.stop();

    let ids: Vec<String> = strings(&read_table(dir.path(), "events"), "event_id")
        .into_iter()
        .flatten()
        .collect();
    let unique: HashSet<_> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "no event twice");
    assert_eq!(unique, acked, "every acknowledged event, and only those");
    assert_eq!(acked.len(), 40 * 25 * 20);
}

#[tokio::test]
async fn two_ingest_processes_on_one_root_store_a_shared_message_id_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_str().expect("utf8");
    let mut a = Server::start(root, QUIET);
    let mut b = Server::start(root, QUIET);
    // A client retried against another instance behind a load balancer.
    for s in [&a, &b] {
        let batch = json!({"batch": [track("u1", "lb-1", "Order Completed")]});
        assert_eq!(post(&s, "/v1/batch", &batch).await.status(), 200);
    }
    let own = json!({"batch": [track("u2", "lb-2", "Order Completed")]});
    assert_eq!(post(&b, "/v1/batch", &own).await.status(), 200);
    a.stop();
    b.stop();
    let mut ids: Vec<_> = strings(&read_table(dir.path(), "events"), "event_id")
        .into_iter()
        .flatten()
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["lb-1", "lb-2"]);
}
