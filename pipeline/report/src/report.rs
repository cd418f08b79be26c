//! A rule's experiment report and the overview of every rule, built from
//! the per-arm sums and the statistics engine. Both serialise as the JSON
//! the API serves (schema: `docs/reports.md`, `/api/openapi.json`); the
//! pages and `kairos report` render the same structures.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use kairos_experiments::stats::{
    Analysis, ArmStats, ComparisonPair, Effect, Effects, ExperimentInput, Srm, analyze,
    benjamini_hochberg, holm_bonferroni,
};
use kairos_storage::DataRoot;

use crate::ReportError;
use crate::attribution::DAY_US;
use crate::lake::Lake;
use crate::metrics::{ArmSums, Source, arm_sums, daily_arm_sums, totals};
use crate::options::{ReportOptions, rfc3339};
use crate::outcomes::Outcomes;

/// A rule's configured split, from its file in the rules folder.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RuleDesign {
    /// The rule.
    pub rule: String,
    /// Holdout percent.
    pub holdout: u8,
    /// Scheduled percent.
    pub scheduled: u8,
    /// Triggered percent (the rest).
    pub triggered: u8,
    /// Variants of the triggered arm and their weights.
    pub variants: Vec<VariantWeight>,
    /// Transactional (exempt from marketing caps and from the global
    /// control group), not marketing.
    pub transactional: bool,
}

/// A variant and its weight within the triggered arm.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VariantWeight {
    /// Variant name.
    pub name: String,
    /// Relative weight.
    pub weight: u32,
    /// The `delay` parameter the variant runs with (its own, else the
    /// rule's), seconds; null when the rule has none.
    pub delay_secs: Option<u64>,
}

impl RuleDesign {
    /// The design of a parsed rule.
    pub fn of(rule: &kairos_rules::Rule) -> RuleDesign {
        let delay =
            |params: &std::collections::BTreeMap<String, kairos_rules::rule::Param>| match params
                .get("delay")
            {
                Some(kairos_rules::rule::Param::Duration(secs)) => Some(*secs),
                _ => None,
            };
        RuleDesign {
            rule: rule.name.clone(),
            holdout: rule.split.holdout,
            scheduled: rule.split.scheduled,
            triggered: rule.split.triggered,
            variants: rule
                .variants
                .iter()
                .map(|v| VariantWeight {
                    name: v.name.clone(),
                    weight: v.weight,
                    delay_secs: delay(&v.params).or_else(|| delay(&rule.params)),
                })
                .collect(),
            transactional: rule.transactional,
        }
    }

    /// Configured share of an arm (and variant), in percent.
    fn weight(&self, arm: &str, variant: Option<&str>) -> f64 {
        let pct = match arm {
            "holdout" => self.holdout,
            "scheduled" => self.scheduled,
            "triggered" => self.triggered,
            _ => 0,
        } as f64;
        match variant {
            None => pct,
            Some(v) => {
                let total: u32 = self.variants.iter().map(|w| w.weight).sum();
                let w = self
                    .variants
                    .iter()
                    .find(|w| w.name == v)
                    .map_or(0, |w| w.weight);
                if total == 0 {
                    0.0
                } else {
                    pct * f64::from(w) / f64::from(total)
                }
            }
        }
    }
}

/// The designs of every rule in `dir`. Rules that do not parse are
/// skipped (`kairos rules check` reports them); their reports then carry
/// no configured split and no sample-ratio check.
pub fn load_designs(dir: &Path) -> Vec<RuleDesign> {
    let (rules, errors) = kairos_rules::load_dir(dir);
    if !errors.is_empty() {
        tracing::warn!(
            dir = %dir.display(),
            errors = errors.len(),
            "some rule files do not parse; their reports have no configured split"
        );
    }
    rules.iter().map(RuleDesign::of).collect()
}

