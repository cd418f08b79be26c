//! The response simulator: a cart-abandonment experiment with a lift
//! known in advance, so a report can be checked against it.

use super::*;

/// A response simulator for one cart-abandonment experiment, so a report
/// can be checked against a lift that is known in advance.
///
/// Each customer abandons exactly one cart at a random time; the rule
/// qualifies them `delay` later. Their arm is what the live pipeline will
/// give them: [`kairos_experiments::Design::assign`] over the rule's own
/// salt and split and the canonical customer id (the `userId`). A customer
/// converts (buys that cart: `Order Completed` with its revenue) with
/// probability `base_rate × (1 + lift of the arm)`, the holdout's lift being
/// 0, at a time after their message: 6 hours to 3¼ days after qualifying,
/// a day later in the scheduled arm (its send waits for the next scheduled
/// time, at most a day away). Every conversion falls inside a 7-day
/// attribution window whatever replay batch span (up to 6 hours) decides the
/// exact assignment instant. There are no other purchases and no anonymous
/// visitors, so the true conversion lift of an arm over holdout is exactly
/// its `lift`, and so is its revenue-per-recipient lift (what a converter
/// spends does not depend on the arm).
///
/// A rule with variants of the triggered arm (`-- variant 6h: delay=6h`)
/// is simulated too: each variant qualifies its customers after its own
/// `delay` and converts them at its own lift (`triggered:6h=0.28`; the
/// `triggered` lift for variants not named), so a timing experiment has a
/// known answer per delay.
#[derive(Debug, Clone, PartialEq)]
pub struct Lift {
    /// The rule (experiment) name, for messages.
    pub rule: String,
    /// The rule's experiment design: salt and split.
    pub design: kairos_experiments::Design,
    /// The rule's `delay` parameter: qualification comes this long after the
    /// last cart add.
    pub delay: Duration,
    /// Conversion probability of a holdout customer (0 to 1).
    pub base_rate: f64,
    /// Relative conversion lift of the scheduled arm over holdout (0.08 = +8%).
    pub scheduled: f64,
    /// Relative conversion lift of the triggered arm over holdout.
    pub triggered: f64,
    /// The triggered arm's variants, if the rule has them.
    pub variants: Vec<VariantLift>,
}

/// One variant of the triggered arm in the simulator.
#[derive(Debug, Clone, PartialEq)]
pub struct VariantLift {
    /// The variant's name in the rule.
    pub name: String,
    /// Its `delay` (its own, else the rule's).
    pub delay: Duration,
    /// Its relative conversion lift over holdout.
    pub lift: f64,
}

