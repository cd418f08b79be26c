//! The program view: is event-driven messaging worth it, across every
//! rule, in money?
//!
//! Each rule is its own experiment (holdout / scheduled / triggered); this
//! view reads them together:
//! - **pooled lifts**: triggered against scheduled, and each against the
//!   holdout, for conversion and revenue per recipient, combined over every
//!   rule that has both arms by inverse-variance weighting of the rules'
//!   own (unadjusted) effects, with the heterogeneity between rules and a
//!   random-effects estimate beside the fixed one (`stats::pool`);
//! - **incremental revenue**: per rule and marketed arm, the revenue lift
//!   per recipient over the holdout × the arm's recipients, with its
//!   interval; per message sent; summed over rules; and by day of
//!   assignment, cumulatively;
//! - **the global control group** (`experiments.global_control_percent`):
//!   every customer who qualified for a marketing rule, held out of all
//!   marketing or not, compared per customer over the report window from
//!   their first qualification, with its sample-ratio check;
//! - **timing**: for rules whose triggered variants differ in their `delay`
//!   parameter, each variant's lift over the holdout by delay.
//!
//! Everything but the global control group comes from the same per-day arm
//! sums as the rule reports ([`crate::metrics::daily_arm_sums`]), so every
//! number here can be recomputed from the rules' sufficient statistics.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use kairos_experiments::stats::{
    Analysis, ArmStats, Effect, Effects, ExperimentInput, Pooled, Study, analyze,
    normal_upper_quantile, pool,
};
use kairos_storage::DataRoot;

use crate::ReportError;
use crate::attribution::{DAY_US, events_ctes, in_windows, lit, window_sums};
use crate::lake::{ID_HASH, Lake};
use crate::metrics::{ArmSums, Source, daily_arm_sums, totals};
use crate::options::{Capping, ReportOptions, rfc3339};
use crate::outcomes::Outcomes;
use crate::report::{Report, RuleDesign, build};

/// The comparisons pooled across rules, (control, treatment).
pub const PAIRS: [(&str, &str); 3] = [
    ("scheduled", "triggered"),
    ("holdout", "triggered"),
    ("holdout", "scheduled"),
];

/// The whole program's answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Program {
    /// What was measured (the same for every rule).
    pub options: ReportOptions,
    /// The latest event time in the lake.
    pub data_until: Option<String>,
    /// Every rule with recipients: its arms in brief.
    pub rules: Vec<RuleLine>,
    /// Per pair of arms, metric and scale: every rule's effect and the
    /// pooled one.
    pub pooled: Vec<PooledComparison>,
    /// The marketed arms' revenue over the holdout, in currency.
    pub incremental: Incremental,
    /// The global control group against everyone marketed.
    pub global_control: GlobalControl,
    /// Lift by delay, for rules with delay variants.
    pub timing: Vec<TimingCurve>,
    /// Why something is missing, in words.
    pub notes: Vec<String>,
}

/// One rule in brief.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleLine {
    /// The rule.
    pub rule: String,
    /// Whether the rule is transactional (not marketing); null when its
    /// file is not in the rules folder.
    pub transactional: Option<bool>,
    /// Every recipient.
    pub recipients: i64,
    /// Per arm: recipients, messages, conversion, revenue per recipient.
    pub arms: Vec<ArmLine>,
}

/// One arm of a rule in brief.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmLine {
    /// `holdout`, `scheduled` or `triggered`.
    pub arm: String,
    /// Assigned customers.
    pub recipients: i64,
    /// `send` decisions to them.
    pub messages_sent: i64,
    /// conversions / recipients.
    pub conversion_rate: f64,
    /// Window revenue (capped) / recipients.
    pub revenue_per_recipient: f64,
}

/// One effect (pair of arms, metric, scale) across rules.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PooledComparison {
    /// Control arm.
    pub control: String,
    /// Treatment arm.
    pub treatment: String,
    /// `conversion` or `revenue_per_recipient`.
    pub metric: &'static str,
    /// `absolute` (treatment − control) or `relative` (÷ |control|).
    pub scale: &'static str,
    /// Each rule's estimate (the forest plot's rows), by rule name.
    pub rules: Vec<RuleEffect>,
    /// Rules with both arms whose effect is not estimable, and why.
    pub not_estimable: Vec<String>,
    /// The pooled effect; null when no rule has an estimate.
    pub pooled: Option<Pooled>,
}

/// A rule's estimate of one effect.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleEffect {
    /// The rule.
    pub rule: String,
    /// The rule's estimate.
    pub estimate: f64,
    /// Its standard error.
    pub std_error: f64,
    /// Its (1 − alpha) t interval, as in the rule's report.
    pub ci: [f64; 2],
    /// Recipients of both arms.
    pub recipients: i64,
    /// Share of the fixed-effect weight.
    pub weight: f64,
}

/// Revenue the marketed arms made over the holdout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Incremental {
    /// Per rule and marketed arm.
    pub rules: Vec<RuleIncrement>,
    /// Summed over rules: `triggered`, `scheduled`, and `all` (both).
    pub totals: Vec<TotalIncrement>,
    /// By UTC day of assignment, per marketed arm (`triggered`,
    /// `scheduled`): the cumulative incremental revenue and that day's part.
    pub daily: Vec<DailySeries>,
}

/// One rule's marketed arm against its holdout, in currency.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleIncrement {
    /// The rule.
    pub rule: String,
    /// `triggered` or `scheduled`.
    pub arm: String,
    /// The arm's recipients.
    pub recipients: i64,
    /// `send` decisions in the arm.
    pub messages_sent: i64,
    /// Revenue per recipient, arm − holdout.
    pub lift_per_recipient: f64,
    /// lift × recipients.
    pub incremental_revenue: f64,
    /// Its standard error, √(n·s²_arm + n²·s²_holdout/n_holdout).
    pub std_error: f64,
    /// Its normal (1 − alpha) interval.
    pub ci: [f64; 2],
    /// incremental_revenue / messages_sent; null without messages.
    pub per_message: Option<f64>,
    /// Its interval; null without messages.
    pub per_message_ci: Option<[f64; 2]>,
}

