//! `kairos report RULE`: the report as plain text for a terminal.

use std::fmt::Write as _;

use kairos_experiments::stats::{Effect, Effects};

use crate::report::Report;

fn money(v: f64) -> String {
    format!("{v:.2}")
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), money)
}

/// `+1.23 [0.10, 2.36]`.
fn interval(e: &kairos_experiments::stats::Estimate, fmt: fn(f64) -> String) -> String {
    format!(
        "{}{} [{}, {}]",
        if e.estimate >= 0.0 { "+" } else { "" },
        fmt(e.estimate),
        fmt(e.ci[0]),
        fmt(e.ci[1])
    )
}

/// One effect as `+1.23 [0.10, 2.36]  p=0.0320  chance to win 98.1%`.
fn effect(e: &Effect, fmt: fn(f64) -> String) -> String {
    match e {
        Effect::Estimated(e) => format!(
            "{}  p={:.4}  chance to win {:.1}%",
            interval(e, fmt),
            e.p_value,
            e.chance_to_win * 100.0
        ),
        Effect::NotEstimable { reason } => format!("not estimable ({reason:?})"),
    }
}

fn effects(out: &mut String, label: &str, e: &Effects, fmt: fn(f64) -> String) {
    let _ = writeln!(out, "    {label:<26} {}", effect(&e.absolute, fmt));
    let _ = writeln!(out, "    {:<26} {}", "  relative", effect(&e.relative, pct));
}

/// The report as text: arms table, comparisons, SRM and notes.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let o = &r.options;
    let _ = writeln!(
        out,
        "Experiment {}  ({} recipients; window {}d, conversion `{}`, revenue `{}`{}; data until {})",
        r.rule,
        r.recipients,
        o.window_secs as f64 / 86_400.0,
        o.conversion_event,
        o.revenue_event,
        r.cap_value
            .map(|c| format!(", revenue capped at {}", money(c)))
            .unwrap_or_default(),
        r.data_until.as_deref().unwrap_or("-"),
    );
    if let Some(d) = &r.design {
        let _ = writeln!(
            out,
            "split: holdout {}% / scheduled {}% / triggered {}%",
            d.holdout, d.scheduled, d.triggered
        );
    }
    let _ = writeln!(
        out,
        "\n{:<22} {:>10} {:>9} {:>11} {:>10} {:>12} {:>10} {:>11} {:>11}",
        "arm",
        "recipients",
        "messages",
        "conversions",
        "conv rate",
        "revenue",
        "rev/recip",
        "rev/message",
        "rev/convert"
    );
    for a in r.arms.iter().chain(&r.variants) {
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>9} {:>11} {:>10} {:>12} {:>10} {:>11} {:>11}",
            a.name,
            a.recipients,
            a.messages_sent,
            a.conversions,
            pct(a.conversion_rate),
            money(a.revenue),
            money(a.revenue_per_recipient),
            opt(a.revenue_per_message),
            opt(a.revenue_per_converter),
        );
    }
    for analysis in r.analysis.iter().chain(&r.variant_analysis) {
        for c in &analysis.comparisons {
            let _ = writeln!(out, "\n{} vs {}:", c.treatment, c.control);
            effects(&mut out, "conversion rate", &c.conversion, pct);
            effects(&mut out, "revenue per recipient", &c.revenue, money);
            if let Some(cu) = &c.revenue_cuped {
                effects(&mut out, "  with CUPED", &cu.effects, money);
                if let Some(v) = cu.variance_reduction {
                    let _ = writeln!(out, "    {:<26} {}", "  variance reduction", pct(v));
                }
            }
        }
    }
    if let Some(s) = &r.srm {
        let _ = writeln!(
            out,
            "\nsample ratio: chi² {:.3}, p={:.4}{}",
            s.chi_square,
            s.p_value,
            if s.flagged {
                "  MISMATCH: the arms' sizes do not match the configured split"
            } else {
                "  (ok)"
            }
        );
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

/// One line per comparison, for summaries: the relative conversion lift and
/// the revenue per recipient difference, each with its 95% CI and p-value.
pub fn headlines(r: &Report) -> Vec<String> {
    let short = |e: &Effect, fmt: fn(f64) -> String| match e {
        Effect::Estimated(e) => format!("{} p={:.4}", interval(e, fmt), e.p_value),
        Effect::NotEstimable { reason } => format!("not estimable ({reason:?})"),
    };
    r.analysis
        .iter()
        .flat_map(|a| &a.comparisons)
        .map(|c| {
            format!(
                "{} vs {}: conversion {}, revenue per recipient {}",
                c.treatment,
                c.control,
                short(&c.conversion.relative, pct),
                short(&c.revenue.absolute, money)
            )
        })
        .collect()
}
