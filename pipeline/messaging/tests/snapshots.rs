//! Snapshots of every message the trigger library sends (`sql/` rules,
//! `templates/`), rendered for two sample customers: one with a full
//! profile, one with almost nothing (so every fallback shows). A template
//! edit shows up here as a readable diff of what customers would receive.
//!
//! Update after a deliberate change, then review the diff:
//! `KAIROS_UPDATE_SNAPSHOTS=1 cargo test -p kairos-messaging --test snapshots`

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use kairos_messaging::Templates;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots")
}

/// (template, channel, rule, step, variant) of every message a rule sends.
fn messages(rule: &kairos_rules::Rule) -> Vec<(String, &'static str, u32, Option<String>)> {
    let channels = |c: kairos_rules::rule::ChannelChoice| -> Vec<&'static str> {
        c.candidates().into_iter().map(|c| c.as_str()).collect()
    };
    let mut out = Vec::new();
    for ch in channels(rule.channel) {
        out.push((rule.template.clone(), ch, 0, None));
        for v in &rule.variants {
            if let Some(t) = &v.template {
                out.push((t.clone(), ch, 0, Some(v.name.clone())));
            }
        }
    }
    for s in &rule.steps {
        for ch in channels(s.channel) {
            out.push((s.template.clone(), ch, s.number, None));
        }
    }
    out
}

/// What a sent message looks like in review: headers, body, and the
/// channel's own measure (SMS segments, WhatsApp parameters).
fn show(channel: &str, r: &kairos_messaging::template::Rendered) -> String {
    let mut s = String::new();
    for (k, v) in &r.headers {
        s.push_str(&format!("{k}: {v}\n"));
    }
    s.push('\n');
    s.push_str(r.body.trim_end());
    s.push('\n');
    match channel {
        "sms" => {
            let size = kairos_messaging::limits::sms_size(&r.body);
            s.push_str(&format!(
                "\n-- {} segment(s), {} {}\n",
                size.segments,
                size.units,
                if size.gsm7 {
                    "GSM-7 septets"
                } else {
                    "UCS-2 units"
                }
            ));
        }
        "whatsapp" => {
            s.push_str(&format!("\n-- parameters: {:?}\n", r.parameters()));
        }
        _ => {}
    }
    s
}

#[tokio::test]
async fn the_library_renders_as_snapshotted_for_two_customers() {
    let (rules, errors) = kairos_rules::check::check_dir(&repo().join("sql")).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(rules.len() >= 10, "the library is in sql/");
    let templates = Templates::load(&repo().join("templates")).expect("templates load");
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(snapshot_dir().join("customers.json")).expect("customers.json"),
    )
    .expect("customers.json parses");
    let ctx = kairos_rules::check::planning_session().expect("session");
    let update = std::env::var_os("KAIROS_UPDATE_SNAPSHOTS").is_some();

    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for (id, customer) in fixture.as_object().expect("customers by id") {
        let columns = customer["columns"].as_object().expect("columns");
        for rule in &rules {
            let names = kairos_rules::check::plan(&ctx, rule).await.expect("plans");
            // Every output column gets a value, so no blank is an accident.
            for n in names
                .iter()
                .filter(|n| *n != "customer_id" && !columns.contains_key(*n))
            {
                failures.push(format!(
                    "{id}: column {n} of rule {} has no value in tests/snapshots/customers.json",
                    rule.name
                ));
            }
            let mut rendered_for: BTreeMap<(String, &str), ()> = BTreeMap::new();
            for (template, channel, step, variant) in messages(rule) {
                if rendered_for
                    .insert((template.clone(), channel), ())
                    .is_some()
                {
                    continue;
                }
                let mut c: Map<String, Value> = names
                    .iter()
                    .filter_map(|n| Some((n.clone(), columns.get(n)?.clone())))
                    .collect();
                c.insert("customer_id".into(), Value::from(id.as_str()));
                c.insert("profile".into(), customer["profile"].clone());
                c.insert("customer".into(), customer["computed"].clone());
                c.insert(
                    "message".into(),
                    json!({
                        "rule": rule.name, "step": step, "arm": "triggered", "variant": variant,
                        "channel": channel, "send_id": format!("{}:{step}:{id}:k", rule.name),
                        "unsubscribe_url": format!("https://shop.example/u/{id}-{channel}"),
                    }),
                );
                let text = match templates.render(&template, channel, &c) {
                    Ok(r) => show(channel, &r),
                    Err(e) => {
                        failures.push(format!("{id}: {template}.{channel}: {e}"));
                        continue;
                    }
                };
                let file = snapshot_dir()
                    .join(id)
                    .join(format!("{template}.{channel}"));
                seen.insert(file.clone());
                if update {
                    std::fs::create_dir_all(file.parent().expect("dir")).expect("mkdir");
                    std::fs::write(&file, &text).expect("write snapshot");
                    continue;
                }
                match std::fs::read_to_string(&file) {
                    Ok(want) if want == text => {}
                    Ok(want) => failures.push(format!(
                        "{} changed:\n--- snapshot\n{want}\n--- rendered now\n{text}",
                        file.display()
                    )),
                    Err(_) => failures.push(format!("{} is missing", file.display())),
                }
            }
        }
    }
    // A snapshot nothing renders any more is a template that was removed.
    for id in fixture.as_object().expect("customers").keys() {
        for e in std::fs::read_dir(snapshot_dir().join(id))
            .into_iter()
            .flatten()
            .flatten()
        {
            if !seen.contains(&e.path()) {
                if update {
                    std::fs::remove_file(e.path()).expect("remove stale snapshot");
                } else {
                    failures.push(format!("{} is rendered by no rule", e.path().display()));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the change is intended: KAIROS_UPDATE_SNAPSHOTS=1 cargo test -p kairos-messaging --test snapshots, then review the diff",
        failures.join("\n\n")
    );
    // The whole library: every template file is some rule's message.
    for e in std::fs::read_dir(repo().join("templates"))
        .expect("templates")
        .flatten()
    {
        for id in fixture.as_object().expect("customers").keys() {
            let file = snapshot_dir().join(id).join(e.file_name());
            assert!(
                seen.contains(&file),
                "{} is sent by no rule",
                e.path().display()
            );
        }
    }
}