/// Incremental revenue summed over rules.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TotalIncrement {
    /// `triggered`, `scheduled` or `all`.
    pub arm: String,
    /// Rules contributing.
    pub rules: usize,
    /// Their recipients in the arm(s).
    pub recipients: i64,
    /// Their `send` decisions.
    pub messages_sent: i64,
    /// Σ incremental revenue.
    pub incremental_revenue: f64,
    /// Its standard error: rules are treated as independent; within a rule,
    /// `all` counts the holdout the two arms share once.
    pub std_error: f64,
    /// Normal (1 − alpha) interval.
    pub ci: [f64; 2],
    /// incremental_revenue / messages_sent: what one message earns.
    pub per_message: Option<f64>,
    /// Its interval.
    pub per_message_ci: Option<[f64; 2]>,
}

/// One marketed arm's incremental revenue by day of assignment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DailySeries {
    /// `triggered` or `scheduled`.
    pub arm: String,
    /// By day, oldest first.
    pub points: Vec<DailyPoint>,
}

/// Incremental revenue of everyone assigned up to the end of `date`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DailyPoint {
    /// The UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// Σ over rules of recipients so far × (arm − holdout revenue per
    /// recipient so far).
    pub cumulative: f64,
    /// Its normal (1 − alpha) interval.
    pub cumulative_ci: [f64; 2],
    /// cumulative − the previous day's cumulative.
    pub day: f64,
}

/// The global control group against everyone marketed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlobalControl {
    /// `experiments.global_control_percent` as configured now.
    pub configured_percent: f64,
    /// Customers held out of all marketing (`sends` rows with variant
    /// `global_control`), and everyone else who qualified for a marketing
    /// rule (`assignments` of non-transactional rules): customers,
    /// conversions, revenue per customer. Empty without a control group.
    pub groups: Vec<GroupLine>,
    /// `marketed` against `global_control`, per customer, with the
    /// sample-ratio check against the configured percent (no check when
    /// it is 0); null without both groups.
    pub analysis: Option<Analysis>,
    /// Revenue per customer lift × marketed customers: what marketing as a
    /// whole earned; null without an estimate.
    pub incremental_revenue: Option<f64>,
    /// Its interval.
    pub incremental_revenue_ci: Option<[f64; 2]>,
}

/// One group of the global control comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupLine {
    /// `global_control` or `marketed`.
    pub group: String,
    /// Customers.
    pub customers: i64,
    /// Customers who converted within the window after their first
    /// qualification.
    pub conversions: i64,
    /// conversions / customers.
    pub conversion_rate: f64,
    /// Window revenue (capped) / customers.
    pub revenue_per_customer: f64,
}

/// A rule's lift over the holdout by the delay of its variants.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimingCurve {
    /// The rule.
    pub rule: String,
    /// By increasing delay.
    pub points: Vec<TimingPoint>,
}

/// One delay variant against the holdout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimingPoint {
    /// The variant.
    pub variant: String,
    /// Its `delay` parameter, seconds.
    pub delay_secs: u64,
    /// Its recipients.
    pub recipients: i64,
    /// Conversion lift over the holdout.
    pub conversion: Effects,
    /// Revenue per recipient lift over the holdout.
    pub revenue: Effects,
}

/// The program view over the lake at `root`, exact: the raw tables or
/// outcomes refreshed first (see [`program_from`]).
pub async fn program(
    root: &DataRoot,
    designs: &[RuleDesign],
    options: &ReportOptions,
    global_control_percent: f64,
) -> Result<Program, ReportError> {
    program_from(
        root,
        designs,
        options,
        &Outcomes::exact(),
        global_control_percent,
    )
    .await
}

/// The program view over the lake at `root`, from the maintained outcomes
/// when they answer `options`.
pub async fn program_from(
    root: &DataRoot,
    designs: &[RuleDesign],
    options: &ReportOptions,
    outcomes: &Outcomes,
    global_control_percent: f64,
) -> Result<Program, ReportError> {
    let snapshot = outcomes.for_report(root, options).await;
    let source = snapshot.as_ref().map_or(Source::Raw, Source::Outcomes);
    let lake = Lake::open(root)?;
    let (daily, until) = daily_arm_sums(&lake, options, None, source).await?;
    let groups = global_control_sums(&lake, designs, options).await?;
    let designs = designs.to_vec();
    let options = options.clone();
    crate::off_runtime(move || {
        assemble(
            &daily,
            &designs,
            &options,
            until,
            &groups,
            global_control_percent,
        )
    })
    .await?
}

/// Builds the program view from every rule's per-day arm sums and the
/// global control group's sums (pure: no I/O).
pub fn assemble(
    daily: &[ArmSums],
    designs: &[RuleDesign],
    options: &ReportOptions,
    until: Option<i64>,
    global_groups: &[GroupSums],
    global_control_percent: f64,
) -> Result<Program, ReportError> {
    let mut notes = Vec::new();
    let rows = totals(daily);
    let names: BTreeSet<&str> = rows.iter().map(|r| r.experiment.as_str()).collect();
    let mut reports = Vec::new();
    for name in names {
        let mine: Vec<ArmSums> = rows
            .iter()
            .filter(|r| r.experiment == name)
            .cloned()
            .collect();
        let design = designs.iter().find(|d| d.rule == name);
        reports.push(build(name, &mine, design, options, until)?);
    }
    let rules = reports
        .iter()
        .map(|r| RuleLine {
            rule: r.rule.clone(),
            transactional: r.design.as_ref().map(|d| d.transactional),
            recipients: r.recipients,
            arms: r
                .arms
                .iter()
                .map(|a| ArmLine {
                    arm: a.arm.clone(),
                    recipients: a.recipients,
                    messages_sent: a.messages_sent,
                    conversion_rate: a.conversion_rate,
                    revenue_per_recipient: a.revenue_per_recipient,
                })
                .collect(),
        })
        .collect();

    let mut pooled = Vec::new();
    for (control, treatment) in PAIRS {
        for metric in ["conversion", "revenue_per_recipient"] {
            for scale in ["absolute", "relative"] {
                pooled.push(pool_across(
                    &reports,
                    control,
                    treatment,
                    metric,
                    scale,
                    options.alpha,
                )?);
            }
        }
    }
    if pooled.iter().all(|p| p.pooled.is_none()) {
        notes.push(
            "no rule has two arms to compare yet: the pooled lifts need rules with recipients in both arms"
                .into(),
        );
    }
    let incremental = incremental(&reports, daily, options.alpha, &mut notes);
    let global_control = global_control(global_groups, global_control_percent, options.alpha)?;
    if global_control.groups.is_empty() {
        notes.push(if global_control_percent > 0.0 {
            "no customer of the global control group has qualified for a marketing rule yet".into()
        } else {
            "no global control group: set experiments.global_control_percent (e.g. 5) to measure the whole program against customers who get no marketing".into()
        });
    }
    let timing = timing(&reports);
    Ok(Program {
        options: options.clone(),
        data_until: until.map(rfc3339),
        rules,
        pooled,
        incremental,
        global_control,
        timing,
        notes,
    })
}

