//! What a report measures: the attribution window, the conversion event,
//! the pre-period, revenue capping, CUPED and the assignment date range.
//! Parsed from query parameters (`/api/experiments/{rule}?window=14d`) or
//! CLI flags, with errors that name the parameter.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ReportError;

const DAY_US: i64 = 86_400_000_000;

/// Revenue capping, for heavy tails: each recipient's window revenue (and
/// pre-period covariate) is cut at a value before the sums are taken.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Capping {
    /// No cap.
    None,
    /// Cap at this amount.
    Absolute {
        /// The cap, in revenue units.
        value: f64,
    },
    /// Cap at this percentile (0–100, exclusive) of the experiment's
    /// recipients with positive window revenue, all arms together
    /// (nearest rank).
    Percentile {
        /// The percentile, e.g. 99.
        percentile: f64,
    },
}

/// Everything a report can be asked for. Defaults: a 7-day window,
/// conversion and revenue from `purchase`, a pre-period as long as the
/// window, no capping, CUPED on, every assignment, alpha 0.05.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ReportOptions {
    /// Attribution window after assignment, seconds.
    pub window_secs: u64,
    /// The canonical `event_type` that counts as a conversion.
    pub conversion_event: String,
    /// The `event_type` whose `revenue` counts.
    pub revenue_event: String,
    /// Pre-period before assignment for the covariate, seconds.
    pub pre_period_secs: u64,
    /// Revenue capping.
    pub cap: Capping,
    /// Run CUPED with the pre-period covariate.
    pub cuped: bool,
    /// Only customers assigned at or after this instant (µs), if given.
    #[serde(rename = "from", serialize_with = "rfc3339_opt")]
    pub from_us: Option<i64>,
    /// Only customers assigned before this instant (µs), if given.
    #[serde(rename = "to", serialize_with = "rfc3339_opt")]
    pub to_us: Option<i64>,
    /// Intervals cover 1 − alpha.
    pub alpha: f64,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            window_secs: 7 * 86_400,
            conversion_event: "purchase".into(),
            revenue_event: "purchase".into(),
            pre_period_secs: 7 * 86_400,
            cap: Capping::None,
            cuped: true,
            from_us: None,
            to_us: None,
            alpha: kairos_experiments::stats::DEFAULT_ALPHA,
        }
    }
}

fn rfc3339_opt<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(us) => s.serialize_str(&rfc3339(*us)),
        None => s.serialize_none(),
    }
}

/// An instant in µs as RFC 3339 UTC.
pub fn rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| us.to_string())
}

/// The query parameters a report accepts.
pub const PARAMS: [&str; 9] = [
    "window",
    "conversion_event",
    "revenue_event",
    "pre_period",
    "cap",
    "cuped",
    "from",
    "to",
    "alpha",
];

fn bad(param: &str, problem: impl Into<String>) -> ReportError {
    ReportError::BadOption {
        param: param.to_string(),
        problem: problem.into(),
    }
}

/// The longest window or pre-period a report accepts: ten years.
pub const MAX_WINDOW_SECS: u64 = 3650 * 86_400;

impl ReportOptions {
    /// The defaults with the configured window and conversion event.
    pub fn from_config(config: &kairos_core::Config) -> Result<ReportOptions, ReportError> {
        let mut o = ReportOptions::default();
        o.set("window", &config.report.window)
            .map_err(|e| bad("report.window", e.to_string()))?;
        o.set("conversion_event", &config.report.conversion_event)
            .map_err(|e| bad("report.conversion_event", e.to_string()))?;
        o.pre_period_secs = o.window_secs;
        Ok(o)
    }

    /// These options with `params` applied (query parameters); an unknown
    /// or invalid parameter is an error naming it. `pre_period` follows
    /// `window` unless given.
    pub fn with_params(
        &self,
        params: &BTreeMap<String, String>,
    ) -> Result<ReportOptions, ReportError> {
        let mut o = self.clone();
        let follows = o.pre_period_secs == o.window_secs && !params.contains_key("pre_period");
        for (k, v) in params {
            o.set(k, v)?;
        }
        if follows {
            o.pre_period_secs = o.window_secs;
        }
        if let (Some(f), Some(t)) = (o.from_us, o.to_us)
            && t <= f
        {
            return Err(bad("to", "must be after `from`"));
        }
        Ok(o)
    }

    /// Sets one option from its text form.
    pub fn set(&mut self, param: &str, value: &str) -> Result<(), ReportError> {
        let v = value.trim();
        // Bounded so every window in µs, added to any timestamp, stays far
        // inside i64: an absurd `window=` is a 400, never wrapped numbers.
        let duration = |v: &str| {
            let s = kairos_core::time::parse_duration(v)
                .map_err(|e| bad(param, format!("{e} (give a duration like 7d, 36h or 1w)")))?;
            if s > MAX_WINDOW_SECS {
                return Err(bad(
                    param,
                    format!("{v:?} is longer than the longest window, 3650d"),
                ));
            }
            Ok(s)
        };
        match param {
            "window" => {
                let s = duration(v)?;
                if s == 0 {
                    return Err(bad(param, "must be longer than 0"));
                }
                self.window_secs = s;
            }
            "pre_period" => self.pre_period_secs = duration(v)?,
            "conversion_event" | "revenue_event" => {
                if v.is_empty() || !v.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    return Err(bad(
                        param,
                        format!("{v:?} is not an event type (snake_case, e.g. purchase)"),
                    ));
                }
                if param == "conversion_event" {
                    self.conversion_event = v.to_string();
                } else {
                    self.revenue_event = v.to_string();
                }
            }
            "cap" => self.cap = parse_cap(v).map_err(|e| bad(param, e))?,
            "cuped" => {
                self.cuped = match v {
                    "on" | "true" | "1" | "yes" => true,
                    "off" | "false" | "0" | "no" => false,
                    _ => return Err(bad(param, format!("{v:?}: use on or off"))),
                }
            }
            "from" => self.from_us = Some(instant(v, false).map_err(|e| bad(param, e))?),
            "to" => self.to_us = Some(instant(v, true).map_err(|e| bad(param, e))?),
            "alpha" => {
                let a: f64 = v
                    .parse()
                    .map_err(|_| bad(param, format!("{v:?} is not a number")))?;
                if !(a > 0.0 && a < 1.0) {
                    return Err(bad(
                        param,
                        format!("must lie strictly between 0 and 1, got {a}"),
                    ));
                }
                self.alpha = a;
            }
            other => {
                return Err(bad(
                    other,
                    format!("unknown parameter; known: {}", PARAMS.join(", ")),
                ));
            }
        }
        Ok(())
    }
}