/// One arm (or variant) of a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmReport {
    /// `holdout`, `scheduled`, `triggered`, or `triggered:VARIANT`: the
    /// name in `stats` and in the analysis.
    pub name: String,
    /// The arm.
    pub arm: String,
    /// The variant, for a variant row.
    pub variant: Option<String>,
    /// Assigned customers (intent-to-treat).
    pub recipients: i64,
    /// `send` decisions to them for this rule.
    pub messages_sent: i64,
    /// Recipients who converted in the window.
    pub conversions: i64,
    /// conversions / recipients.
    pub conversion_rate: f64,
    /// Window revenue, after capping.
    pub revenue: f64,
    /// Window revenue before capping.
    pub revenue_uncapped: f64,
    /// revenue / recipients.
    pub revenue_per_recipient: f64,
    /// revenue / messages_sent; null without messages.
    pub revenue_per_message: Option<f64>,
    /// revenue / conversions; null without conversions.
    pub revenue_per_converter: Option<f64>,
    /// Mean pre-period revenue (capped).
    pub covariate_mean: f64,
    /// Configured share of this experiment's traffic (0–1), when known.
    pub expected_share: Option<f64>,
    /// Recipients whose attribution window had not closed by `data_until`:
    /// their numbers can still grow.
    pub recipients_in_open_window: i64,
    /// Earliest assignment.
    pub first_assigned_at: String,
    /// Latest assignment.
    pub last_assigned_at: String,
    /// The sufficient statistics, exactly as `/api/analyze` takes an arm.
    pub stats: ArmStats,
}

/// A rule's full report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    /// The experiment (rule).
    pub rule: String,
    /// What was measured.
    pub options: ReportOptions,
    /// The configured split, when the rule file is known.
    pub design: Option<RuleDesign>,
    /// The latest event time in the lake.
    pub data_until: Option<String>,
    /// Every recipient.
    pub recipients: i64,
    /// The cap applied to each recipient's revenue, if capping is on.
    pub cap_value: Option<f64>,
    /// The arms (triggered pooled over its variants), holdout first.
    pub arms: Vec<ArmReport>,
    /// The triggered arm's variants (empty without variants).
    pub variants: Vec<ArmReport>,
    /// Triggered and scheduled against the holdout, and triggered against
    /// scheduled (those with recipients); null with fewer than two arms.
    pub analysis: Option<Analysis>,
    /// Each variant against the holdout; null without variants.
    pub variant_analysis: Option<Analysis>,
    /// Sample-ratio mismatch of the arms against the configured split; null
    /// when the split is unknown or an arm configured at 0% has recipients.
    pub srm: Option<Srm>,
    /// Per comparison of `analysis` and `variant_analysis`, the lift day by
    /// day of assignment: each point analyses everyone assigned up to the
    /// end of that day.
    pub cumulative: Vec<CumulativeSeries>,
    /// Why something is missing, in words.
    pub notes: Vec<String>,
}

/// One comparison's lift over time: a point per UTC day of assignment on
/// which either arm gained recipients, each computed from the cumulative
/// sums of everyone assigned up to the end of that day (unadjusted: no
/// CUPED). The last point is the comparison's unadjusted result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CumulativeSeries {
    /// Control arm name.
    pub control: String,
    /// Treatment arm name.
    pub treatment: String,
    /// By day, oldest first; days before both arms have two recipients are
    /// left out (no variance yet).
    pub points: Vec<CumulativePoint>,
}

/// The analysis of everyone assigned up to the end of `date`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CumulativePoint {
    /// The UTC day, `YYYY-MM-DD`.
    pub date: String,
    /// Control recipients so far.
    pub control_recipients: i64,
    /// Treatment recipients so far.
    pub treatment_recipients: i64,
    /// Conversion rate lift so far.
    pub conversion: Effects,
    /// Revenue per recipient lift so far.
    pub revenue: Effects,
}

/// Whether a per-day row counts toward the arm (or `arm:variant`) `name`.
fn row_is(r: &ArmSums, name: &str) -> bool {
    r.arm == name
        || r.variant
            .as_deref()
            .is_some_and(|v| name.strip_prefix(&r.arm).and_then(|n| n.strip_prefix(':')) == Some(v))
}