/// The effect `metric`/`scale` of `treatment` over `control` in every
/// report that compares them, pooled.
fn pool_across(
    reports: &[Report],
    control: &str,
    treatment: &str,
    metric: &'static str,
    scale: &'static str,
    alpha: f64,
) -> Result<PooledComparison, ReportError> {
    let mut rules = Vec::new();
    let mut not_estimable = Vec::new();
    for r in reports {
        let Some(c) = r.analysis.as_ref().and_then(|a| {
            a.comparisons
                .iter()
                .find(|c| c.control == control && c.treatment == treatment)
        }) else {
            continue;
        };
        let effects = if metric == "conversion" {
            &c.conversion
        } else {
            &c.revenue
        };
        let effect = if scale == "absolute" {
            &effects.absolute
        } else {
            &effects.relative
        };
        let recipients = r
            .arms
            .iter()
            .filter(|a| a.name == control || a.name == treatment)
            .map(|a| a.recipients)
            .sum();
        match effect {
            // Weights 1/se² overflow outside this range.
            Effect::Estimated(e) if !(1e-150..=1e150).contains(&e.std_error) => {
                not_estimable.push(format!("{}: numerical_overflow", r.rule));
            }
            Effect::Estimated(e) => rules.push(RuleEffect {
                rule: r.rule.clone(),
                estimate: e.estimate,
                std_error: e.std_error,
                ci: e.ci,
                recipients,
                weight: 0.0,
            }),
            Effect::NotEstimable { reason } => {
                not_estimable.push(format!("{}: {}", r.rule, reason.as_str()));
            }
        }
    }
    let pooled = if rules.is_empty() {
        None
    } else {
        let studies: Vec<Study> = rules
            .iter()
            .map(|e| Study {
                estimate: e.estimate,
                std_error: e.std_error,
            })
            .collect();
        let p = pool(&studies, alpha)?;
        for (e, w) in rules.iter_mut().zip(&p.weights) {
            e.weight = *w;
        }
        Some(p)
    };
    Ok(PooledComparison {
        control: control.into(),
        treatment: treatment.into(),
        metric,
        scale,
        rules,
        not_estimable,
        pooled,
    })
}

/// Mean and per-recipient variance of revenue from an arm's sums.
fn moments(n: i64, sum: f64, sum_squares: f64) -> (f64, f64) {
    let nf = n as f64;
    let var = if n > 1 {
        ((sum_squares - sum * sum / nf) / (nf - 1.0)).max(0.0)
    } else {
        0.0
    };
    (sum / nf, var)
}

fn normal_ci(estimate: f64, std_error: f64, alpha: f64) -> [f64; 2] {
    let z = normal_upper_quantile(alpha / 2.0);
    [estimate - z * std_error, estimate + z * std_error]
}

/// An arm's recipients, revenue mean and per-recipient variance, and its
/// `send` decisions; `None` below two recipients (no variance yet).
fn arm_revenue(r: &Report, arm: &str) -> Option<(f64, f64, f64, i64)> {
    let a = r.arms.iter().find(|a| a.name == arm)?;
    if a.recipients < 2 {
        return None;
    }
    let (mean, variance) = moments(
        a.recipients,
        a.stats.revenue_sum,
        a.stats.revenue_sum_squares,
    );
    Some((a.recipients as f64, mean, variance, a.messages_sent))
}

/// Incremental revenue straight from the arms' sums (no baseline needed,
/// so a holdout that bought nothing still counts): n_a·(ȳ_a − ȳ_h) with
/// variance n_a·s²_a + n_a²·s²_h/n_h. Both marketed arms of a rule share
/// its holdout, so their sum (`all`) has variance
/// n_t·s²_t + n_s·s²_s + (n_t + n_s)²·s²_h/n_h, not the sum of theirs.
fn incremental(
    reports: &[Report],
    daily: &[ArmSums],
    alpha: f64,
    notes: &mut Vec<String>,
) -> Incremental {
    #[derive(Default)]
    struct Total {
        revenue: f64,
        variance: f64,
        recipients: i64,
        messages: i64,
        rules: usize,
    }
    let mut rules = Vec::new();
    let mut totals: BTreeMap<&str, Total> = BTreeMap::new();
    let mut series_rules: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in reports {
        let marketed = ["triggered", "scheduled"].map(|arm| (arm, arm_revenue(r, arm)));
        if marketed.iter().all(|(_, m)| m.is_none()) {
            continue;
        }
        let Some((nh, mh, vh, _)) = arm_revenue(r, "holdout") else {
            notes.push(format!(
                "{}: fewer than two holdout recipients, so no incremental revenue yet",
                r.rule
            ));
            continue;
        };
        let (mut all_revenue, mut own_variance, mut all_n, mut all_messages) = (0.0, 0.0, 0.0, 0);
        for (arm, m) in marketed {
            let Some((n, mean, variance, messages)) = m else {
                continue;
            };
            let revenue = n * (mean - mh);
            let var = n * variance + n * n * vh / nh;
            let ci = normal_ci(revenue, var.sqrt(), alpha);
            let per = |v: f64| v / messages as f64;
            rules.push(RuleIncrement {
                rule: r.rule.clone(),
                arm: arm.into(),
                recipients: n as i64,
                messages_sent: messages,
                lift_per_recipient: mean - mh,
                incremental_revenue: revenue,
                std_error: var.sqrt(),
                ci,
                per_message: (messages > 0).then(|| per(revenue)),
                per_message_ci: (messages > 0).then(|| [per(ci[0]), per(ci[1])]),
            });
            let t = totals.entry(arm).or_default();
            t.revenue += revenue;
            t.variance += var;
            t.recipients += n as i64;
            t.messages += messages;
            t.rules += 1;
            series_rules.entry(arm).or_default().insert(r.rule.as_str());
            all_revenue += revenue;
            own_variance += n * variance;
            all_n += n;
            all_messages += messages;
        }
        let t = totals.entry("all").or_default();
        t.revenue += all_revenue;
        t.variance += own_variance + all_n * all_n * vh / nh;
        t.recipients += all_n as i64;
        t.messages += all_messages;
        t.rules += 1;
    }
    let totals = ["triggered", "scheduled", "all"]
        .map(|arm| {
            let t = totals.remove(arm).unwrap_or_default();
            let se = t.variance.sqrt();
            let ci = normal_ci(t.revenue, se, alpha);
            let m = t.messages as f64;
            TotalIncrement {
                arm: arm.into(),
                rules: t.rules,
                recipients: t.recipients,
                messages_sent: t.messages,
                incremental_revenue: t.revenue,
                std_error: se,
                ci,
                per_message: (t.messages > 0).then(|| t.revenue / m),
                per_message_ci: (t.messages > 0).then(|| [ci[0] / m, ci[1] / m]),
            }
        })
        .to_vec();
    let none = BTreeSet::new();
    let daily = ["triggered", "scheduled"]
        .iter()
        .map(|arm| DailySeries {
            arm: (*arm).into(),
            points: daily_series(daily, series_rules.get(arm).unwrap_or(&none), arm, alpha),
        })
        .collect();
    Incremental {
        rules,
        totals,
        daily,
    }
}

