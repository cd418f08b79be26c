//! `kairos report RULE` and `kairos report --program`: reports as plain
//! text for a terminal.

use std::fmt::Write as _;

use kairos_experiments::stats::{Effect, Effects};

use crate::program::Program;
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

/// `+1.23 [0.10, 2.36]` of a pooled or summed estimate.
fn span(estimate: f64, ci: [f64; 2], fmt: fn(f64) -> String) -> String {
    format!(
        "{}{} [{}, {}]",
        if estimate >= 0.0 { "+" } else { "" },
        fmt(estimate),
        fmt(ci[0]),
        fmt(ci[1])
    )
}

/// The program headline, for summaries (`kairos demo`): the pooled
/// triggered-vs-scheduled lifts and the incremental revenue in total.
pub fn program_headlines(p: &Program) -> Vec<String> {
    let mut out = Vec::new();
    for c in p
        .pooled
        .iter()
        .filter(|c| c.control == "scheduled" && c.treatment == "triggered" && c.scale == "relative")
    {
        if let Some(pool) = &c.pooled {
            out.push(format!(
                "triggered vs scheduled, {} (pooled over {} rule{}): {} p={:.4}",
                c.metric.replace('_', " "),
                pool.studies,
                if pool.studies == 1 { "" } else { "s" },
                span(pool.random.estimate, pool.random.ci, pct),
                pool.random.p_value
            ));
        }
    }
    for t in p.incremental.totals.iter().filter(|t| t.rules > 0) {
        let per = match (t.per_message, t.per_message_ci) {
            (Some(m), Some(ci)) => format!(", {} per message", span(m, ci, money)),
            _ => String::new(),
        };
        out.push(format!(
            "incremental revenue, {} over holdout ({} rule{}): {}{per}",
            t.arm,
            t.rules,
            if t.rules == 1 { "" } else { "s" },
            span(t.incremental_revenue, t.ci, money)
        ));
    }
    out
}

/// `kairos report --program`: the program view as text.
pub fn render_program(p: &Program) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Program  ({} rules; window {}d; data until {})",
        p.rules.len(),
        p.options.window_secs as f64 / 86_400.0,
        p.data_until.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "\nPooled across rules (fixed effect [CI], random effect, I²):"
    );
    for c in &p.pooled {
        let fmt = if c.metric == "revenue_per_recipient" && c.scale == "absolute" {
            money
        } else {
            pct
        };
        let label = format!(
            "{} vs {}, {} {}",
            c.treatment,
            c.control,
            c.metric.replace('_', " "),
            c.scale
        );
        match &c.pooled {
            Some(pool) => {
                let _ = writeln!(
                    out,
                    "  {label:<58} {}  p={:.4}  random {}  I²={}  ({} rules)",
                    span(pool.fixed.estimate, pool.fixed.ci, fmt),
                    pool.fixed.p_value,
                    span(pool.random.estimate, pool.random.ci, fmt),
                    pool.heterogeneity
                        .as_ref()
                        .map_or("-".into(), |h| pct(h.i_squared)),
                    pool.studies
                );
            }
            None => {
                let _ = writeln!(out, "  {label:<58} no rule compares these arms yet");
            }
        }
    }
    let _ = writeln!(out, "\nIncremental revenue over the holdout:");
    for r in &p.incremental.rules {
        let _ = writeln!(
            out,
            "  {:<24} {:<10} {:>9} recipients {:>9} messages  {}  per message {}",
            r.rule,
            r.arm,
            r.recipients,
            r.messages_sent,
            span(r.incremental_revenue, r.ci, money),
            match (r.per_message, r.per_message_ci) {
                (Some(m), Some(ci)) => span(m, ci, money),
                _ => "-".into(),
            }
        );
    }
    for t in &p.incremental.totals {
        let _ = writeln!(
            out,
            "  {:<24} {:<10} {:>9} recipients {:>9} messages  {}  per message {}",
            format!("total ({} rules)", t.rules),
            t.arm,
            t.recipients,
            t.messages_sent,
            span(t.incremental_revenue, t.ci, money),
            match (t.per_message, t.per_message_ci) {
                (Some(m), Some(ci)) => span(m, ci, money),
                _ => "-".into(),
            }
        );
    }
    let g = &p.global_control;
    let _ = writeln!(
        out,
        "\nGlobal control group ({}% configured):",
        g.configured_percent
    );
    if g.groups.is_empty() {
        let _ = writeln!(out, "  none in the data");
    }
    for line in &g.groups {
        let _ = writeln!(
            out,
            "  {:<16} {:>9} customers  conversion {}  revenue/customer {}",
            line.group,
            line.customers,
            pct(line.conversion_rate),
            money(line.revenue_per_customer)
        );
    }
    if let Some(c) = g.analysis.as_ref().and_then(|a| a.comparisons.first()) {
        effects(&mut out, "conversion", &c.conversion, pct);
        effects(&mut out, "revenue per customer", &c.revenue, money);
    }
    if let (Some(v), Some(ci)) = (g.incremental_revenue, g.incremental_revenue_ci) {
        let _ = writeln!(out, "  marketing earned {}", span(v, ci, money));
    }
    if let Some(a) = g.analysis.as_ref().filter(|_| g.configured_percent > 0.0) {
        let _ = writeln!(
            out,
            "  sample ratio against the configured {}%: p={:.4}{}",
            g.configured_percent,
            a.srm.p_value,
            if a.srm.flagged {
                "  MISMATCH: was the percent changed?"
            } else {
                ""
            }
        );
    }
    for t in &p.timing {
        let _ = writeln!(out, "\nTiming of {} (lift over holdout by delay):", t.rule);
        for pt in &t.points {
            let _ = writeln!(
                out,
                "  {:<10} {:>6} h {:>8} recipients  conversion {}",
                pt.variant,
                pt.delay_secs as f64 / 3600.0,
                pt.recipients,
                effect(&pt.conversion.relative, pct)
            );
        }
    }
    if !p.notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for n in &p.notes {
            let _ = writeln!(out, "  - {n}");
        }
    }
    out
}
