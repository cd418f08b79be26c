//! Rule files: the header, its parameters, and `${param}` substitution.
//!
//! The header is the run of `-- key: value` lines at the top of the file
//! (blank comment lines allowed). Keys:
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `name` | the rule id; must equal the file stem | required |
//! | `description` | free text | required |
//! | `channel` | `email`, `sms`, `whatsapp`, `push`, `webhook` or `preferred` | required |
//! | `template` | template name | the rule name |
//! | `priority` | integer, higher wins | 0 |
//! | `cooldown` | duration: no second firing for a customer within it | `0s` |
//! | `lookback` | duration of event history the rule may read | `0s` (none) |
//! | `cadence` | `batch` (every micro-batch), `hourly`, `daily` or a duration | `batch` |
//! | `cancel_on` | comma-separated event types that cancel a pending send | none |
//! | `transactional` | `true` exempts from marketing caps and the global control group | `false` |
//! | `split` | `holdout=N scheduled=N triggered=N`, percentages summing to 100 | `triggered=100` |
//! | `scheduled_at` | `HH:MM` customer-local send time of the scheduled arm | `10:00` |
//! | `tags` | comma-separated tags, for frequency caps by tag | none |
//! | `on_conflict` | when a higher-priority rule wins: `suppress` or `defer` | `suppress` |
//! | `on_cap` | when a frequency cap is reached: `skip` or `defer` | `defer` |
//! | `salt` | experiment hash salt; a new salt starts a new experiment | the rule name |
//! | `param NAME` | a parameter default: duration, integer, number, `true`/`false` or `'text'` | |
//! | `variant NAME` | a variant of the triggered arm: `param=value ...`, optional `template=NAME` and `weight=N` | none |
//! | `step N` | a follow-up message N = 1, 2, …: `after=DURATION`, optional `channel=…`, `template=…`, `stop_on=EVENT,…` | none |
//!
//! Durations are `30s`, `15m`, `6h`, `7d`, `2w` or sums like `1h30m`.
//! In the SQL, `${NAME}` becomes the parameter as a SQL literal (durations
//! as `INTERVAL '…' SECOND`); `${now}` is reserved for the rule clock.

use kairos_core::Channel;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A problem in a rule file, located by line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}: {message}", file.display())]
pub struct RuleError {
    /// The rule file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Where a rule's message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelChoice {
    /// Always this channel.
    Fixed(Channel),
    /// The customer's preferred consented channel.
    Preferred,
}

impl ChannelChoice {
    /// The channel, when the rule names one.
    pub fn fixed(self) -> Option<Channel> {
        match self {
            ChannelChoice::Fixed(c) => Some(c),
            ChannelChoice::Preferred => None,
        }
    }

    /// Every channel a message may go out on.
    pub fn candidates(self) -> Vec<Channel> {
        match self {
            ChannelChoice::Fixed(c) => vec![c],
            ChannelChoice::Preferred => Channel::PREFERRED.to_vec(),
        }
    }
}

/// How often a rule is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cadence {
    /// On every micro-batch (event-driven rules).
    EveryBatch,
    /// As a sweep every so many seconds (deadline rules).
    EverySecs(u64),
}

/// The experiment split in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// No message.
    pub holdout: u8,
    /// Sent in the next scheduled batch send.
    pub scheduled: u8,
    /// Sent at once.
    pub triggered: u8,
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// A duration in seconds.
    Duration(u64),
    /// An integer.
    Int(i64),
    /// A number.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Text(String),
}