/// Cumulative incremental revenue of `arm` over the holdout, summed over
/// `rules`, by day of assignment: on each day every rule contributes its
/// recipients so far × its lift so far (0 until both arms have two
/// recipients); the last point is the total.
fn daily_series(
    daily: &[ArmSums],
    rules: &BTreeSet<&str>,
    arm: &str,
    alpha: f64,
) -> Vec<DailyPoint> {
    let days: BTreeSet<i64> = daily
        .iter()
        .filter(|r| rules.contains(r.experiment.as_str()))
        .filter_map(|r| r.day)
        .collect();
    // (rule, arm) → running (n, Σy, Σy²).
    let mut running: BTreeMap<(&str, &str), (i64, f64, f64)> = BTreeMap::new();
    let mut points = Vec::new();
    let mut previous = 0.0;
    for day in days {
        for r in daily.iter().filter(|r| r.day == Some(day)) {
            if !rules.contains(r.experiment.as_str()) || (r.arm != arm && r.arm != "holdout") {
                continue;
            }
            let e = running
                .entry((r.experiment.as_str(), r.arm.as_str()))
                .or_default();
            e.0 += r.recipients;
            e.1 += r.revenue_sum;
            e.2 += r.revenue_sum_squares;
        }
        let (mut cumulative, mut variance) = (0.0, 0.0);
        for rule in rules {
            let (Some(t), Some(h)) = (running.get(&(rule, arm)), running.get(&(rule, "holdout")))
            else {
                continue;
            };
            if t.0 < 2 || h.0 < 2 {
                continue;
            }
            let ((mt, vt), (mh, vh)) = (moments(t.0, t.1, t.2), moments(h.0, h.1, h.2));
            let n = t.0 as f64;
            cumulative += n * (mt - mh);
            variance += n * n * (vt / n + vh / h.0 as f64);
        }
        points.push(DailyPoint {
            date: rfc3339(day * DAY_US)[..10].to_string(),
            cumulative,
            cumulative_ci: normal_ci(cumulative, variance.sqrt(), alpha),
            day: cumulative - previous,
        });
        previous = cumulative;
    }
    points
}

/// One group's per-customer sums for the global control comparison.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupSums {
    /// `global_control` or `marketed`.
    pub group: String,
    /// Customers.
    pub customers: i64,
    /// Customers who converted.
    pub conversions: i64,
    /// Σ window revenue per customer (capped).
    pub revenue_sum: f64,
    /// Σ of its square.
    pub revenue_sum_squares: f64,
}

fn global_control(
    groups: &[GroupSums],
    configured_percent: f64,
    alpha: f64,
) -> Result<GlobalControl, ReportError> {
    let lines = groups
        .iter()
        .filter(|g| g.customers > 0)
        .map(|g| GroupLine {
            group: g.group.clone(),
            customers: g.customers,
            conversions: g.conversions,
            conversion_rate: g.conversions as f64 / g.customers as f64,
            revenue_per_customer: g.revenue_sum / g.customers as f64,
        })
        .collect::<Vec<_>>();
    let find = |name: &str| groups.iter().find(|g| g.group == name && g.customers > 0);
    let (Some(control), Some(marketed)) = (find("global_control"), find("marketed")) else {
        return Ok(GlobalControl {
            configured_percent,
            groups: if find("global_control").is_some() {
                lines
            } else {
                Vec::new()
            },
            analysis: None,
            incremental_revenue: None,
            incremental_revenue_ci: None,
        });
    };
    let arm = |g: &GroupSums, weight: f64| {
        let mut a = ArmStats::new(
            g.group.clone(),
            g.customers,
            g.conversions,
            g.revenue_sum,
            g.revenue_sum_squares,
        );
        // The configured split, for the sample-ratio check.
        a.weight = (configured_percent > 0.0 && configured_percent < 100.0).then_some(weight);
        a
    };
    let mut input = ExperimentInput::new(vec![
        arm(control, configured_percent),
        arm(marketed, 100.0 - configured_percent),
    ]);
    input.alpha = alpha;
    let analysis = analyze(&input)?;
    let (incremental_revenue, incremental_revenue_ci) =
        match analysis.comparisons.first().map(|c| &c.revenue.absolute) {
            Some(Effect::Estimated(e)) => {
                let n = marketed.customers as f64;
                (Some(e.estimate * n), Some([e.ci[0] * n, e.ci[1] * n]))
            }
            _ => (None, None),
        };
    Ok(GlobalControl {
        configured_percent,
        groups: lines,
        analysis: Some(analysis),
        incremental_revenue,
        incremental_revenue_ci,
    })
}