/// The cumulative series of every `(control, treatment)` pair from one
/// experiment's per-day rows ([`daily_arm_sums`]).
pub fn cumulative(
    daily: &[ArmSums],
    pairs: &[(String, String)],
    alpha: f64,
) -> Result<Vec<CumulativeSeries>, ReportError> {
    let mut out = Vec::new();
    for (control, treatment) in pairs {
        let mut days: Vec<i64> = daily
            .iter()
            .filter(|r| row_is(r, control) || row_is(r, treatment))
            .filter_map(|r| r.day)
            .collect();
        days.sort_unstable();
        days.dedup();
        let (mut c, mut t) = (ArmSums::default(), ArmSums::default());
        let mut points = Vec::new();
        for day in days {
            for r in daily.iter().filter(|r| r.day == Some(day)) {
                if row_is(r, control) {
                    c.add(r);
                } else if row_is(r, treatment) {
                    t.add(r);
                }
            }
            // The engine needs variance in both arms to say anything.
            if c.recipients < 2 || t.recipients < 2 {
                continue;
            }
            let stats = |s: &ArmSums, name: &str| {
                ArmStats::new(
                    name.to_string(),
                    s.recipients,
                    s.conversions,
                    s.revenue_sum,
                    s.revenue_sum_squares,
                )
            };
            let mut input = ExperimentInput::new(vec![stats(&c, control), stats(&t, treatment)]);
            input.control = Some(control.clone());
            input.alpha = alpha;
            let a = analyze(&input)?;
            let Some(cmp) = a.comparisons.into_iter().next() else {
                continue;
            };
            points.push(CumulativePoint {
                date: rfc3339(day * DAY_US)[..10].to_string(),
                control_recipients: c.recipients,
                treatment_recipients: t.recipients,
                conversion: cmp.conversion,
                revenue: cmp.revenue,
            });
        }
        out.push(CumulativeSeries {
            control: control.clone(),
            treatment: treatment.clone(),
            points,
        });
    }
    Ok(out)
}

const ARM_ORDER: [&str; 3] = ["holdout", "scheduled", "triggered"];

fn arm_rank(arm: &str) -> usize {
    ARM_ORDER
        .iter()
        .position(|a| *a == arm)
        .unwrap_or(ARM_ORDER.len())
}

fn arm_report(
    s: &ArmSums,
    name: String,
    options: &ReportOptions,
    weight: Option<f64>,
) -> ArmReport {
    let n = s.recipients as f64;
    let mut stats = ArmStats::new(
        name.clone(),
        s.recipients,
        s.conversions,
        s.revenue_sum,
        s.revenue_sum_squares,
    );
    stats.weight = weight;
    if options.cuped && options.pre_period_secs > 0 {
        stats.covariate_sum = Some(s.covariate_sum);
        stats.covariate_sum_squares = Some(s.covariate_sum_squares);
        stats.revenue_covariate_sum_products = Some(s.sum_products);
    }
    ArmReport {
        name,
        arm: s.arm.clone(),
        variant: s.variant.clone(),
        recipients: s.recipients,
        messages_sent: s.messages,
        conversions: s.conversions,
        conversion_rate: s.conversions as f64 / n,
        revenue: s.revenue_sum,
        revenue_uncapped: s.revenue_uncapped,
        revenue_per_recipient: s.revenue_sum / n,
        revenue_per_message: (s.messages > 0).then(|| s.revenue_sum / s.messages as f64),
        revenue_per_converter: (s.conversions > 0).then(|| s.revenue_sum / s.conversions as f64),
        covariate_mean: s.covariate_sum / n,
        expected_share: None,
        recipients_in_open_window: s.open_window,
        first_assigned_at: rfc3339(s.first_assigned_us),
        last_assigned_at: rfc3339(s.last_assigned_us),
        stats,
    }
}

/// Fills `expected_share` and keeps the weights only if every arm has a
/// positive configured share (else the check would be meaningless).
fn settle_weights(arms: &mut [ArmReport]) -> bool {
    // An arm configured at 0%, or a variant the rules folder does not list
    // (renamed, removed, or another folder read), has no usable share.
    let all = arms.iter().all(|a| a.stats.weight.is_some_and(|w| w > 0.0));
    let total: f64 = arms.iter().filter_map(|a| a.stats.weight).sum();
    for a in arms.iter_mut() {
        if all {
            a.expected_share = a.stats.weight.map(|w| w / total);
        } else {
            a.stats.weight = None;
        }
    }
    all
}

fn run(
    arms: &[ArmReport],
    pairs: Vec<(&str, &str)>,
    alpha: f64,
) -> Result<Option<Analysis>, ReportError> {
    let present = |n: &str| arms.iter().any(|a| a.name == n);
    let comparisons: Vec<ComparisonPair> = pairs
        .into_iter()
        .filter(|(c, t)| present(c) && present(t))
        .map(|(c, t)| ComparisonPair {
            control: c.to_string(),
            treatment: t.to_string(),
        })
        .collect();
    if arms.len() < 2 || comparisons.is_empty() {
        return Ok(None);
    }
    let mut input = ExperimentInput::new(arms.iter().map(|a| a.stats.clone()).collect());
    input.comparisons = Some(comparisons);
    input.alpha = alpha;
    Ok(Some(analyze(&input)?))
}

