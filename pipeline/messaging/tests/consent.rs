//! Consent is checked again when a waiting message goes.
//!
//! Found by the simulator (kairos-sim seed 154): a welcome scheduled for
//! 10:00 was released after a downtime in the batch that also carried the
//! customer's unsubscribe, dated after 10:00. The opt-out cancelled only
//! messages due after it, so the welcome went to a customer who had
//! unsubscribed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kairos_core::Channel;
use kairos_core::event::{Commerce, EventRecord, ProfileUpdate};
use kairos_messaging::{Adapter, Dispatcher, Failure, Messaging, Outgoing, Receipt, Settings};
use kairos_policy::stage::{Decision, SendRow};
use kairos_policy::tables::Decided;
use kairos_rules::TickReport;
use kairos_rules::runner::{BatchStage, Outputs};
use kairos_rules::state::State;
use kairos_storage::DataRoot;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

#[async_trait::async_trait]
impl Adapter for Recorder {
    fn provider(&self) -> &str {
        "recorder"
    }
    async fn send(&self, m: &Outgoing) -> Result<Receipt, Failure> {
        self.0.lock().expect("lock").push(m.send_id.clone());
        Ok(Receipt {
            provider: "recorder".into(),
            provider_message_id: m.send_id.clone(),
        })
    }
}

fn scheduled(customer: &str, rule: &str, at: i64) -> SendRow {
    SendRow {
        send_id: format!("{rule}:0:{customer}:k"),
        rule: rule.into(),
        step: 0,
        customer_id: customer.into(),
        dedupe_key: "k".into(),
        arm: kairos_experiments::Arm::Scheduled,
        variant: None,
        channel: Some(Channel::Email),
        decision: Decision::Send,
        reason: Some("scheduled".into()),
        send_at: Some(at),
        decided_at: at - 20 * 3_600_000_000,
        new_assignment: true,
    }
}

#[tokio::test]
async fn a_waiting_message_does_not_go_after_its_customer_opted_out() {
    let (rules, errors) = kairos_rules::check_dir(&repo().join("sql")).await;
    assert!(errors.is_empty(), "{errors:?}");
    let templates =
        Arc::new(kairos_messaging::Templates::load(&repo().join("templates")).expect("templates"));
    let dir = tempfile::tempdir().expect("tempdir");
    let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
    let recorder = Arc::new(Recorder::default());
    let adapter: Arc<dyn Adapter> = recorder.clone();
    let settings = Settings::default();
    let dispatcher = Dispatcher::start(root, vec![(Channel::Email, adapter)], settings.clone());
    let mut stage = Messaging::new(&rules, templates, settings, &dispatcher);

    let due = 1_772_445_600_000_000; // 10:00 UTC
    let mut state = State::default();
    for c in ["stays", "leaves", "buys"] {
        let mut traits = BTreeMap::new();
        traits.insert(
            "email".into(),
            serde_json::json!(format!("{c}@example.com")),
        );
        state.apply_profile(&ProfileUpdate {
            event_id: format!("id-{c}"),
            source: "s".into(),
            customer_id: c.into(),
            timestamp_us: due - 30 * 3_600_000_000,
            received_at_us: due - 30 * 3_600_000_000,
            traits,
            first_only: BTreeMap::new(),
        });
    }
    // Unsubscribed an hour after the message was due, while it waited.
    state.apply_event(&EventRecord::track(
        "e1".into(),
        "s",
        "leaves".into(),
        "unsubscribe",
        due + 3_600_000_000,
        Commerce::default(),
    ));
    // A global unsubscribe does not stop a transactional message.
    state.apply_event(&EventRecord::track(
        "e2".into(),
        "s",
        "buys".into(),
        "unsubscribe",
        due + 3_600_000_000,
        Commerce::default(),
    ));
    let rows = vec![
        scheduled("stays", "welcome", due),
        scheduled("leaves", "welcome", due),
        scheduled("buys", "order_confirmation", due),
    ];
    let mut outputs = Outputs::default();
    outputs.pass_on(Decided(rows));
    let now = due + 2 * 3_600_000_000;
    stage
        .process(&TickReport::default(), &state, now, &mut outputs)
        .expect("process");
    drop(stage);
    dispatcher.finish().await;
    let mut sent = recorder.0.lock().expect("lock").clone();
    sent.sort();
    assert_eq!(
        sent,
        vec!["order_confirmation:0:buys:k", "welcome:0:stays:k"],
        "the customer who unsubscribed got nothing"
    );
}
