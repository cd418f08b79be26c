//! Bugs the simulator found, each pinned by a targeted run of the real
//! code over the fault store (the rest have unit tests beside the fix).

use std::sync::Arc;
use std::time::Duration;

use kairos_core::Channel;
use kairos_messaging::{Dispatcher, Outgoing, Settings};
use kairos_sim::provider::{Provider, ProviderLog, Weather};
use kairos_sim::store::{FaultPlan, FaultStore};
use kairos_storage::DataRoot;

fn root(plan: FaultPlan) -> (FaultStore, DataRoot) {
    let store = FaultStore::new(plan, 1);
    let root = DataRoot {
        store: Arc::new(store.clone()),
        local_dir: None,
        url: "sim://regressions".into(),
    };
    (store, root)
}

/// Found by kairos-sim seed 41: a worker whose intent PUT failed once
/// dropped the chunk ("in doubt until restart") and went on; with no
/// restart the order confirmation never went.
#[tokio::test(start_paused = true)]
async fn a_failed_intent_write_is_retried_and_the_message_still_goes() {
    let (store, root) = root(FaultPlan {
        fail_at: vec![1],
        ..FaultPlan::default()
    });
    let clock = kairos_core::time::Clock::manual(1_000);
    let step = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let log = Arc::new(std::sync::Mutex::new(ProviderLog::default()));
    let providers = Provider::all(1, Weather::CALM, &clock, &step, &log);
    let d = Dispatcher::start(root, providers, Settings::default());
    d.submit(Outgoing {
        send_id: "order_confirmation:0:c1:order:1".into(),
        rule: "order_confirmation".into(),
        step: 0,
        customer_id: "c1".into(),
        channel: Channel::Email,
        to: "c1@example.com".into(),
        rendered: Default::default(),
        unsubscribe_url: None,
        reference: String::new(),
        status_url: String::new(),
        send_at: 1_000,
    })
    .expect("submit");
    tokio::time::timeout(Duration::from_secs(600), d.finish())
        .await
        .expect("the worker finishes");
    assert_eq!(store.trace().len(), 1, "the intent PUT failed once");
    let taken = log.lock().expect("lock").accepted.len();
    assert_eq!(taken, 1, "and the message still went");
}