impl Lift {
    /// The simulator for `rule` (a cart-abandonment rule: an abandoned cart
    /// qualifies `delay` after the last add; `1h` when it has no `delay`
    /// parameter). `lifts` is `arm=lift,...`, e.g. `triggered=0.20,scheduled=0.08`.
    pub fn for_rule(rule: &kairos_rules::Rule, base_rate: f64, lifts: &str) -> Result<Lift> {
        let delay_of =
            |params: &std::collections::BTreeMap<String, kairos_rules::rule::Param>| match params
                .get("delay")
            {
                Some(kairos_rules::rule::Param::Duration(secs)) => Ok(Some(Duration::seconds(
                    i64::try_from(*secs).context("delay out of range")?,
                ))),
                Some(other) => anyhow::bail!(
                    "rule {}: the simulator reads `delay` as a duration, found {other:?}",
                    rule.name
                ),
                None => Ok(None),
            };
        let delay = delay_of(&rule.params)?.unwrap_or(Duration::hours(1));
        let mut variant_lifts: Vec<(String, f64)> = Vec::new();
        let (mut scheduled, mut triggered) = (0.0, 0.0);
        for part in lifts.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (arm, value) = part
                .split_once('=')
                .with_context(|| format!("--lift {part:?}: write ARM=LIFT, e.g. triggered=0.20"))?;
            let value: f64 = value
                .trim()
                .parse()
                .with_context(|| format!("--lift {part:?}: the lift is a number like 0.20"))?;
            match arm.trim() {
                "scheduled" => scheduled = value,
                "triggered" => triggered = value,
                other => match other.strip_prefix("triggered:") {
                    Some(v) if rule.variants.iter().any(|x| x.name == v) => {
                        variant_lifts.push((v.to_string(), value));
                    }
                    Some(v) => {
                        anyhow::bail!("--lift {other:?}: rule {} has no variant {v:?}", rule.name)
                    }
                    None => anyhow::bail!(
                        "--lift {other:?}: give `scheduled`, `triggered` and/or `triggered:VARIANT` (holdout is the baseline)"
                    ),
                },
            }
        }
        let variants = rule
            .variants
            .iter()
            .map(|v| {
                Ok(VariantLift {
                    name: v.name.clone(),
                    delay: delay_of(&v.params)?.unwrap_or(delay),
                    lift: variant_lifts
                        .iter()
                        .find(|(n, _)| *n == v.name)
                        .map_or(triggered, |(_, l)| *l),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lift = Lift {
            rule: rule.name.clone(),
            design: rule.design(),
            delay,
            base_rate,
            scheduled,
            triggered,
            variants,
        };
        let mut rates: Vec<(String, f64)> = vec![
            (
                "holdout".into(),
                lift.rate(kairos_experiments::Arm::Holdout, None),
            ),
            (
                "scheduled".into(),
                lift.rate(kairos_experiments::Arm::Scheduled, None),
            ),
            (
                "triggered".into(),
                lift.rate(kairos_experiments::Arm::Triggered, None),
            ),
        ];
        for v in &lift.variants {
            rates.push((
                format!("triggered:{}", v.name),
                lift.rate(kairos_experiments::Arm::Triggered, Some(&v.name)),
            ));
        }
        for (arm, p) in rates {
            ensure!(
                (0.0..=1.0).contains(&p),
                "the {arm} arm would convert at {p} (base rate {base_rate} × (1 + lift)): \
                 choose a base rate and lifts that keep every rate between 0 and 1"
            );
        }
        Ok(lift)
    }

    /// The conversion probability of a customer in `arm` (and `variant`).
    pub fn rate(&self, arm: kairos_experiments::Arm, variant: Option<&str>) -> f64 {
        let lift = match arm {
            kairos_experiments::Arm::Holdout => 0.0,
            kairos_experiments::Arm::Scheduled => self.scheduled,
            kairos_experiments::Arm::Triggered => self
                .variants
                .iter()
                .find(|v| Some(v.name.as_str()) == variant)
                .map_or(self.triggered, |v| v.lift),
        };
        self.base_rate * (1.0 + lift)
    }

    /// How long after the last cart add a customer of `variant` qualifies.
    pub fn delay(&self, variant: Option<&str>) -> Duration {
        self.variants
            .iter()
            .find(|v| Some(v.name.as_str()) == variant)
            .map_or(self.delay, |v| v.delay)
    }

    /// The longest delay of any customer.
    pub(crate) fn max_delay(&self) -> Duration {
        self.variants
            .iter()
            .map(|v| v.delay)
            .fold(self.delay, Duration::max)
    }
}

impl Lift {
    /// The simulator for the rule in `file` (see [`Lift::for_rule`]).
    pub fn from_rule_file(file: &std::path::Path, base_rate: f64, lifts: &str) -> Result<Lift> {
        let text = std::fs::read_to_string(file).with_context(|| {
            format!(
                "reading the lift rule {}; point it at the rule file the replay will use",
                file.display()
            )
        })?;
        let rule = kairos_rules::parse(file, &text).map_err(|errors| {
            let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("the lift rule does not parse:\n{}", lines.join("\n"))
        })?;
        Lift::for_rule(&rule, base_rate, lifts)
    }
}