/// Builds one experiment's report from its rows of sums.
pub fn build(
    rule: &str,
    rows: &[ArmSums],
    design: Option<&RuleDesign>,
    options: &ReportOptions,
    data_until: Option<i64>,
) -> Result<Report, ReportError> {
    let mut notes = Vec::new();
    // Arms: variant rows pooled into their arm (the sums are additive).
    let mut pooled: Vec<ArmSums> = Vec::new();
    for r in rows {
        match pooled.iter_mut().find(|p| p.arm == r.arm) {
            Some(p) => p.add(r),
            None => pooled.push(ArmSums {
                variant: None,
                ..r.clone()
            }),
        }
    }
    pooled.sort_by_key(|p| (arm_rank(&p.arm), p.arm.clone()));
    let mut arms: Vec<ArmReport> = pooled
        .iter()
        .map(|s| {
            arm_report(
                s,
                s.arm.clone(),
                options,
                design.map(|d| d.weight(&s.arm, None)),
            )
        })
        .collect();
    let weighted = settle_weights(&mut arms);

    let mut variants: Vec<ArmReport> = rows
        .iter()
        .filter(|r| r.variant.is_some())
        .map(|s| {
            let v = s.variant.as_deref().unwrap_or_default();
            arm_report(
                s,
                format!("{}:{v}", s.arm),
                options,
                design.map(|d| d.weight(&s.arm, Some(v))),
            )
        })
        .collect();

    let analysis = run(
        &arms,
        vec![
            ("holdout", "triggered"),
            ("holdout", "scheduled"),
            ("scheduled", "triggered"),
        ],
        options.alpha,
    )?;
    match (&analysis, arms.len()) {
        (Some(_), _) => {}
        (None, 0) => notes.push("no recipients yet".to_string()),
        (None, 1) => notes.push(format!(
            "every recipient is in the {} arm: nothing to compare",
            arms[0].arm
        )),
        (None, _) => notes.push("no holdout, scheduled and triggered pair to compare".into()),
    }
    let srm = match (&analysis, design, weighted) {
        (Some(a), Some(_), true) => Some(a.srm.clone()),
        (Some(_), None, _) => {
            notes.push(format!(
                "no rule file for `{rule}` in the rules folder: configured split unknown, no sample-ratio check"
            ));
            None
        }
        (Some(_), Some(_), false) => {
            notes.push(
                "an arm with recipients is configured at 0% (the split changed?): no sample-ratio check"
                    .into(),
            );
            None
        }
        (None, ..) => None,
    };

    let variant_analysis = if variants.is_empty() {
        None
    } else {
        let mut group: Vec<ArmReport> = arms
            .iter()
            .filter(|a| a.arm == "holdout")
            .cloned()
            .collect();
        group.append(&mut variants.clone());
        for a in group.iter_mut() {
            a.stats.weight = design.map(|d| d.weight(&a.arm, a.variant.as_deref()));
        }
        settle_weights(&mut group);
        let control = group[0].name.clone();
        let pairs: Vec<(String, String)> = group[1..]
            .iter()
            .map(|a| (control.clone(), a.name.clone()))
            .collect();
        let shares: Vec<(String, Option<f64>)> = group
            .iter()
            .map(|a| (a.name.clone(), a.expected_share))
            .collect();
        for v in variants.iter_mut() {
            v.expected_share = shares.iter().find(|s| s.0 == v.name).and_then(|s| s.1);
            v.stats.weight = None;
        }
        run(
            &group,
            pairs
                .iter()
                .map(|(c, t)| (c.as_str(), t.as_str()))
                .collect(),
            options.alpha,
        )?
    };

    Ok(Report {
        rule: rule.to_string(),
        options: options.clone(),
        design: design.cloned(),
        data_until: data_until.map(rfc3339),
        recipients: arms.iter().map(|a| a.recipients).sum(),
        cap_value: rows.iter().find_map(|r| r.cap),
        arms,
        variants,
        analysis,
        variant_analysis,
        srm,
        cumulative: Vec::new(),
        notes,
    })
}