impl Param {
    /// Parses a parameter literal: duration, integer, number, bool or `'text'`.
    pub fn parse(s: &str) -> Result<Param, String> {
        let s = s.trim();
        if let Some(t) = s.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
            return Ok(Param::Text(t.replace("''", "'")));
        }
        if let Ok(i) = s.parse::<i64>() {
            return Ok(Param::Int(i));
        }
        if let Ok(f) = s
            .parse::<f64>()
            .map_err(|_| ())
            .and_then(|f| if f.is_finite() { Ok(f) } else { Err(()) })
        {
            return Ok(Param::Float(f));
        }
        match s {
            "true" => return Ok(Param::Bool(true)),
            "false" => return Ok(Param::Bool(false)),
            _ => {}
        }
        parse_duration(s).map(Param::Duration).map_err(|_| {
            format!("{s:?} is not a duration (6h, 7d, 1h30m), number, true/false or 'quoted text'")
        })
    }

    /// The value as a SQL literal.
    pub fn to_sql(&self) -> String {
        match self {
            Param::Duration(secs) => format!("INTERVAL '{secs}' SECOND"),
            Param::Int(i) => i.to_string(),
            Param::Float(f) => format!("{f:?}"),
            Param::Bool(b) => b.to_string(),
            Param::Text(t) => format!("'{}'", t.replace('\'', "''")),
        }
    }
}

/// What happens to a message that is blocked for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenBlocked {
    /// Record it as suppressed or skipped; it never goes.
    Drop,
    /// Send it at the first allowed moment.
    Defer,
}

/// A variant of the triggered arm: overrides of parameters or template.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Variant name, e.g. `6h`.
    pub name: String,
    /// Relative weight within the triggered arm.
    pub weight: u32,
    /// Parameter overrides.
    pub params: BTreeMap<String, Param>,
    /// Template override.
    pub template: Option<String>,
}

/// A follow-up message of a rule's sequence (the rule's own message is
/// step 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1, 2, … in header order.
    pub number: u32,
    /// Seconds after the sequence started (the firing's decision).
    pub after_secs: u64,
    /// Channel (default: the rule's).
    pub channel: ChannelChoice,
    /// Template (default: `<rule template>_step<N>`).
    pub template: String,
    /// Events that skip this step alone; the rule's `cancel_on` events end
    /// the whole sequence.
    pub stop_on: Vec<String>,
}

/// One parsed rule file.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The file it came from.
    pub file: PathBuf,
    /// Rule id (the file stem).
    pub name: String,
    /// What it does.
    pub description: String,
    /// Where its messages go.
    pub channel: ChannelChoice,
    /// Template name.
    pub template: String,
    /// Higher wins when several rules fire for one customer.
    pub priority: i64,
    /// Seconds before the same customer may fire again.
    pub cooldown_secs: u64,
    /// Seconds of event history the rule reads.
    pub lookback_secs: u64,
    /// When the rule runs.
    pub cadence: Cadence,
    /// Event types that cancel a pending send.
    pub cancel_on: Vec<String>,
    /// Exempt from marketing caps.
    pub transactional: bool,
    /// Experiment split.
    pub split: Split,
    /// Customer-local send time of the scheduled arm, minutes after midnight.
    pub scheduled_at_minutes: u32,
    /// Tags for frequency caps.
    pub tags: Vec<String>,
    /// When a higher-priority rule wins.
    pub on_conflict: WhenBlocked,
    /// When a frequency cap is reached.
    pub on_cap: WhenBlocked,
    /// Experiment salt.
    pub salt: String,
    /// Variants of the triggered arm (empty: none).
    pub variants: Vec<Variant>,
    /// Follow-up steps, by increasing `after` (empty: a single message).
    pub steps: Vec<Step>,
    /// Parameter defaults, by name.
    pub params: BTreeMap<String, Param>,
    /// The SQL body as written (with `${…}` placeholders).
    pub sql: String,
    /// 1-based line where the SQL body starts.
    pub sql_line: usize,
}

/// The placeholder reserved for the rule clock.
pub const NOW: &str = "now";

