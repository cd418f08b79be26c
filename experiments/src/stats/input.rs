//! The engine's input: per-arm sufficient statistics, and its validation.
//!
//! Every check names the arm and the field at fault, so an analyst who
//! exported numbers from a warehouse can fix the right cell.

use serde::{Deserialize, Serialize};

/// The default significance level (95% intervals).
pub const DEFAULT_ALPHA: f64 = 0.05;
/// gbstats' default tuning parameter of the sequential confidence sequences:
/// the total sample size at which the always-valid interval is narrowest
/// relative to the fixed-horizon one.
pub const DEFAULT_SEQUENTIAL_TUNING: f64 = 5000.0;
/// Sample-ratio mismatch is flagged below this chi-square p-value.
pub const DEFAULT_SRM_THRESHOLD: f64 = 0.001;
/// Most arms one analysis takes: every report has a handful, and the
/// limit bounds the work and the answer of one request.
pub const MAX_ARMS: usize = 100;
/// Most explicit comparisons one analysis takes.
pub const MAX_COMPARISONS: usize = 1000;

/// Relative slack allowed in the moment checks, for sums of squares that a
/// warehouse accumulated in floating point.
const MOMENT_SLACK: f64 = 1e-9;

/// An experiment's sufficient statistics and the analysis options.
///
/// JSON (unknown fields are rejected, so a misspelt field is an error rather
/// than silently ignored):
///
/// ```json
/// {
///   "arms": [
///     {"name": "holdout", "n": 1000, "conversions": 50,
///      "revenue_sum": 2500.0, "revenue_sum_squares": 190000.0,
///      "weight": 10,
///      "covariate_sum": 2100.0, "covariate_sum_squares": 150000.0,
///      "revenue_covariate_sum_products": 90000.0},
///     {"name": "triggered", "n": 9000, "conversions": 540,
///      "revenue_sum": 26000.0, "revenue_sum_squares": 2000000.0, "weight": 90}
///   ],
///   "control": "holdout",
///   "alpha": 0.05,
///   "sequential_tuning_parameter": 5000,
///   "srm_threshold": 0.001
/// }
/// ```
///
/// Only `arms` is required. Without `control` or `comparisons`, every arm is
/// compared with the first; `comparisons` lists explicit pairs instead (for
/// example triggered against scheduled as well as against the holdout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentInput {
    /// Two or more arms with distinct names.
    pub arms: Vec<ArmStats>,
    /// The arm every other arm is compared with; defaults to the first arm.
    /// Not allowed together with `comparisons`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// Explicit comparisons, in the order they are reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comparisons: Option<Vec<ComparisonPair>>,
    /// Two-sided significance level: intervals cover 1 − alpha. Default 0.05.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Tuning parameter of the sequential (always-valid) intervals, gbstats'
    /// `sequential_tuning_parameter`: roughly the total sample size at which
    /// the sequential interval is tightest. Default 5000.
    #[serde(default = "default_tuning")]
    pub sequential_tuning_parameter: f64,
    /// SRM is flagged when the chi-square p-value is below this. Default 0.001.
    #[serde(default = "default_srm_threshold")]
    pub srm_threshold: f64,
}

fn default_alpha() -> f64 {
    DEFAULT_ALPHA
}
fn default_tuning() -> f64 {
    DEFAULT_SEQUENTIAL_TUNING
}
fn default_srm_threshold() -> f64 {
    DEFAULT_SRM_THRESHOLD
}

impl ExperimentInput {
    /// Input with the default options and every arm compared with the first.
    pub fn new(arms: Vec<ArmStats>) -> Self {
        Self {
            arms,
            control: None,
            comparisons: None,
            alpha: DEFAULT_ALPHA,
            sequential_tuning_parameter: DEFAULT_SEQUENTIAL_TUNING,
            srm_threshold: DEFAULT_SRM_THRESHOLD,
        }
    }
}

/// One comparison: `treatment` against `control`, both arm names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComparisonPair {
    /// The baseline arm.
    pub control: String,
    /// The arm whose lift over the baseline is estimated.
    pub treatment: String,
}