/// Every rule whose variants differ in their delay: each variant against
/// the holdout, by delay.
fn timing(reports: &[Report]) -> Vec<TimingCurve> {
    let mut out = Vec::new();
    for r in reports {
        let (Some(design), Some(analysis)) = (&r.design, &r.variant_analysis) else {
            continue;
        };
        let mut points: Vec<TimingPoint> = design
            .variants
            .iter()
            .filter_map(|v| {
                let delay_secs = v.delay_secs?;
                let name = format!("triggered:{}", v.name);
                let c = analysis
                    .comparisons
                    .iter()
                    .find(|c| c.control == "holdout" && c.treatment == name)?;
                let recipients = r.variants.iter().find(|a| a.name == name)?.recipients;
                Some(TimingPoint {
                    variant: v.name.clone(),
                    delay_secs,
                    recipients,
                    conversion: c.conversion.clone(),
                    revenue: c.revenue.clone(),
                })
            })
            .collect();
        points.sort_by_key(|p| p.delay_secs);
        let delays: BTreeSet<u64> = points.iter().map(|p| p.delay_secs).collect();
        if delays.len() >= 2 {
            out.push(TimingCurve {
                rule: r.rule.clone(),
                points,
            });
        }
    }
    out
}

/// The global control group's and the marketed customers' per-customer
/// window sums, from the raw tables: a customer's window starts at their
/// first qualification for a marketing rule (the earliest global-control
/// `sends` row, or the earliest assignment of a non-transactional rule).
/// A customer found in both (the percent was changed) counts as control.
pub async fn global_control_sums(
    lake: &Lake,
    designs: &[RuleDesign],
    options: &ReportOptions,
) -> Result<Vec<GroupSums>, ReportError> {
    let transactional: Vec<String> = designs
        .iter()
        .filter(|d| d.transactional)
        .map(|d| lit(&d.rule))
        .collect();
    let marketing = if transactional.is_empty() {
        "TRUE".to_string()
    } else {
        format!("experiment NOT IN ({})", transactional.join(", "))
    };
    // Without a control group there is nothing to compare: one look at the
    // `variant` column spares the join of every marketed customer to the
    // events.
    let held_out = lake
        .ctx
        .sql("SELECT 1 FROM sends WHERE variant = 'global_control' LIMIT 1")
        .await?
        .count()
        .await?;
    if held_out == 0 {
        return Ok(Vec::new());
    }
    let sql = global_control_sql(options, &marketing);
    let batches = lake.ctx.sql(&sql).await?.collect().await?;
    let mut out = Vec::new();
    for b in &batches {
        use datafusion::arrow::array::{Array, AsArray};
        use datafusion::arrow::compute::cast;
        use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
        let col = |name: &str, ty: &DataType| -> Result<_, ReportError> {
            let c = b.column_by_name(name).ok_or_else(|| {
                ReportError::Query(datafusion::error::DataFusionError::Internal(format!(
                    "global control query has no column {name}"
                )))
            })?;
            Ok(cast(c, ty)?)
        };
        let group = col("grp", &DataType::Utf8)?;
        let (customers, conversions) = (
            col("customers", &DataType::Int64)?,
            col("conversions", &DataType::Int64)?,
        );
        let (sum, squares) = (
            col("revenue_sum", &DataType::Float64)?,
            col("revenue_sum_squares", &DataType::Float64)?,
        );
        let group = group.as_string::<i32>();
        for i in 0..b.num_rows() {
            let int = |a: &dyn Array| {
                let a = a.as_primitive::<Int64Type>();
                if a.is_valid(i) { a.value(i) } else { 0 }
            };
            let float = |a: &dyn Array| {
                let a = a.as_primitive::<Float64Type>();
                if a.is_valid(i) { a.value(i) } else { 0.0 }
            };
            out.push(GroupSums {
                group: group.value(i).to_string(),
                customers: int(customers.as_ref()),
                conversions: int(conversions.as_ref()),
                revenue_sum: float(sum.as_ref()),
                revenue_sum_squares: float(squares.as_ref()),
            });
        }
    }
    Ok(out)
}