impl Rule {
    /// The SQL with every `${param}` replaced by its value (defaults, then
    /// `overrides`) and `${now}` by `now_sql`, the rule clock expression.
    pub fn render_sql(
        &self,
        overrides: &BTreeMap<String, Param>,
        now_sql: &str,
    ) -> Result<String, RuleError> {
        let mut out = String::with_capacity(self.sql.len() + 64);
        let mut rest = self.sql.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                return Err(self.err_at_sql(&rest[start..], "unclosed ${ placeholder"));
            };
            let name = after[..end].trim();
            if name == NOW {
                out.push_str(now_sql);
            } else {
                match overrides.get(name).or_else(|| self.params.get(name)) {
                    Some(p) => out.push_str(&p.to_sql()),
                    None => return Err(self.err_at_sql(&rest[start..], &format!("unknown parameter ${{{name}}}; declare it in the header as `-- param {name}: DEFAULT`"))),
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// The rule's experiment design: its split, salt and variants.
    pub fn design(&self) -> kairos_experiments::Design {
        kairos_experiments::Design::from_percent(
            &self.salt,
            self.split.holdout,
            self.split.scheduled,
        )
        .with_variants(
            self.variants
                .iter()
                .map(|v| (v.name.clone(), v.weight))
                .collect(),
        )
    }

    fn err_at_sql(&self, at: &str, message: &str) -> RuleError {
        let offset = self.sql.len() - at.len();
        let line = self.sql_line + self.sql[..offset].matches('\n').count();
        RuleError {
            file: self.file.clone(),
            line,
            message: message.to_string(),
        }
    }
}

/// The header's durations are the settings' ([`kairos_core::time::parse_duration`]),
/// their error as text for the `file:line:` message.
fn parse_duration(s: &str) -> Result<u64, String> {
    kairos_core::time::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_cadence(s: &str) -> Result<Cadence, String> {
    match s {
        "batch" => Ok(Cadence::EveryBatch),
        "hourly" => Ok(Cadence::EverySecs(3600)),
        "daily" => Ok(Cadence::EverySecs(86_400)),
        other => match parse_duration(other)? {
            0 => Err("a sweep cadence must be longer than 0s".into()),
            secs => Ok(Cadence::EverySecs(secs)),
        },
    }
}

fn parse_channel(s: &str) -> Result<ChannelChoice, String> {
    match s {
        "preferred" => Ok(ChannelChoice::Preferred),
        other => Channel::parse(other).map(ChannelChoice::Fixed).ok_or_else(|| {
            format!("unknown channel {other:?}; use email, sms, whatsapp, push, webhook or preferred")
        }),
    }
}

fn parse_split(s: &str) -> Result<Split, String> {
    let mut split = Split {
        holdout: 0,
        scheduled: 0,
        triggered: 0,
    };
    for part in s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let (arm, pct) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: write arm=percent, e.g. holdout=10"))?;
        let pct: u8 = pct
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("{part:?}: percent must be 0-100"))?;
        match arm {
            "holdout" => split.holdout = pct,
            "scheduled" => split.scheduled = pct,
            "triggered" => split.triggered = pct,
            other => {
                return Err(format!(
                    "unknown arm {other:?}; use holdout, scheduled or triggered"
                ));
            }
        }
    }
    let sum = u32::from(split.holdout) + u32::from(split.scheduled) + u32::from(split.triggered);
    if sum != 100 {
        return Err(format!("arms sum to {sum}%, not 100%"));
    }
    Ok(split)
}

fn parse_clock(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: use HH:MM"))?;
    match (h.parse::<u32>(), m.parse::<u32>()) {
        (Ok(h), Ok(m)) if h < 24 && m < 60 && m.to_string().len() <= 2 => Ok(h * 60 + m),
        _ => Err(format!("{s:?}: use HH:MM between 00:00 and 23:59")),
    }
}

fn parse_blocked(s: &str, drop_word: &str) -> Result<WhenBlocked, String> {
    match s {
        "defer" => Ok(WhenBlocked::Defer),
        w if w == drop_word => Ok(WhenBlocked::Drop),
        other => Err(format!("{other:?}: use `{drop_word}` or `defer`")),
    }
}

/// `delay=6h weight=2 template=cart_6h`: overrides of declared parameters.
fn parse_variant(
    name: &str,
    value: &str,
    params: &BTreeMap<String, Param>,
) -> Result<Variant, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err("a variant name uses letters, digits, - and _".into());
    }
    let mut v = Variant {
        name: name.to_string(),
        weight: 1,
        params: BTreeMap::new(),
        template: None,
    };
    for part in value.split_whitespace() {
        let (k, val) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: write param=value"))?;
        match k {
            "weight" => {
                v.weight = val
                    .parse::<u32>()
                    .ok()
                    .filter(|w| *w > 0)
                    .ok_or_else(|| format!("weight {val:?} is not a positive integer"))?;
            }
            "template" => v.template = Some(val.to_string()),
            p if params.contains_key(p) => {
                v.params.insert(p.to_string(), Param::parse(val)?);
            }
            p => {
                return Err(format!(
                    "{p:?} is not a declared parameter; declare it with `-- param {p}: DEFAULT`"
                ));
            }
        }
    }
    Ok(v)
}