/// Every experiment the lake (assignments) or the rules folder knows.
pub async fn known_experiments(
    lake: &Lake,
    designs: &[RuleDesign],
) -> Result<Vec<String>, ReportError> {
    let mut known: BTreeSet<String> = designs.iter().map(|d| d.rule.clone()).collect();
    let batches = lake
        .ctx
        .sql("SELECT DISTINCT experiment FROM assignments")
        .await?
        .collect()
        .await?;
    for b in &batches {
        let c = datafusion::arrow::compute::cast(
            b.column(0),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .map_err(datafusion::error::DataFusionError::from)?;
        let c = datafusion::arrow::array::AsArray::as_string::<i32>(&c);
        known.extend(c.iter().flatten().map(str::to_string));
    }
    Ok(known.into_iter().collect())
}

/// `rule`'s report over the lake at `root`, exact (see
/// [`experiment_report_from`]).
pub async fn experiment_report(
    root: &DataRoot,
    designs: &[RuleDesign],
    rule: &str,
    options: &ReportOptions,
) -> Result<Report, ReportError> {
    experiment_report_from(root, designs, rule, options, &Outcomes::exact()).await
}

/// `rule`'s report over the lake at `root`, from the maintained outcomes
/// when they answer `options` (as fresh as `outcomes` requires), else from
/// the raw tables.
pub async fn experiment_report_from(
    root: &DataRoot,
    designs: &[RuleDesign],
    rule: &str,
    options: &ReportOptions,
    outcomes: &Outcomes,
) -> Result<Report, ReportError> {
    let outcomes = outcomes.for_report(root, options).await;
    let source = outcomes.as_ref().map_or(Source::Raw, Source::Outcomes);
    let lake = Lake::open(root)?;
    // One query: per-day sums, added up for the report and accumulated
    // for its cumulative series.
    let (daily, until) = daily_arm_sums(&lake, options, Some(rule), source).await?;
    let rows = totals(&daily);
    let design = designs.iter().find(|d| d.rule == rule);
    if rows.is_empty() && design.is_none() {
        let known = known_experiments(&lake, designs).await?;
        if !known.iter().any(|k| k == rule) {
            return Err(ReportError::UnknownRule {
                rule: rule.to_string(),
                known,
            });
        }
    }
    let (rule, design, options) = (rule.to_string(), design.cloned(), options.clone());
    crate::off_runtime(move || {
        let mut report = build(&rule, &rows, design.as_ref(), &options, until)?;
        let pairs: Vec<(String, String)> = report
            .analysis
            .iter()
            .chain(&report.variant_analysis)
            .flat_map(|a| &a.comparisons)
            .map(|c| (c.control.clone(), c.treatment.clone()))
            .collect();
        report.cumulative = cumulative(&daily, &pairs, options.alpha)?;
        Ok(report)
    })
    .await?
}

/// One experiment in the overview.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Headline {
    /// The experiment (rule).
    pub rule: String,
    /// Every recipient.
    pub recipients: i64,
    /// Every `send` decision to them.
    pub messages_sent: i64,
    /// Per arm: recipients, conversion rate, revenue per recipient.
    pub arms: Vec<ArmHeadline>,
    /// Revenue per recipient, triggered against the holdout (else the
    /// report's first comparison); null when there is nothing to compare.
    pub comparison: Option<HeadlineComparison>,
    /// Whether the sample-ratio check flagged the split; null when unchecked.
    pub srm_flagged: Option<bool>,
    /// The report's notes.
    pub notes: Vec<String>,
}

/// An arm's headline numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ArmHeadline {
    /// Arm name.
    pub name: String,
    /// Recipients.
    pub recipients: i64,
    /// conversions / recipients.
    pub conversion_rate: f64,
    /// Window revenue / recipients.
    pub revenue_per_recipient: f64,
}

/// The headline comparison of an experiment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeadlineComparison {
    /// Control arm.
    pub control: String,
    /// Treatment arm.
    pub treatment: String,
    /// Always `revenue_per_recipient`.
    pub metric: &'static str,
    /// Whether the CUPED-adjusted effect is shown.
    pub cuped: bool,
    /// Treatment − control, per recipient.
    pub absolute: Effect,
    /// (Treatment − control) / control.
    pub relative: Effect,
    /// The absolute effect's p-value (null when not estimable).
    pub p_value: Option<f64>,
    /// Holm–Bonferroni adjusted over every experiment's headline p-value.
    pub p_value_holm: Option<f64>,
    /// Benjamini–Hochberg adjusted likewise.
    pub p_value_bh: Option<f64>,
}

/// Every experiment's headline numbers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Overview {
    /// What was measured (the same for every experiment).
    pub options: ReportOptions,
    /// The latest event time in the lake.
    pub data_until: Option<String>,
    /// One entry per experiment, by name.
    pub experiments: Vec<Headline>,
}

