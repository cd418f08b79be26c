//! `kairos rules check` on real files.

use std::process::Command;

use crate::support::kairos_bin;

#[test]
fn rules_check_reports_file_and_line_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("welcome.sql"),
        "-- name: welcome\n-- description: Welcome at signup\n-- channel: email\n-- param delay: 10m\nSELECT customer_id, event_id AS dedupe_key\nFROM batch_events WHERE event_type = 'signup' AND timestamp < ${now} - ${delay}\n",
    )
    .expect("write");
    let templates = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        templates.path().join("welcome.email"),
        "Subject: Welcome {{ profile.first_name | default(\"friend\") }}\n\nHello!\n",
    )
    .expect("write");
    let check = || {
        Command::new(kairos_bin())
            .args(["rules", "check"])
            .arg(dir.path())
            .arg("--templates")
            .arg(templates.path())
            .output()
            .expect("run")
    };
    let ok = check();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("1 rule(s) valid"));

    std::fs::write(
        dir.path().join("winback.sql"),
        "-- name: winback\n-- description: x\n-- channel: email\n-- cadence: sometimes\nSELECT 1\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("typo.sql"),
        "-- name: typo\n-- description: x\n-- channel: sms\nSELECT customer_id, order_id AS dedupe_key\nFROM batch_events WHERE revnue > 10\n",
    )
    .expect("write");
    let bad = check();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("winback.sql:4: cadence:"), "{stderr}");
    assert!(
        stderr.contains("typo.sql:5: SQL:") && stderr.contains("revnue"),
        "{stderr}"
    );
    assert!(
        stderr.contains("2 problem(s)") && stderr.contains("1 rule(s) valid"),
        "{stderr}"
    );

    // A template naming a field the rule does not return fails the check.
    std::fs::remove_file(dir.path().join("typo.sql")).expect("rm");
    std::fs::remove_file(dir.path().join("winback.sql")).expect("rm");
    std::fs::write(
        templates.path().join("welcome.email"),
        "Subject: Welcome {{ frist_name }}\n\nHello!\n",
    )
    .expect("write");
    let bad = check();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("welcome.email: Subject: unknown name `frist_name`"),
        "{stderr}"
    );
}