/// Sufficient statistics of one arm, summed over its recipients.
///
/// Counts are signed so that a negative count is reported as such, naming
/// the arm, instead of failing as an anonymous parse error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmStats {
    /// Arm (or variant) name, unique within the experiment.
    pub name: String,
    /// Recipients (intent-to-treat), at least 1. A whole number, written
    /// as an integer or as a float (`1000.0`, `1e7`) as warehouses export.
    #[serde(deserialize_with = "whole_number")]
    pub n: i64,
    /// Recipients who converted, 0 ≤ conversions ≤ n; whole, like `n`.
    #[serde(deserialize_with = "whole_number")]
    pub conversions: i64,
    /// Σ revenue per recipient (zero for those who bought nothing).
    pub revenue_sum: f64,
    /// Σ revenue² per recipient.
    pub revenue_sum_squares: f64,
    /// Configured share of traffic, any positive scale (10/45/45 or
    /// 0.1/0.45/0.45). Give it for every arm or for none (equal split).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Σ pre-period covariate (revenue in the N days before assignment).
    /// The three covariate fields come together or not at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate_sum: Option<f64>,
    /// Σ covariate².
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariate_sum_squares: Option<f64>,
    /// Σ revenue × covariate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue_covariate_sum_products: Option<f64>,
}

/// A count given as an integer or as a float with no fractional part.
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = i64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number such as 1000, 1000.0 or 1e7")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large for a count")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            // 2^63 is the first float past i64::MAX.
            if v.fract() == 0.0 && v.abs() < 9.223_372_036_854_775_808e18 {
                Ok(v as i64)
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_any(Whole)
}

/// The covariate sums of one arm, once validated as a complete set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Covariate {
    pub sum: f64,
    pub sum_squares: f64,
    pub sum_products: f64,
}

impl ArmStats {
    /// An arm without covariate or weight.
    pub fn new(
        name: impl Into<String>,
        n: i64,
        conversions: i64,
        revenue_sum: f64,
        revenue_sum_squares: f64,
    ) -> Self {
        Self {
            name: name.into(),
            n,
            conversions,
            revenue_sum,
            revenue_sum_squares,
            weight: None,
            covariate_sum: None,
            covariate_sum_squares: None,
            revenue_covariate_sum_products: None,
        }
    }

    /// The covariate sums, if this (validated) arm has them.
    pub(crate) fn covariate(&self) -> Option<Covariate> {
        Some(Covariate {
            sum: self.covariate_sum?,
            sum_squares: self.covariate_sum_squares?,
            sum_products: self.revenue_covariate_sum_products?,
        })
    }

    /// How errors name this arm: its name, or its position if it has none.
    fn label(&self, index: usize) -> String {
        if self.name.is_empty() {
            format!("#{index}")
        } else {
            self.name.clone()
        }
    }