fn headline(r: &Report) -> Headline {
    let comparison = r.analysis.as_ref().and_then(|a| {
        let c = a
            .comparisons
            .iter()
            .find(|c| c.control == "holdout" && c.treatment == "triggered")
            .or_else(|| a.comparisons.first())?;
        let (cuped, effects) = match &c.revenue_cuped {
            Some(cu) => (true, &cu.effects),
            None => (false, &c.revenue),
        };
        let p_value = match &effects.absolute {
            Effect::Estimated(e) => Some(e.p_value),
            Effect::NotEstimable { .. } => None,
        };
        Some(HeadlineComparison {
            control: c.control.clone(),
            treatment: c.treatment.clone(),
            metric: "revenue_per_recipient",
            cuped,
            absolute: effects.absolute.clone(),
            relative: effects.relative.clone(),
            p_value,
            p_value_holm: None,
            p_value_bh: None,
        })
    });
    Headline {
        rule: r.rule.clone(),
        recipients: r.recipients,
        messages_sent: r.arms.iter().map(|a| a.messages_sent).sum(),
        arms: r
            .arms
            .iter()
            .map(|a| ArmHeadline {
                name: a.name.clone(),
                recipients: a.recipients,
                conversion_rate: a.conversion_rate,
                revenue_per_recipient: a.revenue_per_recipient,
            })
            .collect(),
        comparison,
        srm_flagged: r.srm.as_ref().map(|s| s.flagged),
        notes: r.notes.clone(),
    }
}

/// Every experiment's report, one query over the lake, summarised with
/// p-values corrected across experiments; exact (see [`overview_from`]).
pub async fn overview(
    root: &DataRoot,
    designs: &[RuleDesign],
    options: &ReportOptions,
) -> Result<Overview, ReportError> {
    overview_from(root, designs, options, &Outcomes::exact()).await
}

/// [`overview`] from the maintained outcomes when they answer `options`.
pub async fn overview_from(
    root: &DataRoot,
    designs: &[RuleDesign],
    options: &ReportOptions,
    outcomes: &Outcomes,
) -> Result<Overview, ReportError> {
    let outcomes = outcomes.for_report(root, options).await;
    let source = outcomes.as_ref().map_or(Source::Raw, Source::Outcomes);
    let lake = Lake::open(root)?;
    let (rows, until) = arm_sums(&lake, options, None, source).await?;
    let (designs, options) = (designs.to_vec(), options.clone());
    crate::off_runtime(move || overview_of(&rows, &designs, &options, until)).await?
}

