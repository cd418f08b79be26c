//! `kairos import` of the bundled samples and a CRM CSV, offline.

use std::process::Command;

use crate::support::{kairos_bin, read_table, rows, strings};

fn import(data: &std::path::Path, kind: &str, file: &std::path::Path) -> String {
    let out = Command::new(kairos_bin())
        .args(["import", kind])
        .arg(file)
        .arg("--data")
        .arg(data)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run kairos import");
    assert!(
        out.status.success(),
        "import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn data_samples_import_cleanly_and_reimport_adds_nothing() {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data-samples");
    let dir = tempfile::tempdir().expect("tempdir");
    let said = import(dir.path(), "profiles", &samples.join("profiles.ndjson"));
    assert!(said.contains("0 rejected"), "{said}");
    let said = import(dir.path(), "events", &samples.join("events.ndjson"));
    assert!(said.contains("0 rejected"), "{said}");

    let lines = std::fs::read_to_string(samples.join("events.ndjson")).expect("read");
    let identifies = lines
        .lines()
        .filter(|l| l.contains("\"type\":\"identify\""))
        .count();
    let events = read_table(dir.path(), "events");
    assert_eq!(rows(&events), lines.lines().count() - identifies);
    let purchases = strings(&events, "event_type")
        .iter()
        .filter(|t| t.as_deref() == Some("purchase"))
        .count();
    assert!(purchases > 0, "Order Completed maps to purchase");
    assert_eq!(
        rows(&read_table(dir.path(), "profiles")),
        300 + identifies,
        "every identify in the events file changed a tier"
    );
    let changes = read_table(dir.path(), "profile_changes");
    assert_eq!(
        strings(&changes, "trait")
            .iter()
            .filter(|t| t.as_deref() == Some("loyalty_tier"))
            .count(),
        300 + identifies
    );

    // The same files again: every messageId is already published.
    let said = import(dir.path(), "events", &samples.join("events.ndjson"));
    assert!(
        said.contains(&format!("{} duplicates skipped", lines.lines().count())),
        "{said}"
    );
    assert_eq!(
        rows(&read_table(dir.path(), "events")),
        lines.lines().count() - identifies
    );
}

#[test]
fn crm_csv_profiles_merge_and_record_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("crm.csv");
    std::fs::write(&csv, "customer_id,email,loyalty_tier,consent.sms,updated_at\nc1,c1@example.com,silver,true,2026-10-01T00:00:00Z\nc2,c2@example.com,gold,false,2026-10-01T00:00:00Z\n").expect("csv");
    let data = dir.path().join("lake");
    import(&data, "profiles", &csv);
    std::fs::write(&csv, "customer_id,loyalty_tier,updated_at\nc1,gold,2026-10-02T00:00:00Z\n,orphan,2026-10-02T00:00:00Z\n").expect("csv");
    let said = import(&data, "profiles", &csv);
    assert!(said.contains("1 rejected"), "{said}");
    let changes = read_table(&data, "profile_changes");
    let upgrade = strings(&changes, "trait")
        .into_iter()
        .zip(strings(&changes, "old_value"))
        .zip(strings(&changes, "new_value"))
        .any(|((t, o), n)| {
            t.as_deref() == Some("loyalty_tier")
                && o.as_deref() == Some("\"silver\"")
                && n.as_deref() == Some("\"gold\"")
        });
    assert!(upgrade, "silver -> gold recorded");
    assert_eq!(rows(&read_table(&data, "profiles")), 3);
}