/// The global control query; `marketing` selects the assignments of
/// marketing rules.
fn global_control_sql(options: &ReportOptions, marketing: &str) -> String {
    let w = options.window_secs as i64 * 1_000_000;
    let conv = lit(&options.conversion_event);
    let rev = lit(&options.revenue_event);
    let mut range = Vec::new();
    if let Some(f) = options.from_us {
        range.push(format!("at >= {f}"));
    }
    if let Some(t) = options.to_us {
        range.push(format!("at < {t}"));
    }
    let range = if range.is_empty() {
        "TRUE".to_string()
    } else {
        range.join(" AND ")
    };
    // Nearest-rank percentile cap over both groups' positive revenue, as
    // the rule reports cap within an experiment.
    let (caps, cap, cap_join) = match options.cap {
        Capping::None => (
            String::new(),
            "CAST(NULL AS DOUBLE)".to_string(),
            String::new(),
        ),
        Capping::Absolute { value } => (
            String::new(),
            format!("CAST({value:?} AS DOUBLE)"),
            String::new(),
        ),
        Capping::Percentile { percentile } => (
            format!(
                "caps AS (
                   SELECT min(CASE WHEN below >= k THEN y END) AS cap FROM (
                     SELECT y, count(*) OVER (ORDER BY y RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS below,
                            CAST(ceil({q:?} * count(*) OVER ()) AS BIGINT) AS k
                     FROM per WHERE y > 0)),",
                q = percentile / 100.0
            ),
            "caps.cap".to_string(),
            "CROSS JOIN caps".to_string(),
        ),
    };
    format!(
        "WITH {events},
         gc AS (SELECT customer_id, min(CAST(decided_at AS BIGINT)) AS at
                FROM sends WHERE variant = 'global_control' GROUP BY customer_id),
         mk AS (SELECT customer_id, min(CAST(assigned_at AS BIGINT)) AS at
                FROM assignments WHERE {marketing} GROUP BY customer_id),
         units AS (
           SELECT grp, at, {ID_HASH}(customer_id, 1) AS k1, {ID_HASH}(customer_id, 2) AS k2
           FROM (SELECT 'global_control' AS grp, customer_id, at FROM gc
                 UNION ALL
                 SELECT 'marketed' AS grp, mk.customer_id, mk.at FROM mk
                 LEFT JOIN gc ON gc.customer_id = mk.customer_id WHERE gc.customer_id IS NULL)
           WHERE {range}),
         per AS (
           SELECT u.grp, u.k1, u.k2, {sums}
           FROM ev JOIN units u ON {join}
           GROUP BY u.grp, u.k1, u.k2, u.at),
         {caps}
         capped AS (
           SELECT per.grp, per.converted,
                  CASE WHEN {cap} IS NOT NULL AND per.y > {cap} THEN {cap} ELSE per.y END AS yc
           FROM per {cap_join}),
         hits AS (
           SELECT grp, CAST(sum(converted) AS BIGINT) AS conversions,
                  sum(yc) AS revenue_sum, sum(yc * yc) AS revenue_sum_squares
           FROM capped GROUP BY grp),
         n AS (SELECT grp, count(*) AS customers FROM units GROUP BY grp)
         SELECT n.grp, n.customers,
                coalesce(hits.conversions, 0) AS conversions,
                coalesce(hits.revenue_sum, 0.0) AS revenue_sum,
                coalesce(hits.revenue_sum_squares, 0.0) AS revenue_sum_squares
         FROM n LEFT JOIN hits ON hits.grp = n.grp
         ORDER BY n.grp",
        events = events_ctes("events", &conv, &rev, ""),
        sums = window_sums("u", &conv, &rev),
        join = in_windows("u", 0, w),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::VariantWeight;

    /// A per-day row: `n` recipients, `c` conversions, revenue sum `s` and
    /// sum of squares `ss`, `m` messages.
    #[allow(clippy::too_many_arguments)]
    fn row(
        rule: &str,
        arm: &str,
        variant: Option<&str>,
        day: i64,
        n: i64,
        c: i64,
        s: f64,
        ss: f64,
        m: i64,
    ) -> ArmSums {
        ArmSums {
            experiment: rule.into(),
            arm: arm.into(),
            variant: variant.map(str::to_string),
            recipients: n,
            messages: m,
            conversions: c,
            revenue_uncapped: s,
            revenue_sum: s,
            revenue_sum_squares: ss,
            day: Some(day),
            ..ArmSums::default()
        }
    }

    fn design(rule: &str) -> RuleDesign {
        RuleDesign {
            rule: rule.into(),
            holdout: 10,
            scheduled: 20,
            triggered: 70,
            variants: Vec::new(),
            transactional: false,
        }
    }

    /// Three rules over two days; `order` has no scheduled arm.
    fn lake() -> Vec<ArmSums> {
        vec![
            row("cart", "holdout", None, 100, 400, 40, 2000.0, 60_000.0, 0),
            row("cart", "holdout", None, 101, 600, 66, 3300.0, 95_000.0, 0),
            row(
                "cart",
                "scheduled",
                None,
                100,
                900,
                99,
                5400.0,
                150_000.0,
                900,
            ),
            row(
                "cart",
                "scheduled",
                None,
                101,
                1100,
                130,
                7000.0,
                200_000.0,
                1000,
            ),
            row(
                "cart",
                "triggered",
                None,
                100,
                3000,
                390,
                21_000.0,
                600_000.0,
                2900,
            ),
            row(
                "cart",
                "triggered",
                None,
                101,
                4000,
                500,
                27_000.0,
                800_000.0,
                3800,
            ),
            row("browse", "holdout", None, 100, 500, 20, 900.0, 40_000.0, 0),
            row(
                "browse",
                "scheduled",
                None,
                100,
                1000,
                45,
                2100.0,
                90_000.0,
                950,
            ),
            row(
                "browse",
                "triggered",
                None,
                101,
                3500,
                170,
                7600.0,
                330_000.0,
                3300,
            ),
            row("order", "holdout", None, 100, 300, 30, 1500.0, 45_000.0, 0),
            row(
                "order",
                "triggered",
                None,
                100,
                2700,
                300,
                15_000.0,
                430_000.0,
                2600,
            ),
        ]
    }

    /// n, mean, per-recipient variance of an arm's revenue.
    fn revenue(rows: &[ArmSums], rule: &str, arm: &str) -> (f64, f64, f64) {
        let (mut n, mut s, mut ss) = (0.0, 0.0, 0.0);
        for r in rows.iter().filter(|r| r.experiment == rule && r.arm == arm) {
            n += r.recipients as f64;
            s += r.revenue_sum;
            ss += r.revenue_sum_squares;
        }
        (n, s / n, (ss - s * s / n) / (n - 1.0))
    }

    fn conversion(rows: &[ArmSums], rule: &str, arm: &str) -> (f64, f64, f64) {
        let (mut n, mut c) = (0.0, 0.0);
        for r in rows.iter().filter(|r| r.experiment == rule && r.arm == arm) {
            n += r.recipients as f64;
            c += r.conversions as f64;
        }
        let p = c / n;
        (n, p, p * (1.0 - p))
    }

    fn find<'a>(p: &'a Program, c: &str, t: &str, metric: &str, scale: &str) -> &'a Pooled {
        p.pooled
            .iter()
            .find(|x| x.control == c && x.treatment == t && x.metric == metric && x.scale == scale)
            .and_then(|x| x.pooled.as_ref())
            .expect("pooled")
    }

    #[test]
    fn pooled_lifts_equal_a_by_hand_recomputation_from_the_sums() {
        let rows = lake();
        let designs = [design("cart"), design("browse"), design("order")];
        let p =
            assemble(&rows, &designs, &ReportOptions::default(), None, &[], 0.0).expect("program");
        let z = 1.959_963_984_540_054;
        for (control, treatment, rules) in [
            ("scheduled", "triggered", vec!["browse", "cart"]),
            ("holdout", "triggered", vec!["browse", "cart", "order"]),
            ("holdout", "scheduled", vec!["browse", "cart"]),
        ] {
            for (metric, stats) in [
                (
                    "revenue_per_recipient",
                    revenue as fn(&[ArmSums], &str, &str) -> _,
                ),
                ("conversion", conversion),
            ] {
                // Relative: (B − A)/|A| with the delta-method variance;
                // absolute: B − A with Var(B)/n_B + Var(A)/n_A.
                for scale in ["relative", "absolute"] {
                    let (mut sw, mut swx) = (0.0, 0.0);
                    let mut studies = Vec::new();
                    for rule in &rules {
                        let (na, ma, va) = stats(&rows, rule, control);
                        let (nb, mb, vb) = stats(&rows, rule, treatment);
                        let (est, var) = if scale == "relative" {
                            (
                                (mb - ma) / ma.abs(),
                                vb / (ma * ma * nb) + va * mb * mb / (ma.powi(4) * na),
                            )
                        } else {
                            (mb - ma, vb / nb + va / na)
                        };
                        sw += 1.0 / var;
                        swx += est / var;
                        studies.push((est, var));
                    }
                    let pooled = swx / sw;
                    let se = (1.0 / sw).sqrt();
                    let got = find(&p, control, treatment, metric, scale);
                    let what = format!("{treatment} vs {control}, {metric} {scale}");
                    assert_eq!(got.studies, rules.len(), "{what}");
                    assert!(
                        (got.fixed.estimate - pooled).abs() < 1e-12 * pooled.abs().max(1e-3),
                        "{what}: {} vs {pooled}",
                        got.fixed.estimate
                    );
                    assert!((got.fixed.std_error - se).abs() < 1e-12 * se, "{what}");
                    assert!(
                        (got.fixed.ci[1] - (pooled + z * se)).abs() < 1e-9 * se.max(1e-9),
                        "{what}"
                    );
                    if let Some(h) = &got.heterogeneity {
                        let q: f64 = studies.iter().map(|(e, v)| (e - pooled).powi(2) / v).sum();
                        assert!(
                            (h.q - q).abs() < 1e-9 * q.max(1.0),
                            "{what}: Q {} vs {q}",
                            h.q
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn incremental_revenue_is_lift_times_recipients_summed_over_rules() {
        let rows = lake();
        let designs = [design("cart"), design("browse"), design("order")];
        let p =
            assemble(&rows, &designs, &ReportOptions::default(), None, &[], 0.0).expect("program");
        let (mut total, mut var, mut messages) = (0.0, 0.0, 0);
        for rule in ["cart", "browse", "order"] {
            let (nh, mh, vh) = revenue(&rows, rule, "holdout");
            let (nt, mt, vt) = revenue(&rows, rule, "triggered");
            let inc = nt * (mt - mh);
            let r = p
                .incremental
                .rules
                .iter()
                .find(|r| r.rule == rule && r.arm == "triggered")
                .expect("rule increment");
            assert!(
                (r.incremental_revenue - inc).abs() < 1e-9 * inc.abs(),
                "{rule}"
            );
            let m: i64 = rows
                .iter()
                .filter(|x| x.experiment == rule && x.arm == "triggered")
                .map(|x| x.messages)
                .sum();
            assert_eq!(r.messages_sent, m);
            assert!((r.per_message.expect("messages") - inc / m as f64).abs() < 1e-9);
            total += inc;
            var += nt * nt * (vt / nt + vh / nh);
            messages += m;
        }
        let t = p
            .incremental
            .totals
            .iter()
            .find(|t| t.arm == "triggered")
            .expect("total");
        assert_eq!((t.rules, t.messages_sent), (3, messages));
        assert!((t.incremental_revenue - total).abs() < 1e-9 * total.abs());
        assert!((t.std_error - var.sqrt()).abs() < 1e-9 * var.sqrt());
        assert!((t.per_message.expect("messages") - total / messages as f64).abs() < 1e-9);
        // Scheduled has two rules; "all" adds both arms.
        let s = &p.incremental.totals[1];
        assert_eq!((s.arm.as_str(), s.rules), ("scheduled", 2));
        let all = &p.incremental.totals[2];
        assert!((all.incremental_revenue - (total + s.incremental_revenue)).abs() < 1e-6);
        // The shared holdout counted once: n_t·s²_t + n_s·s²_s + (n_t + n_s)²·s²_h/n_h.
        let mut all_var = 0.0;
        for rule in ["cart", "browse", "order"] {
            let (nh, _, vh) = revenue(&rows, rule, "holdout");
            let (nt, _, vt) = revenue(&rows, rule, "triggered");
            let (ns, vs) = if rule == "order" {
                (0.0, 0.0)
            } else {
                let (ns, _, vs) = revenue(&rows, rule, "scheduled");
                (ns, vs)
            };
            all_var += nt * vt + ns * vs + (nt + ns).powi(2) * vh / nh;
        }
        assert!(
            (all.std_error - all_var.sqrt()).abs() < 1e-9 * all_var.sqrt(),
            "{all:?}"
        );
        assert!(all.std_error > (t.std_error.powi(2) + s.std_error.powi(2)).sqrt());
        // The daily series ends at the total, and its days add up to it.
        let daily = &p.incremental.daily[0];
        assert_eq!(daily.arm, "triggered");
        let last = daily.points.last().expect("points");
        assert!(
            (last.cumulative - total).abs() < 1e-6 * total.abs(),
            "{last:?} vs {total}"
        );
        let summed: f64 = daily.points.iter().map(|d| d.day).sum();
        assert!((summed - total).abs() < 1e-6 * total.abs());
        assert_eq!(daily.points[0].date, "1970-04-11");
    }

    #[test]
    fn global_control_against_everyone_marketed() {
        let groups = [
            GroupSums {
                group: "global_control".into(),
                customers: 500,
                conversions: 40,
                revenue_sum: 2000.0,
                revenue_sum_squares: 90_000.0,
            },
            GroupSums {
                group: "marketed".into(),
                customers: 9_500,
                conversions: 950,
                revenue_sum: 47_500.0,
                revenue_sum_squares: 2_100_000.0,
            },
        ];
        let p = assemble(
            &lake(),
            &[design("cart")],
            &ReportOptions::default(),
            None,
            &groups,
            5.0,
        )
        .expect("program");
        let g = &p.global_control;
        assert_eq!(g.groups.len(), 2);
        let a = g.analysis.as_ref().expect("both groups");
        assert_eq!(
            (
                a.comparisons[0].control.as_str(),
                a.comparisons[0].treatment.as_str()
            ),
            ("global_control", "marketed")
        );
        // 500 of 10,000 is exactly the configured 5%.
        assert!(!a.srm.flagged && a.srm.chi_square.abs() < 1e-12);
        let lift = 47_500.0 / 9_500.0 - 2000.0 / 500.0;
        let inc = g.incremental_revenue.expect("estimate");
        assert!((inc - lift * 9_500.0).abs() < 1e-6, "{inc}");
        // No control group in the data: no groups, and a note on setting one up.
        let off =
            assemble(&lake(), &[], &ReportOptions::default(), None, &[], 0.0).expect("program");
        assert!(off.global_control.groups.is_empty());
        assert!(
            off.notes
                .iter()
                .any(|n| n.contains("global_control_percent")),
            "{:?}",
            off.notes
        );
    }

    /// The global control query on the tiny lake: `gc` is held out (no
    /// purchases); the six customers assigned are marketed, `h1` from its
    /// earliest assignment (`other`, five days before `cart`).
    #[tokio::test]
    async fn global_control_sums_from_the_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::metrics::tests::tiny_lake(dir.path());
        let root = DataRoot::open(dir.path().to_str().expect("utf8")).expect("root");
        let lake = Lake::open(&root).expect("lake");
        let sums = global_control_sums(&lake, &[], &ReportOptions::default())
            .await
            .expect("query");
        let group = |g: &str| sums.iter().find(|s| s.group == g).expect(g).clone();
        let gc = group("global_control");
        assert_eq!((gc.customers, gc.conversions, gc.revenue_sum), (1, 0, 0.0));
        let m = group("marketed");
        // h1 10 (from T0 − 5 d), t1 30 + 1000, t3 40 (its anonymous id's
        // purchase); h2 bought too late, t2 at its assignment instant (not
        // after it), z9 not at all.
        assert_eq!((m.customers, m.conversions), (6, 3));
        assert!((m.revenue_sum - 1080.0).abs() < 1e-9, "{m:?}");
        assert!((m.revenue_sum_squares - (100.0 + 1030.0f64.powi(2) + 1600.0)).abs() < 1e-6);
        // A 500 cap cuts t1's 1030.
        let capped = ReportOptions {
            cap: Capping::Absolute { value: 500.0 },
            ..ReportOptions::default()
        };
        let sums = global_control_sums(&lake, &[], &capped)
            .await
            .expect("query");
        let m = sums
            .iter()
            .find(|s| s.group == "marketed")
            .expect("marketed");
        assert!((m.revenue_sum - 550.0).abs() < 1e-9, "{m:?}");
        // p50 of the positive revenues 10, 40, 1030 is 40 (nearest rank 2).
        let median = ReportOptions {
            cap: Capping::Percentile { percentile: 50.0 },
            ..ReportOptions::default()
        };
        let sums = global_control_sums(&lake, &[], &median)
            .await
            .expect("query");
        let m = sums
            .iter()
            .find(|s| s.group == "marketed")
            .expect("marketed");
        assert!((m.revenue_sum - 90.0).abs() < 1e-9, "{m:?}");
    }

    #[test]
    fn a_holdout_that_bought_nothing_still_gives_incremental_revenue() {
        // Its relative lift has no baseline, but revenue over it is defined.
        let rows = vec![
            row("quiet", "holdout", None, 100, 50, 0, 0.0, 0.0, 0),
            row(
                "quiet",
                "triggered",
                None,
                100,
                450,
                9,
                450.0,
                27_000.0,
                440,
            ),
        ];
        let p = assemble(
            &rows,
            &[design("quiet")],
            &ReportOptions::default(),
            None,
            &[],
            0.0,
        )
        .expect("program");
        let r = &p.incremental.rules[0];
        assert!((r.incremental_revenue - 450.0).abs() < 1e-9, "{r:?}");
        assert_eq!(p.incremental.totals[0].rules, 1);
        let last = p.incremental.daily[0].points.last().expect("a point");
        assert!((last.cumulative - 450.0).abs() < 1e-9);
        // One holdout recipient: no variance, no estimate, and a note.
        let rows = vec![
            row("tiny", "holdout", None, 100, 1, 0, 0.0, 0.0, 0),
            row("tiny", "triggered", None, 100, 9, 1, 10.0, 100.0, 9),
        ];
        let p = assemble(
            &rows,
            &[design("tiny")],
            &ReportOptions::default(),
            None,
            &[],
            0.0,
        )
        .expect("program");
        assert!(p.incremental.rules.is_empty());
        assert!(
            p.notes
                .iter()
                .any(|n| n.starts_with("tiny: fewer than two holdout")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn timing_curve_orders_delay_variants() {
        let mut d = design("cart");
        d.variants = ["48h", "1h", "6h"]
            .iter()
            .map(|v| VariantWeight {
                name: (*v).into(),
                weight: 1,
                delay_secs: Some(v.trim_end_matches('h').parse::<u64>().expect("hours") * 3600),
            })
            .collect();
        let rows = vec![
            row(
                "cart", "holdout", None, 100, 1000, 100, 5000.0, 150_000.0, 0,
            ),
            row(
                "cart",
                "triggered",
                Some("1h"),
                100,
                3000,
                390,
                21_000.0,
                600_000.0,
                3000,
            ),
            row(
                "cart",
                "triggered",
                Some("6h"),
                100,
                3000,
                420,
                22_000.0,
                640_000.0,
                3000,
            ),
            row(
                "cart",
                "triggered",
                Some("48h"),
                100,
                3000,
                330,
                18_000.0,
                520_000.0,
                3000,
            ),
        ];
        let p = assemble(&rows, &[d], &ReportOptions::default(), None, &[], 0.0).expect("program");
        assert_eq!(p.timing.len(), 1);
        let delays: Vec<(&str, u64)> = p.timing[0]
            .points
            .iter()
            .map(|x| (x.variant.as_str(), x.delay_secs / 3600))
            .collect();
        assert_eq!(delays, [("1h", 1), ("6h", 6), ("48h", 48)]);
        let Effect::Estimated(e) = &p.timing[0].points[1].conversion.relative else {
            panic!("estimable");
        };
        assert!((e.estimate - (0.14 / 0.1 - 1.0)).abs() < 1e-12);
        // No variants, no curve.
        let p = assemble(
            &lake(),
            &[design("cart")],
            &ReportOptions::default(),
            None,
            &[],
            0.0,
        )
        .expect("program");
        assert!(p.timing.is_empty());
    }
}