    fn validate(&self, index: usize) -> Result<(), StatsError> {
        let bad = |field: &'static str, problem: String| StatsError::InvalidArm {
            arm: self.label(index),
            field,
            problem,
        };
        if self.name.is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        if self.n < 1 {
            return Err(bad("n", format!("must be at least 1, got {}", self.n)));
        }
        if self.conversions < 0 {
            return Err(bad(
                "conversions",
                format!("must not be negative, got {}", self.conversions),
            ));
        }
        if self.conversions > self.n {
            return Err(bad(
                "conversions",
                format!("is {}, more than n = {}", self.conversions, self.n),
            ));
        }
        let finite = |field: &'static str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(bad(field, format!("must be a finite number, got {v}")))
            }
        };
        finite("revenue_sum", self.revenue_sum)?;
        finite("revenue_sum_squares", self.revenue_sum_squares)?;
        let n = self.n as f64;
        check_sum_squares(self.revenue_sum, self.revenue_sum_squares, n)
            .map_err(|p| bad("revenue_sum_squares", p))?;

        if let Some(w) = self.weight
            && !(w.is_finite() && w > 0.0)
        {
            return Err(bad("weight", format!("must be a positive number, got {w}")));
        }

        let present = [
            self.covariate_sum.is_some(),
            self.covariate_sum_squares.is_some(),
            self.revenue_covariate_sum_products.is_some(),
        ];
        if present.iter().any(|p| *p) && !present.iter().all(|p| *p) {
            return Err(bad(
                "covariate_sum",
                "covariate_sum, covariate_sum_squares and revenue_covariate_sum_products come together"
                    .into(),
            ));
        }
        if let Some(c) = self.covariate() {
            finite("covariate_sum", c.sum)?;
            finite("covariate_sum_squares", c.sum_squares)?;
            finite("revenue_covariate_sum_products", c.sum_products)?;
            check_sum_squares(c.sum, c.sum_squares, n)
                .map_err(|p| bad("covariate_sum_squares", p))?;
            // Cauchy–Schwarz: the centred cross product is bounded by the
            // centred sums of squares. A product sum outside that bound came
            // from different customers than the other sums.
            let cross = c.sum_products - self.revenue_sum * c.sum / n;
            let ss_y = (self.revenue_sum_squares - self.revenue_sum.powi(2) / n).max(0.0);
            let ss_x = (c.sum_squares - c.sum.powi(2) / n).max(0.0);
            let scale = (self.revenue_sum_squares * c.sum_squares).sqrt();
            if cross.abs() > (ss_y * ss_x).sqrt() + MOMENT_SLACK * scale {
                return Err(bad(
                    "revenue_covariate_sum_products",
                    format!(
                        "is inconsistent with the sums and sums of squares (centred cross product {cross:e} exceeds their bound {:e})",
                        (ss_y * ss_x).sqrt()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A sum of squares can never be below sum²/n (the variance is not negative).
fn check_sum_squares(sum: f64, sum_squares: f64, n: f64) -> Result<(), String> {
    if sum_squares < 0.0 {
        return Err(format!("must not be negative, got {sum_squares}"));
    }
    let floor = sum * sum / n;
    if sum_squares < floor - MOMENT_SLACK * floor {
        return Err(format!(
            "is {sum_squares}, below sum²/n = {floor}: the sums cannot come from the same {n} values"
        ));
    }
    Ok(())
}

impl StatsError {
    /// Where in the input JSON the fault lies (`arms[1].n`, `alpha`), for
    /// an error that names the path once and then says what is wrong.
    pub fn path(&self, input: &ExperimentInput) -> String {
        match self {
            StatsError::InvalidArm { arm, field, .. } => input
                .arms
                .iter()
                .position(|a| &a.name == arm)
                .map_or_else(|| format!("arms.{field}"), |i| format!("arms[{i}].{field}")),
            StatsError::Invalid { field, .. } => (*field).to_string(),
            StatsError::InvalidPValue { index, .. } => format!("p_values[{index}]"),
        }
    }

    /// What is wrong, without the field name [`StatsError::path`] gives.
    pub fn problem(&self) -> String {
        match self {
            StatsError::InvalidArm { arm, problem, .. } => format!("{problem} (arm `{arm}`)"),
            StatsError::Invalid { problem, .. } => problem.clone(),
            StatsError::InvalidPValue { value, .. } => {
                format!("is {value}; a p-value must lie in [0, 1]")
            }
        }
    }
}

/// Why an input cannot be analysed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// One arm's field is invalid.
    #[error("arm `{arm}`: {field} {problem}")]
    InvalidArm {
        /// The arm's name (or `#index` if it has none).
        arm: String,
        /// The offending field, as named in the JSON.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// An experiment-level field is invalid.
    #[error("{field}: {problem}")]
    Invalid {
        /// The offending field, as named in the JSON.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A p-value given for multiple-testing correction is not in [0, 1].
    #[error("p_values[{index}] is {value}; a p-value must lie in [0, 1]")]
    InvalidPValue {
        /// Position in the list.
        index: usize,
        /// The value given.
        value: f64,
    },
}

impl ExperimentInput {
    /// Checks everything the analysis relies on and returns the comparisons
    /// to run, as (control, treatment) arm indices.
    pub(crate) fn validate(&self) -> Result<Vec<(usize, usize)>, StatsError> {
        let invalid = |field: &'static str, problem: String| StatsError::Invalid { field, problem };
        if self.arms.len() < 2 {
            return Err(invalid(
                "arms",
                format!("needs at least two arms, got {}", self.arms.len()),
            ));
        }
        if self.arms.len() > MAX_ARMS {
            return Err(invalid(
                "arms",
                format!(
                    "has {} arms; one analysis takes at most {MAX_ARMS}",
                    self.arms.len()
                ),
            ));
        }
        for (i, arm) in self.arms.iter().enumerate() {
            arm.validate(i)?;
            if self.arms[..i].iter().any(|a| a.name == arm.name) {
                return Err(invalid(
                    "arms",
                    format!("arm name `{}` appears twice", arm.name),
                ));
            }
        }
        let weighted = self.arms.iter().filter(|a| a.weight.is_some()).count();
        if weighted != 0 && weighted != self.arms.len() {
            return Err(invalid(
                "weight",
                format!(
                    "given for {weighted} of {} arms: give it for every arm or for none",
                    self.arms.len()
                ),
            ));
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return Err(invalid(
                "alpha",
                format!("must lie strictly between 0 and 1, got {}", self.alpha),
            ));
        }
        if !(self.sequential_tuning_parameter.is_finite() && self.sequential_tuning_parameter > 0.0)
        {
            return Err(invalid(
                "sequential_tuning_parameter",
                format!(
                    "must be a positive number, got {}",
                    self.sequential_tuning_parameter
                ),
            ));
        }
        if !(self.srm_threshold > 0.0 && self.srm_threshold < 1.0) {
            return Err(invalid(
                "srm_threshold",
                format!(
                    "must lie strictly between 0 and 1, got {}",
                    self.srm_threshold
                ),
            ));
        }

        let index = |field: &'static str, name: &str| {
            self.arms
                .iter()
                .position(|a| a.name == name)
                .ok_or_else(|| invalid(field, format!("names no arm: `{name}`")))
        };
        match (&self.control, &self.comparisons) {
            (Some(_), Some(_)) => Err(invalid(
                "control",
                "give either `control` (every other arm against it) or `comparisons`, not both"
                    .into(),
            )),
            (_, Some(pairs)) => {
                if pairs.is_empty() {
                    return Err(invalid("comparisons", "must not be empty".into()));
                }
                if pairs.len() > MAX_COMPARISONS {
                    return Err(invalid(
                        "comparisons",
                        format!(
                            "has {} pairs; one analysis takes at most {MAX_COMPARISONS}",
                            pairs.len()
                        ),
                    ));
                }
                pairs
                    .iter()
                    .map(|p| {
                        let (c, t) = (
                            index("comparisons", &p.control)?,
                            index("comparisons", &p.treatment)?,
                        );
                        if c == t {
                            return Err(invalid(
                                "comparisons",
                                format!("compares `{}` with itself", p.control),
                            ));
                        }
                        Ok((c, t))
                    })
                    .collect()
            }
            (control, None) => {
                let c = match control {
                    Some(name) => index("control", name)?,
                    None => 0,
                };
                Ok((0..self.arms.len())
                    .filter(|t| *t != c)
                    .map(|t| (c, t))
                    .collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_arms() -> ExperimentInput {
        ExperimentInput::new(vec![
            ArmStats::new("holdout", 100, 10, 500.0, 40_000.0),
            ArmStats::new("triggered", 100, 12, 600.0, 50_000.0),
        ])
    }

    fn err(input: &ExperimentInput) -> String {
        match input.validate() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("expected a validation error"),
        }
    }

    #[test]
    fn default_comparisons_are_every_arm_against_the_first() {
        let mut input = two_arms();
        input
            .arms
            .push(ArmStats::new("scheduled", 100, 11, 550.0, 45_000.0));
        assert_eq!(input.validate(), Ok(vec![(0, 1), (0, 2)]));
        input.control = Some("scheduled".into());
        assert_eq!(input.validate(), Ok(vec![(2, 0), (2, 1)]));
    }

    #[test]
    fn errors_name_the_arm_and_field() {
        let mut input = two_arms();
        input.arms[1].n = 0;
        assert_eq!(err(&input), "arm `triggered`: n must be at least 1, got 0");

        let mut input = two_arms();
        input.arms[0].conversions = -1;
        assert_eq!(
            err(&input),
            "arm `holdout`: conversions must not be negative, got -1"
        );

        let mut input = two_arms();
        input.arms[0].conversions = 101;
        assert_eq!(
            err(&input),
            "arm `holdout`: conversions is 101, more than n = 100"
        );

        let mut input = two_arms();
        input.arms[1].n = -5;
        assert!(err(&input).starts_with("arm `triggered`: n must be at least 1"));
    }

    #[test]
    fn sums_of_squares_must_be_consistent() {
        let mut input = two_arms();
        // 100 values summing to 500 have Σx² ≥ 2500.
        input.arms[0].revenue_sum_squares = 2000.0;
        assert!(
            err(&input)
                .starts_with("arm `holdout`: revenue_sum_squares is 2000, below sum²/n = 2500")
        );
        input.arms[0].revenue_sum_squares = 2500.0; // all values equal: fine
        assert!(input.validate().is_ok());
        input.arms[0].revenue_sum_squares = -1.0;
        assert!(err(&input).contains("revenue_sum_squares must not be negative"));
        input.arms[0].revenue_sum_squares = f64::NAN;
        assert!(err(&input).contains("revenue_sum_squares must be a finite number"));
    }

    #[test]
    fn covariate_fields_come_together_and_must_be_consistent() {
        let mut input = two_arms();
        input.arms[1].covariate_sum = Some(10.0);
        assert!(err(&input).starts_with("arm `triggered`: covariate_sum"));

        let mut input = two_arms();
        let arm = &mut input.arms[1];
        arm.covariate_sum = Some(300.0);
        arm.covariate_sum_squares = Some(20_000.0);
        // Centred: Σy² − (Σy)²/n = 46400, Σx² − (Σx)²/n = 19100, bound ≈ 29770.
        arm.revenue_covariate_sum_products = Some(1_800.0 + 20_000.0);
        assert!(input.validate().is_ok());
        input.arms[1].revenue_covariate_sum_products = Some(1_800.0 + 40_000.0);
        assert!(
            err(&input)
                .starts_with("arm `triggered`: revenue_covariate_sum_products is inconsistent")
        );
    }

    #[test]
    fn whole_counts_may_be_written_as_floats() {
        let parse = |n: &str| {
            serde_json::from_str::<ArmStats>(&format!(
                r#"{{"name": "a", "n": {n}, "conversions": 3.0, "revenue_sum": 0, "revenue_sum_squares": 0}}"#
            ))
        };
        assert_eq!(parse("1000.0").expect("whole").n, 1000);
        assert_eq!(parse("1e7").expect("whole").n, 10_000_000);
        assert_eq!(parse("1000").expect("integer").conversions, 3);
        let err = parse("1000.5").expect_err("fraction").to_string();
        assert!(
            err.contains("1000.5") && err.contains("whole number"),
            "{err}"
        );
        assert!(parse("1e19").is_err() && parse("\"7\"").is_err());
        assert_eq!(parse("-2.0").expect("negative is validated later").n, -2);
    }

    #[test]
    fn errors_give_the_path_and_the_problem_apart() {
        let mut input = two_arms();
        input.alpha = 2.0;
        let e = input.validate().expect_err("alpha");
        assert_eq!(e.path(&input), "alpha");
        assert_eq!(e.problem(), "must lie strictly between 0 and 1, got 2");
        let mut input = two_arms();
        input.arms[1].conversions = 101;
        let e = input.validate().expect_err("conversions");
        assert_eq!(e.path(&input), "arms[1].conversions");
        assert_eq!(e.problem(), "is 101, more than n = 100 (arm `triggered`)");
    }

    #[test]
    fn arms_and_comparisons_are_bounded() {
        let arms: Vec<ArmStats> = (0..=MAX_ARMS)
            .map(|i| ArmStats::new(format!("a{i}"), 10, 1, 1.0, 1.0))
            .collect();
        let e = ExperimentInput::new(arms.clone())
            .validate()
            .expect_err("too many");
        assert!(e.to_string().starts_with("arms: has 101 arms"), "{e}");
        let mut input = ExperimentInput::new(arms[..2].to_vec());
        input.comparisons = Some(vec![
            ComparisonPair {
                control: "a0".into(),
                treatment: "a1".into(),
            };
            MAX_COMPARISONS + 1
        ]);
        assert!(input.validate().is_err());
    }

    #[test]
    fn experiment_level_errors() {
        let mut input = two_arms();
        input.arms.truncate(1);
        assert_eq!(err(&input), "arms: needs at least two arms, got 1");

        let mut input = two_arms();
        input.arms[1].name = "holdout".into();
        assert_eq!(err(&input), "arms: arm name `holdout` appears twice");

        let mut input = two_arms();
        input.arms[0].weight = Some(1.0);
        assert!(err(&input).starts_with("weight: given for 1 of 2 arms"));
        input.arms[1].weight = Some(0.0);
        assert!(err(&input).starts_with("arm `triggered`: weight must be a positive number"));

        let mut input = two_arms();
        input.alpha = 1.0;
        assert!(err(&input).starts_with("alpha: must lie strictly between 0 and 1"));

        let mut input = two_arms();
        input.control = Some("nobody".into());
        assert_eq!(err(&input), "control: names no arm: `nobody`");

        let mut input = two_arms();
        input.comparisons = Some(vec![ComparisonPair {
            control: "holdout".into(),
            treatment: "holdout".into(),
        }]);
        assert_eq!(err(&input), "comparisons: compares `holdout` with itself");
    }
}