/// `after=3d channel=sms template=welcome_sms stop_on=purchase`.
fn parse_step(number: &str, value: &str, rule_channel: ChannelChoice) -> Result<Step, String> {
    let number = number
        .parse::<u32>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("step {number:?}: number steps 1, 2, 3, …"))?;
    let mut step = Step {
        number,
        after_secs: 0,
        channel: rule_channel,
        template: String::new(),
        stop_on: Vec::new(),
    };
    let mut after = None;
    for part in value.split_whitespace() {
        let (k, val) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: write key=value"))?;
        match k {
            "after" => after = Some(parse_duration(val)?),
            "channel" => step.channel = parse_channel(val)?,
            "template" => step.template = val.to_string(),
            "stop_on" => {
                step.stop_on = val
                    .split(',')
                    .filter(|e| !e.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            other => {
                return Err(format!(
                    "unknown step key {other:?}; use after, channel, template, stop_on"
                ));
            }
        }
    }
    step.after_secs =
        after.ok_or("a step needs `after=DURATION` (time after the first message)")?;
    Ok(step)
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?}: use true or false")),
    }
}

/// Parses one rule file's text. Collects every error rather than stopping at the first.
pub fn parse(file: &Path, text: &str) -> Result<Rule, Vec<RuleError>> {
    let mut errors = Vec::new();
    let err = |line: usize, message: String| RuleError {
        file: file.to_path_buf(),
        line,
        message,
    };
    let stem = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let mut fields: BTreeMap<&str, (usize, &str)> = BTreeMap::new();
    let mut params = BTreeMap::new();
    let mut variant_lines: Vec<(usize, String, String)> = Vec::new();
    let mut step_lines: Vec<(usize, String, String)> = Vec::new();
    let mut sql_start = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        let Some(comment) = trimmed.strip_prefix("--") else {
            // A blank line ends the header, so free comments may follow it.
            if trimmed.is_empty() && fields.is_empty() && params.is_empty() {
                continue;
            }
            sql_start = Some(i);
            break;
        };
        let comment = comment.trim();
        if comment.is_empty() {
            continue;
        }
        let Some((key, value)) = comment.split_once(':') else {
            errors.push(err(line, format!("header lines are `-- key: value`; found {comment:?} (put free comments below the header, inside the SQL)")));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if let Some(name) = key.strip_prefix("param ") {
            let name = name.trim();
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                || name.is_empty()
                || name == NOW
            {
                errors.push(err(
                    line,
                    format!("parameter name {name:?}: use letters, digits and _ (and not `now`)"),
                ));
            } else {
                match Param::parse(value) {
                    Ok(p) => {
                        if params.insert(name.to_string(), p).is_some() {
                            errors.push(err(line, format!("parameter {name} declared twice")));
                        }
                    }
                    Err(e) => errors.push(err(line, format!("param {name}: {e}"))),
                }
            }
            continue;
        }
        if let Some(name) = key.strip_prefix("variant ") {
            variant_lines.push((line, name.trim().to_string(), value.to_string()));
            continue;
        }
        if let Some(number) = key.strip_prefix("step ") {
            step_lines.push((line, number.trim().to_string(), value.to_string()));
            continue;
        }
        const KEYS: [&str; 16] = [
            "name",
            "description",
            "channel",
            "template",
            "priority",
            "cooldown",
            "lookback",
            "cadence",
            "cancel_on",
            "transactional",
            "split",
            "scheduled_at",
            "tags",
            "on_conflict",
            "on_cap",
            "salt",
        ];
        if !KEYS.contains(&key) {
            errors.push(err(
                line,
                format!(
                    "unknown header key {key:?}; known: {}, param NAME, variant NAME, step N",
                    KEYS.join(", ")
                ),
            ));
        } else if fields.insert(key, (line, value)).is_some() {
            errors.push(err(line, format!("{key} given twice")));
        }
    }
    let header_end = sql_start.unwrap_or(text.lines().count());
    let Some(sql_index) = sql_start else {
        errors.push(err(
            header_end.max(1),
            "no SQL after the header; write the SELECT that returns customer_id and dedupe_key"
                .into(),
        ));
        return Err(errors);
    };
    let sql: String = text.lines().skip(sql_index).collect::<Vec<_>>().join("\n");

    let mut get = |key: &str, required: bool| -> Option<(usize, &str)> {
        let v = fields.get(key).copied();
        if v.is_none() && required {
            errors.push(err(1, format!("missing header `-- {key}: ...`")));
        }
        v
    };
    let name = get("name", true).map(|(l, v)| (l, v.to_string()));
    let description = get("description", true)
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let channel = get("channel", true);
    let template = get("template", false).map(|(_, v)| v.to_string());
    let priority = get("priority", false);
    let cooldown = get("cooldown", false);
    let lookback = get("lookback", false);
    let cadence = get("cadence", false);
    let cancel_on = get("cancel_on", false);
    let transactional = get("transactional", false);
    let split = get("split", false);
    let scheduled_at = get("scheduled_at", false);
    let tags = get("tags", false);
    let on_conflict = get("on_conflict", false);
    let on_cap = get("on_cap", false);
    let salt = get("salt", false).map(|(_, v)| v.to_string());

    let mut check =
        |v: Option<(usize, &str)>, what: &str, f: &dyn Fn(&str) -> Result<(), String>| {
            if let Some((line, value)) = v {
                if let Err(e) = f(value) {
                    errors.push(err(line, format!("{what}: {e}")));
                }
            }
        };
    check(channel, "channel", &|v| parse_channel(v).map(|_| ()));
    check(priority, "priority", &|v| {
        v.parse::<i64>()
            .map(|_| ())
            .map_err(|_| format!("{v:?} is not an integer"))
    });
    check(cooldown, "cooldown", &|v| parse_duration(v).map(|_| ()));
    check(lookback, "lookback", &|v| parse_duration(v).map(|_| ()));
    check(cadence, "cadence", &|v| parse_cadence(v).map(|_| ()));
    check(transactional, "transactional", &|v| {
        parse_bool(v).map(|_| ())
    });
    check(split, "split", &|v| parse_split(v).map(|_| ()));
    check(scheduled_at, "scheduled_at", &|v| {
        parse_clock(v).map(|_| ())
    });
    check(on_conflict, "on_conflict", &|v| {
        parse_blocked(v, "suppress").map(|_| ())
    });
    check(on_cap, "on_cap", &|v| parse_blocked(v, "skip").map(|_| ()));
    let mut variants: Vec<Variant> = Vec::new();
    for (line, vname, value) in &variant_lines {
        match parse_variant(vname, value, &params) {
            Ok(v) if variants.iter().any(|x| x.name == v.name) => {
                errors.push(err(*line, format!("variant {vname} declared twice")));
            }
            Ok(v) => variants.push(v),
            Err(e) => errors.push(err(*line, format!("variant {vname}: {e}"))),
        }
    }
    let rule_channel = channel
        .and_then(|(_, v)| parse_channel(v).ok())
        .unwrap_or(ChannelChoice::Fixed(Channel::Email));
    let rule_template = template.clone().unwrap_or_else(|| stem.clone());
    let mut steps: Vec<Step> = Vec::new();
    for (line, number, value) in &step_lines {
        match parse_step(number, value, rule_channel) {
            Ok(mut s) => {
                let expected = steps.len() as u32 + 1;
                if s.number != expected {
                    errors.push(err(*line, format!("step {}: expected step {expected} (steps are numbered 1, 2, … in order)", s.number)));
                } else if steps.last().is_some_and(|p| p.after_secs >= s.after_secs) {
                    errors.push(err(
                        *line,
                        format!(
                            "step {}: `after` must be later than the previous step's",
                            s.number
                        ),
                    ));
                } else if s.after_secs == 0 {
                    errors.push(err(
                        *line,
                        format!(
                            "step {}: `after` must be positive (step 0 is the rule's own message)",
                            s.number
                        ),
                    ));
                }
                if s.template.is_empty() {
                    s.template = format!("{rule_template}_step{}", s.number);
                }
                steps.push(s);
            }
            Err(e) => errors.push(err(*line, format!("step {number}: {e}"))),
        }
    }
    if let Some((line, n)) = &name {
        if *n != stem {
            errors.push(err(*line, format!("name {n:?} must equal the file name {stem:?} (the rule id used in logs, metrics and reports)")));
        }
    }

    let rule = Rule {
        file: file.to_path_buf(),
        name: name.map(|(_, n)| n).unwrap_or_default(),
        description,
        channel: rule_channel,
        template: rule_template,
        priority: priority.and_then(|(_, v)| v.parse().ok()).unwrap_or(0),
        cooldown_secs: cooldown
            .and_then(|(_, v)| parse_duration(v).ok())
            .unwrap_or(0),
        lookback_secs: lookback
            .and_then(|(_, v)| parse_duration(v).ok())
            .unwrap_or(0),
        cadence: cadence
            .and_then(|(_, v)| parse_cadence(v).ok())
            .unwrap_or(Cadence::EveryBatch),
        cancel_on: cancel_on
            .map(|(_, v)| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        transactional: transactional
            .and_then(|(_, v)| parse_bool(v).ok())
            .unwrap_or(false),
        split: split
            .and_then(|(_, v)| parse_split(v).ok())
            .unwrap_or(Split {
                holdout: 0,
                scheduled: 0,
                triggered: 100,
            }),
        scheduled_at_minutes: scheduled_at
            .and_then(|(_, v)| parse_clock(v).ok())
            .unwrap_or(600),
        tags: tags
            .map(|(_, v)| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        on_conflict: on_conflict
            .and_then(|(_, v)| parse_blocked(v, "suppress").ok())
            .unwrap_or(WhenBlocked::Drop),
        on_cap: on_cap
            .and_then(|(_, v)| parse_blocked(v, "skip").ok())
            .unwrap_or(WhenBlocked::Defer),
        salt: salt.unwrap_or_else(|| stem.clone()),
        variants,
        steps,
        params,
        sql,
        sql_line: sql_index + 1,
    };
    // Every placeholder must resolve with the defaults alone.
    if let Err(e) = rule.render_sql(&BTreeMap::new(), "NULL") {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(rule)
    } else {
        Err(errors)
    }
}

/// Loads every `*.sql` in `dir` (sorted by name), returning the good rules
/// and every error of the bad ones.
pub fn load_dir(dir: &Path) -> (Vec<Rule>, Vec<RuleError>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| match e {
                Ok(e) => Some(e.path()),
                // A rule file that cannot be listed must not just vanish.
                Err(e) => {
                    errors.push(RuleError {
                        file: dir.to_path_buf(),
                        line: 0,
                        message: format!("cannot list an entry of the rules folder: {e}"),
                    });
                    None
                }
            })
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect(),
        Err(e) => {
            errors.push(RuleError {
                file: dir.to_path_buf(),
                line: 0,
                message: format!("cannot read the rules folder: {e}"),
            });
            return (rules, errors);
        }
    };
    files.sort();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(text) => match parse(&f, &text) {
                Ok(r) => rules.push(r),
                Err(e) => errors.extend(e),
            },
            Err(e) => errors.push(RuleError {
                file: f,
                line: 0,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    (rules, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CART: &str = "-- name: cart_abandonment
-- description: Cart added, no purchase within the delay.
-- channel: email
-- priority: 50
-- cooldown: 1d
-- lookback: 7d
-- cadence: 15m
-- cancel_on: purchase, order_cancel
-- split: holdout=10 scheduled=20 triggered=70
-- scheduled_at: 09:30
-- param delay: 1h30m
-- param min_items: 2
-- param label: 'it''s here'
--
SELECT customer_id, cart_id AS dedupe_key
FROM open_carts
WHERE added_at < ${now} - ${delay} AND items >= ${min_items} AND ${ label } IS NOT NULL
";

    fn path(name: &str) -> PathBuf {
        PathBuf::from(format!("sql/{name}.sql"))
    }

    #[test]
    fn policy_keys_and_variants_parse_with_defaults() {
        let r = parse(&path("cart_abandonment"), CART).expect("valid");
        assert_eq!(r.on_conflict, WhenBlocked::Drop);
        assert_eq!(r.on_cap, WhenBlocked::Defer);
        assert_eq!(r.salt, "cart_abandonment");
        assert!(r.tags.is_empty() && r.variants.is_empty());
        let text = CART.replacen(
            "-- param delay: 1h30m",
            "-- param delay: 1h30m\n-- tags: cart, promo\n-- on_conflict: defer\n-- on_cap: skip\n-- salt: cart-2026\n-- variant 6h: delay=6h weight=2\n-- variant 48h: delay=48h template=cart_late",
            1,
        );
        let r = parse(&path("cart_abandonment"), &text).expect("valid");
        assert_eq!(r.tags, vec!["cart", "promo"]);
        assert_eq!(
            (r.on_conflict, r.on_cap),
            (WhenBlocked::Defer, WhenBlocked::Drop)
        );
        assert_eq!(r.salt, "cart-2026");
        assert_eq!(r.variants.len(), 2);
        assert_eq!(r.variants[0].weight, 2);
        assert_eq!(r.variants[0].params["delay"], Param::Duration(6 * 3600));
        assert_eq!(r.variants[1].template.as_deref(), Some("cart_late"));
    }

    #[test]
    fn bad_variants_and_policy_values_are_reported_on_their_line() {
        let text = CART.replacen(
            "-- param delay: 1h30m",
            "-- param delay: 1h30m\n-- variant fast: dealy=1h\n-- variant slow: delay=6h weight=0\n-- on_cap: maybe",
            1,
        );
        let errors = parse(&path("cart_abandonment"), &text).expect_err("invalid");
        let lines: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 12 && m.contains("dealy") && m.contains("param dealy")),
            "{lines:?}"
        );
        assert!(
            lines.iter().any(|(l, m)| *l == 13 && m.contains("weight")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 14 && m.contains("`skip` or `defer`")),
            "{lines:?}"
        );
    }

    #[test]
    fn steps_parse_in_order_with_defaults_and_errors_name_their_line() {
        let text = CART.replacen(
            "-- param delay: 1h30m",
            "-- param delay: 1h30m\n-- step 1: after=1d channel=sms stop_on=sms_reply\n-- step 2: after=3d template=last_call",
            1,
        );
        let r = parse(&path("cart_abandonment"), &text).expect("valid");
        assert_eq!(r.steps.len(), 2);
        assert_eq!(
            (
                r.steps[0].after_secs,
                r.steps[0].channel,
                r.steps[0].template.as_str()
            ),
            (
                86_400,
                ChannelChoice::Fixed(Channel::Sms),
                "cart_abandonment_step1"
            )
        );
        assert_eq!(r.steps[0].stop_on, vec!["sms_reply"]);
        assert_eq!(
            (r.steps[1].channel, r.steps[1].template.as_str()),
            (ChannelChoice::Fixed(Channel::Email), "last_call")
        );

        let text = CART.replacen(
            "-- param delay: 1h30m",
            "-- param delay: 1h30m\n-- step 1: after=3d\n-- step 2: after=1d\n-- step 4: after=9d\n-- step 5: channel=sms",
            1,
        );
        let errors = parse(&path("cart_abandonment"), &text).expect_err("invalid");
        let lines: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 13 && m.contains("later than")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 14 && m.contains("expected step 3")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|(l, m)| *l == 15 && m.contains("after=DURATION")),
            "{lines:?}"
        );
    }

    #[test]
    fn parses_every_header_key() {
        let r = parse(&path("cart_abandonment"), CART).expect("valid");
        assert_eq!(r.name, "cart_abandonment");
        assert_eq!(r.channel, ChannelChoice::Fixed(Channel::Email));
        assert_eq!(
            r.template, "cart_abandonment",
            "template defaults to the rule name"
        );
        assert_eq!(
            (r.priority, r.cooldown_secs, r.lookback_secs),
            (50, 86_400, 604_800)
        );
        assert_eq!(r.cadence, Cadence::EverySecs(900));
        assert_eq!(r.cancel_on, vec!["purchase", "order_cancel"]);
        assert_eq!(
            r.split,
            Split {
                holdout: 10,
                scheduled: 20,
                triggered: 70
            }
        );
        assert_eq!(r.scheduled_at_minutes, 9 * 60 + 30);
        assert_eq!(r.params["delay"], Param::Duration(5400));
        assert_eq!(r.sql_line, 15);
    }

    #[test]
    fn renders_parameters_as_sql_literals_with_overrides() {
        let r = parse(&path("cart_abandonment"), CART).expect("valid");
        let sql = r
            .render_sql(&BTreeMap::new(), "TIMESTAMP '2026-01-01T00:00:00Z'")
            .expect("render");
        assert!(
            sql.contains("added_at < TIMESTAMP '2026-01-01T00:00:00Z' - INTERVAL '5400' SECOND"),
            "{sql}"
        );
        assert!(sql.contains("items >= 2"));
        assert!(
            sql.contains("'it''s here' IS NOT NULL"),
            "text is quoted and escaped: {sql}"
        );
        let six_hours: BTreeMap<String, Param> =
            [("delay".to_string(), Param::Duration(6 * 3600))].into();
        assert!(
            r.render_sql(&six_hours, "NOW")
                .expect("render")
                .contains("INTERVAL '21600' SECOND"),
            "a variant overrides a default"
        );
    }

    #[test]
    fn every_error_has_its_line() {
        let bad = "-- name: other_name
-- description: x
-- channel: pigeon
-- cooldown: 3 fortnights
-- split: holdout=10 triggered=80
-- scheduled_at: 25:00
-- colour: blue
-- param delay: soon
SELECT customer_id, x AS dedupe_key
FROM t WHERE y > ${missing}
";
        let errs = parse(&path("cart"), bad).expect_err("invalid");
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![7, 8, 3, 4, 5, 6, 1, 10], "{errs:#?}");
        let text = errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("sql/cart.sql:3: channel: unknown channel \"pigeon\""),
            "{text}"
        );
        assert!(text.contains("sum to 90%"), "{text}");
        assert!(text.contains("unknown parameter ${missing}"), "{text}");
        assert!(text.contains("must equal the file name"), "{text}");
    }

    #[test]
    fn missing_required_keys_and_sql_are_reported() {
        let errs = parse(&path("x"), "-- name: x\n").expect_err("invalid");
        assert!(
            errs.iter().any(|e| e.message.contains("no SQL")),
            "{errs:?}"
        );
        let errs = parse(&path("x"), "-- name: x\nSELECT 1").expect_err("invalid");
        let msgs: Vec<_> = errs.iter().map(|e| e.message.as_str()).collect();
        assert!(
            msgs.iter().any(|m| m.contains("-- description"))
                && msgs.iter().any(|m| m.contains("-- channel")),
            "{msgs:?}"
        );
    }

    #[test]
    fn load_dir_keeps_good_rules_and_reports_bad_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cart_abandonment.sql"), CART).expect("write");
        std::fs::write(dir.path().join("broken.sql"), "-- name: broken\nSELECT 1").expect("write");
        std::fs::write(dir.path().join("notes.md"), "not a rule").expect("write");
        let (rules, errors) = load_dir(dir.path());
        assert_eq!(rules.len(), 1);
        assert!(!errors.is_empty() && errors.iter().all(|e| e.file.ends_with("broken.sql")));
    }
}