/// The overview from every experiment's whole-arm sums.
fn overview_of(
    rows: &[ArmSums],
    designs: &[RuleDesign],
    options: &ReportOptions,
    until: Option<i64>,
) -> Result<Overview, ReportError> {
    let mut names: BTreeSet<String> = designs.iter().map(|d| d.rule.clone()).collect();
    names.extend(rows.iter().map(|r| r.experiment.clone()));
    let mut experiments = Vec::new();
    for name in names {
        let mine: Vec<ArmSums> = rows
            .iter()
            .filter(|r| r.experiment == name)
            .cloned()
            .collect();
        let design = designs.iter().find(|d| d.rule == name);
        experiments.push(headline(&build(&name, &mine, design, options, until)?));
    }
    let with_p: Vec<(usize, f64)> = experiments
        .iter()
        .enumerate()
        .filter_map(|(i, h)| Some((i, h.comparison.as_ref()?.p_value?)))
        .collect();
    let ps: Vec<f64> = with_p.iter().map(|(_, p)| *p).collect();
    let (holm, bh) = (holm_bonferroni(&ps)?, benjamini_hochberg(&ps)?);
    for (k, (i, _)) in with_p.iter().enumerate() {
        if let Some(c) = experiments[*i].comparison.as_mut() {
            c.p_value_holm = Some(holm[k]);
            c.p_value_bh = Some(bh[k]);
        }
    }
    Ok(Overview {
        options: options.clone(),
        data_until: until.map(rfc3339),
        experiments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::{T0, tiny_lake};

    fn design(holdout: u8, scheduled: u8) -> RuleDesign {
        RuleDesign {
            rule: "cart".into(),
            holdout,
            scheduled,
            triggered: 100 - holdout - scheduled,
            variants: Vec::new(),
            transactional: false,
        }
    }

    fn root(dir: &std::path::Path) -> DataRoot {
        DataRoot::open(dir.to_str().expect("utf8")).expect("root")
    }

    #[tokio::test]
    async fn report_of_the_tiny_lake() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_lake(dir.path());
        let r = experiment_report(
            &root(dir.path()),
            &[design(50, 0)],
            "cart",
            &ReportOptions::default(),
        )
        .await
        .expect("report");
        assert_eq!(r.recipients, 6);
        let names: Vec<&str> = r.arms.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["holdout", "triggered"]);
        let (h, t) = (&r.arms[0], &r.arms[1]);
        assert_eq!(h.revenue_per_recipient, 5.0);
        assert!((t.revenue_per_recipient - 1070.0 / 4.0).abs() < 1e-9);
        assert_eq!(t.revenue_per_message, Some(1070.0 / 3.0));
        assert_eq!(t.revenue_per_converter, Some(1070.0 / 2.0));
        assert_eq!(h.revenue_per_message, None);
        assert_eq!((h.expected_share, t.expected_share), (Some(0.5), Some(0.5)));
        assert_eq!(t.first_assigned_at, rfc3339(T0));
        // One comparison (no scheduled arm), with CUPED.
        let a = r.analysis.as_ref().expect("two arms");
        assert_eq!(a.comparisons.len(), 1);
        assert_eq!(
            (
                a.comparisons[0].control.as_str(),
                a.comparisons[0].treatment.as_str()
            ),
            ("holdout", "triggered")
        );
        assert!(a.comparisons[0].revenue_cuped.is_some());
        assert!(r.srm.is_some());
        // The arm's stats are the engine's input: reanalysing them gives
        // the same revenue lift.
        let again = crate::http::analyze_body(
            serde_json::json!({"arms": [h.stats, t.stats]})
                .to_string()
                .as_bytes(),
        )
        .expect("valid");
        assert_eq!(
            serde_json::to_value(&a.comparisons[0].revenue).expect("json"),
            again["comparisons"][0]["revenue"]
        );

        // CUPED off: no covariate in the stats, no adjusted effect.
        let o = ReportOptions {
            cuped: false,
            ..ReportOptions::default()
        };
        let r = experiment_report(&root(dir.path()), &[], "cart", &o)
            .await
            .expect("report");
        assert!(r.arms[0].stats.covariate_sum.is_none());
        assert!(
            r.analysis.expect("two arms").comparisons[0]
                .revenue_cuped
                .is_none()
        );
        // Without the rule file: no configured split, no SRM, a note says so.
        assert!(r.srm.is_none());
        assert!(
            r.notes[0].contains("configured split unknown"),
            "{:?}",
            r.notes
        );
        let text = crate::text::render(
            &experiment_report(&root(dir.path()), &[], "cart", &ReportOptions::default())
                .await
                .expect("report"),
        );
        assert!(text.contains("triggered vs holdout:"), "{text}");
        assert!(text.contains("267.50"), "{text}");
    }

    #[tokio::test]
    async fn cumulative_lift_accumulates_by_day_of_assignment() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_lake(dir.path());
        let r = experiment_report(
            &root(dir.path()),
            &[design(50, 0)],
            "cart",
            &ReportOptions::default(),
        )
        .await
        .expect("report");
        assert_eq!(r.cumulative.len(), 1);
        let s = &r.cumulative[0];
        assert_eq!(
            (s.control.as_str(), s.treatment.as_str()),
            ("holdout", "triggered")
        );
        // Holdout: h1, h2 on 09-01. Triggered: t1, t3 on 09-01, t2 on
        // 09-02, z9 on 10-01.
        let days: Vec<(&str, i64, i64)> = s
            .points
            .iter()
            .map(|p| {
                (
                    p.date.as_str(),
                    p.control_recipients,
                    p.treatment_recipients,
                )
            })
            .collect();
        assert_eq!(
            days,
            [
                ("2026-09-01", 2, 2),
                ("2026-09-02", 2, 3),
                ("2026-10-01", 2, 4)
            ]
        );
        // The first day alone: holdout 10 and 0, triggered 1030 and 40.
        let Effect::Estimated(first) = &s.points[0].revenue.absolute else {
            panic!("estimable: {:?}", s.points[0]);
        };
        assert!((first.estimate - (535.0 - 5.0)).abs() < 1e-9, "{first:?}");
        // The last point is everyone: the report's unadjusted comparison.
        let whole = &r.analysis.as_ref().expect("two arms").comparisons[0];
        let last = s.points.last().expect("points");
        assert_eq!(last.revenue, whole.revenue);
        assert_eq!(last.conversion, whole.conversion);
    }

    #[test]
    fn cumulative_series_of_variants_and_late_arms() {
        let d = |arm: &str, variant: Option<&str>, day: i64, n: i64, conv: i64| ArmSums {
            experiment: "x".into(),
            arm: arm.into(),
            variant: variant.map(str::to_string),
            recipients: n,
            conversions: conv,
            revenue_sum: conv as f64 * 10.0,
            revenue_sum_squares: conv as f64 * 100.0,
            day: Some(day),
            ..ArmSums::default()
        };
        let daily = [
            d("holdout", None, 100, 1, 0),
            d("holdout", None, 101, 9, 2),
            d("triggered", Some("a"), 100, 5, 1),
            d("triggered", Some("b"), 100, 5, 2),
            d("triggered", Some("a"), 102, 5, 3),
        ];
        let pairs = [
            ("holdout".to_string(), "triggered".to_string()),
            ("holdout".to_string(), "triggered:a".to_string()),
            ("holdout".to_string(), "triggered:b".to_string()),
        ];
        let s = cumulative(&daily, &pairs, 0.05).expect("series");
        let n = |i: usize| -> Vec<(i64, i64)> {
            s[i].points
                .iter()
                .map(|p| (p.control_recipients, p.treatment_recipients))
                .collect()
        };
        // Day 100 has one holdout recipient: no point until day 101.
        assert_eq!(n(0), [(10, 10), (10, 15)]);
        assert_eq!(n(1), [(10, 5), (10, 10)]);
        // Variant b gains nobody after day 100: its last point is day 101.
        assert_eq!(n(2), [(10, 5)]);
        assert_eq!(s[2].points[0].date, "1970-04-12");
    }

    #[tokio::test]
    async fn unknown_rule_lists_the_known_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        tiny_lake(dir.path());
        let err = experiment_report(
            &root(dir.path()),
            &[design(10, 20)],
            "nope",
            &ReportOptions::default(),
        )
        .await
        .expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "no experiment named `nope`; known: cart, other"
        );
        // A rule file without assignments yet is known: an empty report.
        let mut d = design(10, 20);
        d.rule = "fresh".into();
        let r = experiment_report(&root(dir.path()), &[d], "fresh", &ReportOptions::default())
            .await
            .expect("known");
        assert_eq!(r.recipients, 0);
        assert_eq!(r.notes, ["no recipients yet"]);
    }

    #[test]
    fn variants_pool_into_their_arm_and_are_compared_with_the_holdout() {
        let row = |arm: &str, variant: Option<&str>, n: i64, conv: i64, rev: f64| ArmSums {
            experiment: "x".into(),
            arm: arm.into(),
            variant: variant.map(str::to_string),
            recipients: n,
            conversions: conv,
            revenue_sum: rev,
            revenue_sum_squares: rev * rev / conv.max(1) as f64,
            ..ArmSums::default()
        };
        let rows = [
            row("holdout", None, 100, 5, 50.0),
            row("triggered", Some("a"), 200, 20, 400.0),
            row("triggered", Some("b"), 200, 30, 500.0),
        ];
        let mut d = design(20, 0);
        d.rule = "x".into();
        d.variants = vec![
            VariantWeight {
                name: "a".into(),
                weight: 1,
                delay_secs: None,
            },
            VariantWeight {
                name: "b".into(),
                weight: 1,
                delay_secs: None,
            },
        ];
        let r = build("x", &rows, Some(&d), &ReportOptions::default(), None).expect("report");
        assert_eq!(r.arms.len(), 2);
        assert_eq!((r.arms[1].recipients, r.arms[1].conversions), (400, 50));
        assert_eq!(r.arms[1].revenue, 900.0);
        let names: Vec<&str> = r.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["triggered:a", "triggered:b"]);
        // 20% holdout, 40% per variant: 100/200/200 observed is the split.
        assert_eq!(r.variants[0].expected_share, Some(0.4));
        // A rules folder that does not know the variants: no configured
        // share, and still an analysis.
        let mut unknown = d.clone();
        unknown.variants.clear();
        let u = build("x", &rows, Some(&unknown), &ReportOptions::default(), None)
            .expect("variants the rule file does not list");
        assert_eq!(u.variants[0].expected_share, None);
        assert_eq!(u.variant_analysis.expect("variants").comparisons.len(), 2);
        let va = r.variant_analysis.expect("variants");
        assert_eq!(va.comparisons.len(), 2);
        assert_eq!(va.comparisons[1].treatment, "triggered:b");
        assert!(!va.srm.flagged);
        assert!(va.srm.chi_square.abs() < 1e-12);
        // Arms: 100 vs 400 against 20/80 is exact too.
        assert!(!r.srm.expect("design known").flagged);
    }
}
