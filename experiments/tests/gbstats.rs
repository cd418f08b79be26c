//! The statistics engine against GrowthBook's gbstats 0.8.0, scipy and
//! statsmodels: `fixtures/gbstats_cases.json` holds their answers for seeded
//! random inputs (written by `fixtures/gen_gbstats.py`), and every number of
//! the engine's analysis must match.
//!
//! Tolerance: a number matches when |actual − expected| ≤ 1e-6·|expected| +
//! floor, i.e. **relative 1e-6**, with an absolute floor only where relative
//! precision is meaningless:
//! - p-values (t-test, sequential, z-test, SRM, adjusted) and chance to win:
//!   floor 1e-300, so tail values such as 1e-150 must agree to 6 digits;
//! - risk: floor 1e-9 × the effect's standard error, because gbstats
//!   computes one factor of it as 1 − cdf, which is rounding noise once the
//!   risk is that small compared with the posterior's spread;
//! - everything else: floor 1e-12, for lifts that are exactly or nearly 0.
//!
//! Objects must have the same keys, so no number of the analysis goes
//! unchecked, and "not estimable" must coincide with gbstats' uninformative
//! results.

use kairos_experiments::stats::{ExperimentInput, analyze, benjamini_hochberg, holm_bonferroni};
use serde_json::Value;

const FIXTURES: &str = include_str!("../fixtures/gbstats_cases.json");
const RELATIVE: f64 = 1e-6;

fn fixtures() -> Value {
    serde_json::from_str(FIXTURES).expect("fixtures parse")
}

/// The absolute floor for a number under `key`, inside `parent` (the
/// expected object holding it).
fn floor(key: &str, parent: Option<&Value>) -> f64 {
    match key {
        "p_value" | "sequential_p_value" | "chance_to_win" => 1e-300,
        "risk_control" | "risk_treatment" => {
            1e-9 * parent
                .and_then(|p| p["std_error"].as_f64())
                .expect("risk sits beside std_error")
        }
        _ => 1e-12,
    }
}

fn matches(actual: f64, expected: f64, floor: f64) -> bool {
    (actual - expected).abs() <= RELATIVE * expected.abs() + floor
}

/// Compares two JSON trees, collecting every mismatch as "path: detail".
/// `key` is the object key the values sit under (array elements inherit
/// it, so both bounds of an interval are compared like a single number).
fn compare(
    actual: &Value,
    expected: &Value,
    path: &str,
    key: &str,
    parent: Option<&Value>,
    out: &mut Vec<String>,
) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for k in e.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: missing"));
            }
            for k in a.keys().filter(|k| !e.contains_key(*k)) {
                out.push(format!("{path}.{k}: not in the fixture, so unchecked"));
            }
            for (k, ev) in e {
                if let Some(av) = a.get(k) {
                    compare(av, ev, &format!("{path}.{k}"), k, Some(expected), out);
                }
            }
        }
        (Value::Array(a), Value::Array(e)) if a.len() == e.len() => {
            for (i, (av, ev)) in a.iter().zip(e).enumerate() {
                compare(av, ev, &format!("{path}[{i}]"), key, parent, out);
            }
        }
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().expect("finite"), e.as_f64().expect("finite"));
            if !matches(a, e, floor(key, parent)) {
                out.push(format!(
                    "{path}: {a:e} vs expected {e:e} (relative error {:e})",
                    (a - e).abs() / e.abs()
                ));
            }
        }
        _ if actual == expected => {}
        _ => out.push(format!("{path}: {actual} vs expected {expected}")),
    }
}

fn report(failures: &[String], what: &str) {
    assert!(
        failures.is_empty(),
        "{} mismatches with {what}:\n{}",
        failures.len(),
        failures
            .iter()
            .take(40)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_number_matches_gbstats_and_scipy() {
    let fixtures = fixtures();
    let cases = fixtures["analysis_cases"]
        .as_array()
        .expect("analysis_cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let input: ExperimentInput =
            serde_json::from_value(case["input"].clone()).expect("input parses");
        let analysis = match analyze(&input) {
            Ok(a) => a,
            Err(e) => {
                failures.push(format!("{name}: rejected: {e}"));
                continue;
            }
        };
        let actual = serde_json::to_value(&analysis).expect("serialises");
        compare(&actual, &case["expected"], name, "", None, &mut failures);
    }
    report(&failures, "gbstats 0.8.0 / scipy");
}

#[test]
fn multiple_testing_matches_statsmodels() {
    let fixtures = fixtures();
    let mut failures = Vec::new();
    for case in fixtures["multiple_testing_cases"]
        .as_array()
        .expect("multiple_testing_cases")
    {
        let name = case["name"].as_str().expect("name");
        let p: Vec<f64> = serde_json::from_value(case["p_values"].clone()).expect("p_values");
        let holm = serde_json::to_value(holm_bonferroni(&p).expect("valid")).expect("serialises");
        let bh = serde_json::to_value(benjamini_hochberg(&p).expect("valid")).expect("serialises");
        compare(
            &holm,
            &case["holm"],
            &format!("{name}.holm"),
            "p_value",
            None,
            &mut failures,
        );
        compare(
            &bh,
            &case["benjamini_hochberg"],
            &format!("{name}.benjamini_hochberg"),
            "p_value",
            None,
            &mut failures,
        );
    }
    report(&failures, "statsmodels multipletests");
}

/// The fixtures must keep covering what the engine is specified for, should
/// anyone regenerate them with fewer or tamer cases.
#[test]
fn fixtures_cover_the_specified_ground() {
    let fixtures = fixtures();
    let cases = fixtures["analysis_cases"]
        .as_array()
        .expect("analysis_cases");
    assert!(cases.len() >= 50, "{} analysis cases", cases.len());

    let small_arms = cases
        .iter()
        .filter(|c| {
            c["input"]["arms"]
                .as_array()
                .expect("arms")
                .iter()
                .any(|a| a["n"].as_i64() < Some(30))
        })
        .count();
    assert!(small_arms >= 5, "{small_arms} cases with an arm under 30");

    let mut tiny = 0;
    let mut not_estimable = 0;
    let mut cuped = 0;
    for comparison in cases.iter().flat_map(|c| {
        c["expected"]["comparisons"]
            .as_array()
            .expect("comparisons")
    }) {
        for metric in ["conversion", "revenue"] {
            for scale in ["absolute", "relative"] {
                let effect = &comparison[metric][scale];
                match effect["p_value"].as_f64() {
                    Some(p) if p > 0.0 && p < 1e-12 => tiny += 1,
                    None => not_estimable += 1,
                    _ => {}
                }
            }
        }
        cuped += usize::from(!comparison["revenue_cuped"].is_null());
    }
    assert!(tiny >= 10, "{tiny} p-values in (0, 1e-12)");
    assert!(not_estimable >= 3, "{not_estimable} not-estimable effects");
    assert!(cuped >= 30, "{cuped} CUPED comparisons");
    let flagged = cases
        .iter()
        .filter(|c| c["expected"]["srm"]["flagged"] == true)
        .count();
    assert!(flagged >= 3 && flagged < cases.len(), "{flagged} SRM flags");
}