/// `none`, an amount (`500`) or a percentile (`p99`, `p99.5`).
fn parse_cap(v: &str) -> Result<Capping, String> {
    if v.is_empty() || v == "none" {
        return Ok(Capping::None);
    }
    if let Some(p) = v.strip_prefix('p') {
        let p: f64 = p
            .parse()
            .map_err(|_| format!("{v:?}: a percentile is p followed by a number, e.g. p99"))?;
        if !(p > 0.0 && p < 100.0) {
            return Err(format!(
                "percentile must lie strictly between 0 and 100, got {p}"
            ));
        }
        return Ok(Capping::Percentile { percentile: p });
    }
    let value: f64 = v
        .parse()
        .map_err(|_| format!("{v:?}: use none, an amount (500) or a percentile (p99)"))?;
    if !(value.is_finite() && value > 0.0) {
        return Err(format!(
            "an absolute cap must be a positive amount, got {value}"
        ));
    }
    Ok(Capping::Absolute { value })
}

/// A date (`YYYY-MM-DD`, whole day; the end of the day when `end`) or an
/// RFC 3339 instant.
fn instant(v: &str, end: bool) -> Result<i64, String> {
    let t = kairos_rules::state::parse_time(v)
        .ok_or_else(|| format!("{v:?}: use YYYY-MM-DD or RFC 3339"))?;
    Ok(if end && v.len() == 10 { t + DAY_US } else { t })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parameters_parse_and_pre_period_follows_the_window() {
        let o = ReportOptions::default()
            .with_params(&params(&[
                ("window", "14d"),
                ("cap", "p99.5"),
                ("cuped", "off"),
                ("from", "2026-09-01"),
                ("to", "2026-09-30"),
            ]))
            .expect("valid");
        assert_eq!(o.window_secs, 14 * 86_400);
        assert_eq!(o.pre_period_secs, 14 * 86_400);
        assert_eq!(o.cap, Capping::Percentile { percentile: 99.5 });
        assert!(!o.cuped);
        assert_eq!(o.to_us.expect("to") - o.from_us.expect("from"), 30 * DAY_US);
        let o = ReportOptions::default()
            .with_params(&params(&[
                ("window", "3d"),
                ("pre_period", "30d"),
                ("cap", "250"),
            ]))
            .expect("valid");
        assert_eq!(
            (o.window_secs, o.pre_period_secs),
            (3 * 86_400, 30 * 86_400)
        );
        assert_eq!(o.cap, Capping::Absolute { value: 250.0 });
    }

    #[test]
    fn configured_defaults() {
        let config = kairos_core::Config::from_toml(
            "[report]\nwindow = \"14d\"\nconversion_event = \"signup\"\n",
        )
        .expect("config");
        let o = ReportOptions::from_config(&config).expect("valid");
        assert_eq!(
            (o.window_secs, o.pre_period_secs),
            (14 * 86_400, 14 * 86_400)
        );
        assert_eq!(o.conversion_event, "signup");
        let o = o.with_params(&params(&[("window", "2d")])).expect("valid");
        assert_eq!(o.pre_period_secs, 2 * 86_400);
        let config =
            kairos_core::Config::from_toml("[report]\nwindow = \"soon\"\n").expect("config");
        let err = ReportOptions::from_config(&config).expect_err("bad window");
        assert!(err.to_string().starts_with("report.window: "), "{err}");
    }

    #[test]
    fn errors_name_the_parameter() {
        let err = |kv: &[(&str, &str)]| {
            ReportOptions::default()
                .with_params(&params(kv))
                .expect_err("invalid")
                .to_string()
        };
        assert!(err(&[("window", "7x")]).starts_with("window: "));
        assert_eq!(err(&[("window", "0s")]), "window: must be longer than 0");
        assert!(
            err(&[("window", "9999999999w")]).contains("longest window"),
            "an absurd window is refused, not wrapped"
        );
        assert!(err(&[("pre_period", "3651d")]).contains("longest window"));
        assert!(err(&[("window", "99999999999999999999999d")]).starts_with("window: "));
        assert!(err(&[("cap", "p100")]).starts_with("cap: percentile must lie"));
        assert!(err(&[("cap", "-3")]).starts_with("cap: an absolute cap"));
        assert!(err(&[("cuped", "maybe")]).starts_with("cuped: "));
        assert!(err(&[("from", "yesterday")]).starts_with("from: "));
        assert_eq!(
            err(&[("from", "2026-09-02"), ("to", "2026-09-01")]),
            "to: must be after `from`"
        );
        assert!(err(&[("conversion_event", "x'; drop")]).starts_with("conversion_event: "));
        assert!(err(&[("windw", "7d")]).starts_with("windw: unknown parameter; known: window"));
    }
}
