//! The report pages, `/experiments`, `/experiments/{rule}` and `/program`:
//! the same [`Overview`], [`Report`] and [`Program`] the API serves, as server-rendered HTML
//! with inline CSS and inline SVG ([`crate::svg`]), so a page works
//! offline and needs no script, font or image from anywhere.
//!
//! Plain `format!` rather than a template engine: the pages are a few
//! tables and two charts, and typed Rust keeps every value escaped
//! ([`esc`]) and every number formatted in one place. Numeric cells carry
//! the exact JSON value in `data-value` (`data-col` names the field), so
//! a script, or the end-to-end test, can check a page against the API.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use kairos_experiments::stats::{Comparison, Effect, Estimate};

use crate::program::Program;
use crate::report::{ArmReport, Overview, Report};
use crate::svg::{self, CiRow, Series, colour, esc};

/// The page's style: system fonts only, nothing fetched.
const CSS: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1a1a1a;max-width:1160px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:22px 0 8px}
.meta{color:#495057;margin:2px 0}
table{border-collapse:collapse;font-size:14px;margin:4px 0}
th{background:#dbe4f0;text-align:left;padding:6px 10px;font-weight:600}
td{padding:5px 10px;border-bottom:1px solid #dee2e6;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.verdict{font-size:16px;background:#f1f3f5;padding:10px 16px;border-radius:6px}
.verdict li{margin:4px 0}
.warning{background:#fff3bf;border:2px solid #f08c00;padding:10px 16px;border-radius:6px;font-weight:600}
.ok{color:#2b8a3e}
.charts{display:flex;gap:24px;flex-wrap:wrap}
figure{margin:0}figcaption{font-weight:600;margin-bottom:4px}
.small{font-size:13px;color:#495057}
a{color:#1864ab}
";

/// `?k=v&...` of the parsed query parameters, for links that keep them.
pub fn query_string(q: &BTreeMap<String, String>) -> String {
    if q.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = q
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("?{}", parts.join("&"))
}

/// Percent-encodes all but RFC 3986's unreserved characters.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{} · Kairos</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n",
        esc(title)
    )
}

fn money(v: f64) -> String {
    format!("{v:.2}")
}

fn signed_money(v: f64) -> String {
    format!("{}{v:.2}", if v > 0.0 { "+" } else { "" })
}

fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

fn signed_pct(v: f64) -> String {
    format!("{}{:.2}%", if v > 0.0 { "+" } else { "" }, v * 100.0)
}

fn pval(p: f64) -> String {
    if p < 0.0001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

/// A numeric cell: the shown text, and the exact value for machines.
fn num(col: &str, value: f64, text: &str) -> String {
    format!(
        "<td class=\"num\" data-col=\"{col}\" data-value=\"{value}\">{}</td>",
        esc(text)
    )
}

fn num_opt(col: &str, value: Option<f64>, fmt: fn(f64) -> String) -> String {
    match value {
        Some(v) => num(col, v, &fmt(v)),
        None => format!("<td class=\"num\" data-col=\"{col}\">–</td>"),
    }
}

fn int(col: &str, v: i64) -> String {
    format!("<td class=\"num\" data-col=\"{col}\" data-value=\"{v}\">{v}</td>")
}

fn estimate(e: &Effect) -> Option<&Estimate> {
    match e {
        Effect::Estimated(e) => Some(e),
        Effect::NotEstimable { .. } => None,
    }
}

fn not_estimable(e: &Effect) -> String {
    match e {
        Effect::NotEstimable { reason } => format!("{reason:?}")
            .chars()
            .flat_map(|c| {
                if c.is_uppercase() {
                    vec![' ', c.to_ascii_lowercase()]
                } else {
                    vec![c]
                }
            })
            .collect::<String>()
            .trim()
            .to_string(),
        Effect::Estimated(_) => String::new(),
    }
}

/// `95%` for alpha 0.05.
fn level(alpha: f64) -> String {
    let l = (1.0 - alpha) * 100.0;
    if (l - l.round()).abs() < 1e-9 {
        format!("{l:.0}%")
    } else {
        format!("{l}%")
    }
}

/// Effect text: `+1.23 [0.40, 2.06]`.
fn effect_text(e: &Effect, fmt: fn(f64) -> String, signed: fn(f64) -> String) -> String {
    match estimate(e) {
        Some(x) => format!(
            "{} [{}, {}]",
            signed(x.estimate),
            fmt(x.ci[0]),
            fmt(x.ci[1])
        ),
        None => format!("not estimable ({})", not_estimable(e)),
    }
}

/// The plain-language verdict on revenue per recipient for one comparison,
/// CUPED-adjusted when available (it is the more precise of the two).
pub fn verdict(c: &Comparison, alpha: f64) -> String {
    let (effects, how) = match &c.revenue_cuped {
        Some(cu) if estimate(&cu.effects.absolute).is_some() => (&cu.effects, " (CUPED-adjusted)"),
        _ => (&c.revenue, ""),
    };
    let (t, k) = (esc(&c.treatment), esc(&c.control));
    let Some(e) = estimate(&effects.absolute) else {
        return format!(
            "{t} vs {k}: not estimable yet ({}).",
            not_estimable(&effects.absolute)
        );
    };
    let rel = estimate(&effects.relative)
        .map(|r| format!(" ({})", signed_pct(r.estimate)))
        .unwrap_or_default();
    let ci = format!(
        "{} CI [{}, {}], p = {}{how}",
        level(alpha),
        money(e.ci[0]),
        money(e.ci[1]),
        pval(e.p_value)
    );
    if e.p_value < alpha && e.estimate > 0.0 {
        format!(
            "<strong>{t} beats {k}</strong> by {} per recipient{rel}, {ci}.",
            money(e.estimate)
        )
    } else if e.p_value < alpha {
        format!(
            "<strong>{t} does worse than {k}</strong> by {} per recipient{rel}, {ci}.",
            money(-e.estimate)
        )
    } else {
        format!(
            "<strong>No significant difference yet</strong> between {t} and {k}: {} per recipient{rel}, {ci}.",
            signed_money(e.estimate)
        )
    }
}

fn options_line(r: &Report) -> String {
    let o = &r.options;
    let days = |s: u64| {
        if s % 86_400 == 0 {
            format!("{} d", s / 86_400)
        } else {
            format!("{:.1} h", s as f64 / 3600.0)
        }
    };
    let mut parts = vec![
        format!("{} recipients", r.recipients),
        format!("window {}", days(o.window_secs)),
        format!("conversion <code>{}</code>", esc(&o.conversion_event)),
        format!("revenue <code>{}</code>", esc(&o.revenue_event)),
        match r.cap_value {
            Some(c) => format!("revenue capped at {}", money(c)),
            None => "no cap".into(),
        },
        format!(
            "CUPED {} (pre-period {})",
            if o.cuped { "on" } else { "off" },
            days(o.pre_period_secs)
        ),
    ];
    if let Some(f) = o.from_us {
        parts.push(format!("assigned from {}", crate::options::rfc3339(f)));
    }
    if let Some(t) = o.to_us {
        parts.push(format!("assigned before {}", crate::options::rfc3339(t)));
    }
    parts.push(format!(
        "data until {}",
        esc(r.data_until.as_deref().unwrap_or("–"))
    ));
    parts.join(" · ")
}

fn arms_table(arms: &[&ArmReport]) -> String {
    let mut s = String::from(
        "<table class=\"arms\"><thead><tr><th>arm</th><th class=\"num\">recipients</th>\
         <th class=\"num\">expected share</th><th class=\"num\">messages</th>\
         <th class=\"num\">conversions</th><th class=\"num\">conversion rate</th>\
         <th class=\"num\">revenue</th><th class=\"num\">revenue / recipient</th>\
         <th class=\"num\">revenue / message</th><th class=\"num\">revenue / converter</th>\
         <th class=\"num\">open windows</th></tr></thead><tbody>",
    );
    for a in arms {
        let _ = write!(
            s,
            "<tr data-arm=\"{n}\"><td>{n}</td>{}{}{}{}{}{}{}{}{}{}</tr>",
            int("recipients", a.recipients),
            num_opt("expected_share", a.expected_share, pct),
            int("messages_sent", a.messages_sent),
            int("conversions", a.conversions),
            num(
                "conversion_rate",
                a.conversion_rate,
                &pct(a.conversion_rate)
            ),
            num("revenue", a.revenue, &money(a.revenue)),
            num(
                "revenue_per_recipient",
                a.revenue_per_recipient,
                &money(a.revenue_per_recipient)
            ),
            num_opt("revenue_per_message", a.revenue_per_message, money),
            num_opt("revenue_per_converter", a.revenue_per_converter, money),
            int("recipients_in_open_window", a.recipients_in_open_window),
            n = esc(&a.name),
        );
    }
    s.push_str("</tbody></table>");
    s
}

fn stats_table(arms: &[&ArmReport]) -> String {
    let mut s = String::from(
        "<table class=\"stats\"><thead><tr><th>arm</th><th class=\"num\">n</th>\
         <th class=\"num\">conversions</th><th class=\"num\">Σ revenue</th>\
         <th class=\"num\">Σ revenue²</th><th class=\"num\">Σ covariate</th>\
         <th class=\"num\">Σ covariate²</th><th class=\"num\">Σ revenue·covariate</th>\
         </tr></thead><tbody>",
    );
    // Shown to 6 decimals (sums of money carry float noise such as
    // 1504.6999999999998); `data-value` keeps the exact number.
    let g = |v: f64| {
        let t = format!("{v:.6}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    for a in arms {
        let st = &a.stats;
        let _ = write!(
            s,
            "<tr data-stats=\"{n}\"><td>{n}</td>{}{}{}{}{}{}{}</tr>",
            int("n", st.n),
            int("conversions", st.conversions),
            num("revenue_sum", st.revenue_sum, &g(st.revenue_sum)),
            num(
                "revenue_sum_squares",
                st.revenue_sum_squares,
                &g(st.revenue_sum_squares)
            ),
            num_opt("covariate_sum", st.covariate_sum, g),
            num_opt("covariate_sum_squares", st.covariate_sum_squares, g),
            num_opt(
                "revenue_covariate_sum_products",
                st.revenue_covariate_sum_products,
                g
            ),
            n = esc(&a.name),
        );
    }
    s.push_str("</tbody></table>");
    s
}

fn effect_cells(
    col: &str,
    e: &Effect,
    fmt: fn(f64) -> String,
    signed: fn(f64) -> String,
) -> String {
    match estimate(e) {
        Some(x) => format!(
            "{}<td class=\"num\">{}</td>",
            num(col, x.estimate, &effect_text(e, fmt, signed)),
            pval(x.p_value)
        ),
        None => format!(
            "<td data-col=\"{col}\" colspan=\"2\">not estimable ({})</td>",
            not_estimable(e)
        ),
    }
}

fn comparisons_table(comparisons: &[&Comparison], alpha: f64) -> String {
    let mut s = format!(
        "<table class=\"comparisons\"><thead><tr><th>comparison</th><th>metric</th>\
         <th class=\"num\">lift [{l} CI]</th><th class=\"num\">p</th>\
         <th class=\"num\">CUPED lift [{l} CI]</th><th class=\"num\">p</th>\
         <th class=\"num\">variance reduction</th><th class=\"num\">relative lift</th>\
         <th class=\"num\">chance to win</th></tr></thead><tbody>",
        l = level(alpha)
    );
    for c in comparisons {
        let name = format!("{} − {}", c.treatment, c.control);
        let key = format!("{}/{}", c.control, c.treatment);
        let ctw = |e: &Effect| {
            estimate(e).map_or_else(
                || "<td class=\"num\">–</td>".to_string(),
                |x| num("chance_to_win", x.chance_to_win, &pct(x.chance_to_win)),
            )
        };
        let cuped = match &c.revenue_cuped {
            Some(cu) => format!(
                "{}{}",
                effect_cells("revenue_cuped", &cu.effects.absolute, money, signed_money),
                num_opt("variance_reduction", cu.variance_reduction, pct)
            ),
            None => "<td colspan=\"3\" class=\"small\">CUPED off or no covariate</td>".into(),
        };
        let _ = write!(
            s,
            "<tr data-comparison=\"{k}\" data-metric=\"revenue\"><td>{n}</td><td>revenue / recipient</td>{}{cuped}<td class=\"num\">{}</td>{}</tr>",
            effect_cells("revenue", &c.revenue.absolute, money, signed_money),
            effect_text(&c.revenue.relative, pct, signed_pct),
            ctw(&c.revenue.absolute),
            k = esc(&key),
            n = esc(&name),
        );
        let _ = write!(
            s,
            "<tr data-comparison=\"{k}\" data-metric=\"conversion\"><td>{n}</td><td>conversion rate</td>{}<td colspan=\"3\"></td><td class=\"num\">{}</td>{}</tr>",
            effect_cells("conversion", &c.conversion.absolute, pct, signed_pct),
            effect_text(&c.conversion.relative, pct, signed_pct),
            ctw(&c.conversion.absolute),
            k = esc(&key),
            n = esc(&name),
        );
    }
    s.push_str("</tbody></table>");
    s
}

/// The charts: revenue-per-recipient lift with CI bars (unadjusted and
/// CUPED), conversion lift, and cumulative revenue lift over time.
fn charts(r: &Report, comparisons: &[&Comparison]) -> String {
    let colour_of = |c: &Comparison| {
        colour(
            comparisons
                .iter()
                .position(|x| x.control == c.control && x.treatment == c.treatment)
                .unwrap_or(0),
        )
    };
    let mut revenue = Vec::new();
    let mut conversion = Vec::new();
    for c in comparisons {
        let name = format!("{} − {}", c.treatment, c.control);
        if let Some(e) = estimate(&c.revenue.absolute) {
            revenue.push(CiRow {
                label: name.clone(),
                estimate: e.estimate,
                ci: e.ci,
                colour: colour_of(c),
            });
        }
        if let Some(e) = c
            .revenue_cuped
            .as_ref()
            .and_then(|cu| estimate(&cu.effects.absolute))
        {
            revenue.push(CiRow {
                label: format!("{name}, CUPED"),
                estimate: e.estimate,
                ci: e.ci,
                colour: colour_of(c),
            });
        }
        if let Some(e) = estimate(&c.conversion.absolute) {
            conversion.push(CiRow {
                label: name,
                estimate: e.estimate,
                ci: e.ci,
                colour: colour_of(c),
            });
        }
    }
    let l = level(r.options.alpha);
    let mut s = String::from("<div class=\"charts\">");
    if !revenue.is_empty() {
        let _ = write!(
            s,
            "<figure id=\"lift\"><figcaption>Revenue per recipient: lift with {l} CI</figcaption>{}",
            svg::ci_chart(&revenue, signed_money)
        );
        if !conversion.is_empty() {
            let _ = write!(
                s,
                "<figcaption>Conversion rate: lift with {l} CI</figcaption>{}",
                svg::ci_chart(&conversion, signed_pct)
            );
        }
        s.push_str("</figure>");
    }
    let series: Vec<Series> = r
        .cumulative
        .iter()
        .filter_map(|cs| {
            let c = comparisons
                .iter()
                .find(|c| c.control == cs.control && c.treatment == cs.treatment)?;
            Some(Series {
                label: format!("{} − {}", cs.treatment, cs.control),
                colour: colour_of(c),
                points: cs
                    .points
                    .iter()
                    .filter_map(|p| {
                        let e = estimate(&p.revenue.absolute)?;
                        Some((day_number(&p.date)?, e.estimate, e.ci[0], e.ci[1]))
                    })
                    .collect(),
            })
        })
        .collect();
    if series.iter().any(|s| !s.points.is_empty()) {
        let _ = write!(
            s,
            "<figure id=\"cumulative\"><figcaption>Cumulative lift in revenue per recipient by day of assignment ({l} CI, unadjusted)</figcaption>{}\
             <p class=\"small\">Each point analyses everyone assigned up to that day; recent days include windows still open.</p></figure>",
            svg::line_chart(&series, date_of, signed_money)
        );
    }
    s.push_str("</div>");
    s
}

/// `/experiments/{rule}`: `q` are the page's query parameters, kept in
/// its links.
pub fn report_page(r: &Report, q: &BTreeMap<String, String>) -> String {
    let qs = query_string(q);
    let mut b = String::new();
    let _ = write!(
        b,
        "<header><p class=\"small\"><a href=\"/experiments{qs}\">← all experiments</a> · \
         <a href=\"/api/experiments/{}{qs}\">JSON</a></p><h1>Experiment <code>{}</code></h1>\
         <p class=\"meta\">{}</p>",
        encode(&r.rule),
        esc(&r.rule),
        options_line(r),
        qs = esc(&qs),
    );
    if let Some(d) = &r.design {
        let _ = write!(
            b,
            "<p class=\"meta\">configured split: holdout {}% · scheduled {}% · triggered {}%{}</p>",
            d.holdout,
            d.scheduled,
            d.triggered,
            if d.variants.is_empty() {
                String::new()
            } else {
                let v: Vec<String> = d
                    .variants
                    .iter()
                    .map(|v| format!("{} ×{}", esc(&v.name), v.weight))
                    .collect();
                format!(" (variants {})", v.join(", "))
            }
        );
    }
    b.push_str("</header>");

    let comparisons: Vec<&Comparison> = r
        .analysis
        .iter()
        .chain(&r.variant_analysis)
        .flat_map(|a| &a.comparisons)
        .collect();
    b.push_str("<section class=\"verdict\" id=\"verdict\"><ul>");
    for c in &comparisons {
        let _ = write!(
            b,
            "<li data-comparison=\"{}/{}\">{}</li>",
            esc(&c.control),
            esc(&c.treatment),
            verdict(c, r.options.alpha)
        );
    }
    if comparisons.is_empty() {
        b.push_str("<li>Nothing to compare yet.</li>");
    }
    let _ = write!(
        b,
        "</ul><p class=\"small\">Revenue per recipient in the {} after assignment, intent-to-treat; significant when p &lt; {}.</p></section>",
        if r.options.window_secs % 86_400 == 0 {
            format!("{} days", r.options.window_secs / 86_400)
        } else {
            format!("{} hours", r.options.window_secs / 3600)
        },
        r.options.alpha
    );

    for (what, srm) in [("arms", r.srm.as_ref())].into_iter().chain(
        r.variant_analysis
            .as_ref()
            .map(|a| ("variants", Some(&a.srm))),
    ) {
        match srm {
            Some(s) if s.flagged => {
                let _ = write!(
                    b,
                    "<p class=\"warning srm\" id=\"srm-{what}\">⚠ Sample-ratio mismatch: the {what}' sizes do not match the configured split \
                     (chi² {:.2}, p = {}). Assignment or logging is broken somewhere; do not trust these results until it is explained.</p>",
                    s.chi_square,
                    pval(s.p_value)
                );
            }
            Some(s) => {
                let _ = write!(
                    b,
                    "<p class=\"ok\" id=\"srm-{what}\">Sample ratio of the {what} matches the configured split (chi² {:.2}, p = {}).</p>",
                    s.chi_square,
                    pval(s.p_value)
                );
            }
            None => {}
        }
    }

    b.push_str(&charts(r, &comparisons));
    let arms: Vec<&ArmReport> = r.arms.iter().chain(&r.variants).collect();
    b.push_str("<h2>Arms</h2>");
    if arms.is_empty() {
        b.push_str("<p>No recipients yet.</p>");
    } else {
        b.push_str(&arms_table(&arms));
    }
    if !comparisons.is_empty() {
        b.push_str("<h2>Comparisons</h2>");
        b.push_str(&comparisons_table(&comparisons, r.options.alpha));
    }
    if !arms.is_empty() {
        b.push_str(
            "<h2>Sufficient statistics</h2><p class=\"small\">Per arm, exactly what <code>POST /api/analyze</code> takes: anyone can recompute the analysis.</p>",
        );
        b.push_str(&stats_table(&arms));
    }
    if !r.notes.is_empty() {
        b.push_str("<h2>Notes</h2><ul class=\"notes\">");
        for n in &r.notes {
            let _ = write!(b, "<li>{}</li>", esc(n));
        }
        b.push_str("</ul>");
    }
    page(&format!("Experiment {}", r.rule), &b)
}

/// `/experiments`: every experiment's headline numbers and corrected p-values.
pub fn overview_page(o: &Overview, q: &BTreeMap<String, String>) -> String {
    let qs = query_string(q);
    let mut b = String::new();
    let _ = write!(
        b,
        "<header><p class=\"small\"><a href=\"/program{qs}\">program view: every rule together →</a> · <a href=\"/api/experiments{}\">JSON</a></p><h1>Experiments</h1>\
         <p class=\"meta\">{} experiments · window {} d · data until {}</p></header>",
        esc(&qs),
        o.experiments.len(),
        o.options.window_secs as f64 / 86_400.0,
        esc(o.data_until.as_deref().unwrap_or("–")),
    );
    let _ = write!(
        b,
        "<p class=\"small\">Headline: revenue per recipient, treatment − control (triggered − holdout when both exist), CUPED-adjusted where available, {} CI. \
         With many experiments some look significant by chance: <em>Holm</em> adjusts p-values for the chance of any false positive among them, \
         <em>BH</em> (Benjamini–Hochberg) for the share of false discoveries.</p>",
        level(o.options.alpha)
    );
    b.push_str(
        "<table class=\"overview\"><thead><tr><th>experiment</th><th class=\"num\">recipients</th>\
         <th class=\"num\">messages</th><th>arms: recipients · conversion · revenue / recipient</th>\
         <th>comparison</th><th class=\"num\">lift [CI]</th><th class=\"num\">relative</th>\
         <th class=\"num\">p</th><th class=\"num\">p Holm</th><th class=\"num\">p BH</th>\
         <th>sample ratio</th></tr></thead><tbody>",
    );
    for h in &o.experiments {
        let arms: Vec<String> = h
            .arms
            .iter()
            .map(|a| {
                format!(
                    "{} {} · {} · {}",
                    esc(&a.name),
                    a.recipients,
                    pct(a.conversion_rate),
                    money(a.revenue_per_recipient)
                )
            })
            .collect();
        let cmp = match &h.comparison {
            Some(c) => format!(
                "<td>{} − {}{}</td>{}<td class=\"num\">{}</td>{}{}{}",
                esc(&c.treatment),
                esc(&c.control),
                if c.cuped { " (CUPED)" } else { "" },
                match estimate(&c.absolute) {
                    Some(e) => num(
                        "lift",
                        e.estimate,
                        &effect_text(&c.absolute, money, signed_money)
                    ),
                    None => format!("<td>not estimable ({})</td>", not_estimable(&c.absolute)),
                },
                estimate(&c.relative).map_or("–".into(), |e| signed_pct(e.estimate)),
                num_opt("p_value", c.p_value, pval),
                num_opt("p_value_holm", c.p_value_holm, pval),
                num_opt("p_value_bh", c.p_value_bh, pval),
            ),
            None => "<td colspan=\"6\" class=\"small\">nothing to compare</td>".into(),
        };
        let srm = match h.srm_flagged {
            Some(true) => "<td class=\"warning\">⚠ mismatch</td>",
            Some(false) => "<td class=\"ok\">ok</td>",
            None => "<td class=\"small\">not checked</td>",
        };
        let _ = write!(
            b,
            "<tr data-rule=\"{r}\"><td><a href=\"/experiments/{}{}\">{r}</a></td>{}{}<td>{}</td>{cmp}{srm}</tr>",
            encode(&h.rule),
            esc(&qs),
            int("recipients", h.recipients),
            int("messages_sent", h.messages_sent),
            arms.join("<br>"),
            r = esc(&h.rule),
        );
    }
    b.push_str("</tbody></table>");
    page("Experiments", &b)
}

/// An error page: what went wrong and what to do; `known` lists the
/// experiments (as links) when the one asked for does not exist.
pub fn error_page(status: u16, message: &str, known: &[String]) -> String {
    let mut b = format!(
        "<h1>{status}: {}</h1><p class=\"warning\">{}</p>",
        match status {
            400 => "bad parameter",
            401 => "report token needed",
            403 => "not allowed",
            404 => "no such experiment",
            503 => "busy",
            _ => "report failed",
        },
        esc(message)
    );
    if !known.is_empty() {
        b.push_str("<p>Known experiments:</p><ul>");
        for k in known {
            let _ = write!(
                b,
                "<li><a href=\"/experiments/{}\">{}</a></li>",
                encode(k),
                esc(k)
            );
        }
        b.push_str("</ul>");
    }
    b.push_str("<p><a href=\"/experiments\">All experiments</a> · parameters: <code>docs/reports.md</code></p>");
    page(&format!("Error {status}"), &b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ArmSums;
    use crate::options::ReportOptions;
    use crate::report::build;

    fn row(arm: &str, n: i64, conv: i64, rev: f64, ss: f64) -> ArmSums {
        ArmSums {
            experiment: "x<y>".into(),
            arm: arm.into(),
            recipients: n,
            conversions: conv,
            revenue_sum: rev,
            revenue_sum_squares: ss,
            ..ArmSums::default()
        }
    }

    #[test]
    fn verdicts_say_who_wins_or_that_nothing_is_known_yet() {
        let o = ReportOptions {
            cuped: false,
            ..ReportOptions::default()
        };
        // A large clear win: 2.0 vs 1.0 per recipient, small variance.
        let r = build(
            "x",
            &[
                row("holdout", 1000, 100, 1000.0, 3000.0),
                row("triggered", 1000, 200, 2000.0, 8000.0),
            ],
            None,
            &o,
            None,
        )
        .expect("report");
        let c = &r.analysis.as_ref().expect("analysis").comparisons[0];
        let v = verdict(c, 0.05);
        assert!(v.starts_with("<strong>triggered beats holdout</strong> by 1.00 per recipient (+100.00%), 95% CI ["), "{v}");
        // Reversed: worse.
        let r = build(
            "x",
            &[
                row("holdout", 1000, 200, 2000.0, 8000.0),
                row("triggered", 1000, 100, 1000.0, 3000.0),
            ],
            None,
            &o,
            None,
        )
        .expect("report");
        let v = verdict(&r.analysis.as_ref().expect("analysis").comparisons[0], 0.05);
        assert!(
            v.starts_with("<strong>triggered does worse than holdout</strong> by 1.00"),
            "{v}"
        );
        // Tiny and noisy: nothing yet.
        let r = build(
            "x",
            &[
                row("holdout", 10, 1, 10.0, 100.0),
                row("triggered", 10, 1, 12.0, 144.0),
            ],
            None,
            &o,
            None,
        )
        .expect("report");
        let v = verdict(&r.analysis.as_ref().expect("analysis").comparisons[0], 0.05);
        assert!(v.starts_with("<strong>No significant difference yet</strong> between triggered and holdout: +0.20 per recipient"), "{v}");
    }

    #[test]
    fn report_page_escapes_and_carries_the_numbers() {
        let r = build(
            "x<y>",
            &[
                row("holdout", 100, 10, 100.0, 1000.0),
                row("triggered", 300, 60, 900.0, 9000.0),
            ],
            None,
            &ReportOptions::default(),
            None,
        )
        .expect("report");
        let q: BTreeMap<String, String> = [("window".to_string(), "3d & <b>".to_string())].into();
        let html = report_page(&r, &q);
        assert!(html.contains("<code>x&lt;y&gt;</code>"), "{html}");
        assert!(!html.contains("<b>") && !html.contains("x<y>"));
        assert!(
            html.contains("/api/experiments/x%3Cy%3E?window=3d%20%26%20%3Cb%3E"),
            "{html}"
        );
        assert!(!html.contains("<script"));
        // One row per arm, with the exact values.
        assert!(html.contains(r#"<tr data-arm="triggered"><td>triggered</td><td class="num" data-col="recipients" data-value="300">300</td>"#), "{html}");
        assert!(html.contains(r#"data-col="revenue_per_recipient" data-value="3">3.00</td>"#));
        assert!(html.contains("class=\"chart ci-chart\""));
        // No rule file: no SRM line, and the note says why.
        assert!(!html.contains("srm-arms") && html.contains("configured split unknown"));
        let e = error_page(404, "no experiment named `<x>`", &["a b".into()]);
        assert!(
            e.contains("&lt;x&gt;") && e.contains("href=\"/experiments/a%20b\""),
            "{e}"
        );
    }
}

/// A day number (days since 1970-01-01) of a `YYYY-MM-DD` date. The dates
/// are the reports' own (`rfc3339` of a day number), so `None` cannot
/// happen in practice; were it to, the point is left out of the chart only,
/// and its row in the table beside the chart still shows it.
fn day_number(date: &str) -> Option<i64> {
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    Some((day - chrono::NaiveDate::default()).num_days())
}

fn date_of(d: i64) -> String {
    (chrono::NaiveDate::default() + chrono::Days::new(d.max(0) as u64))
        .format("%Y-%m-%d")
        .to_string()
}

/// `+1.23 [0.40, 2.06]` of an estimate and interval.
fn interval_text(
    estimate: f64,
    ci: [f64; 2],
    signed: fn(f64) -> String,
    fmt: fn(f64) -> String,
) -> String {
    format!("{} [{}, {}]", signed(estimate), fmt(ci[0]), fmt(ci[1]))
}

/// The formatters of a pooled effect: percent for relative lifts and
/// conversion, money for absolute revenue.
fn formats(metric: &str, scale: &str) -> (fn(f64) -> String, fn(f64) -> String) {
    match (metric, scale) {
        ("revenue_per_recipient", "absolute") => (money, signed_money),
        _ => (pct, signed_pct),
    }
}

fn metric_label(metric: &str, scale: &str) -> String {
    let m = if metric == "conversion" {
        "conversion"
    } else {
        "revenue per recipient"
    };
    if scale == "relative" {
        format!("{m}, relative")
    } else {
        m.to_string()
    }
}

/// The headline: triggered against scheduled, and what marketing earned.
fn program_verdict(p: &Program) -> String {
    let l = level(p.options.alpha);
    let mut items = Vec::new();
    for metric in ["revenue_per_recipient", "conversion"] {
        let Some(c) = p.pooled.iter().find(|c| {
            c.control == "scheduled"
                && c.treatment == "triggered"
                && c.metric == metric
                && c.scale == "relative"
        }) else {
            continue;
        };
        if let Some(pool) = &c.pooled {
            // The random-effects estimate: the fixed one when the rules
            // agree, honestly wider when they do not.
            let e = &pool.random;
            let word = if e.p_value < p.options.alpha && e.estimate > 0.0 {
                "<strong>Triggered beats scheduled</strong>"
            } else if e.p_value < p.options.alpha {
                "<strong>Triggered does worse than scheduled</strong>"
            } else {
                "<strong>No significant difference yet</strong> between triggered and scheduled"
            };
            items.push(format!(
                "{word} on {}: {} ({l} CI [{}, {}], p = {}), pooled over {} rule{}.",
                metric_label(metric, "absolute"),
                signed_pct(e.estimate),
                signed_pct(e.ci[0]),
                signed_pct(e.ci[1]),
                pval(e.p_value),
                pool.studies,
                if pool.studies == 1 { "" } else { "s" }
            ));
        }
    }
    for t in &p.incremental.totals {
        if t.rules == 0 || t.arm == "all" {
            continue;
        }
        let per = match (t.per_message, t.per_message_ci) {
            (Some(m), Some(ci)) => format!(
                "; {} per message sent [{}, {}]",
                signed_money(m),
                money(ci[0]),
                money(ci[1])
            ),
            _ => String::new(),
        };
        items.push(format!(
            "The <strong>{}</strong> arms earned {} over the holdout ({l} CI [{}, {}]){per}.",
            esc(&t.arm),
            signed_money(t.incremental_revenue),
            money(t.ci[0]),
            money(t.ci[1]),
        ));
    }
    if let (Some(v), Some(ci)) = (
        p.global_control.incremental_revenue,
        p.global_control.incremental_revenue_ci,
    ) {
        items.push(format!(
            "Against the global control group, marketing as a whole earned {} ({l} CI [{}, {}]).",
            signed_money(v),
            money(ci[0]),
            money(ci[1])
        ));
    }
    if items.is_empty() {
        return String::new();
    }
    format!(
        "<ul class=\"verdict\">{}</ul>",
        items
            .iter()
            .map(|i| format!("<li>{i}</li>"))
            .collect::<String>()
    )
}

fn pooled_section(p: &Program) -> String {
    let l = level(p.options.alpha);
    let mut b = format!(
        "<h2>Pooled across rules</h2><p class=\"small\">Each rule's own (unadjusted) effect, combined by inverse-variance weights. \
         <em>Fixed</em> assumes one common effect; <em>random</em> (DerSimonian–Laird) lets each rule have its own and widens the interval by τ². \
         Q and I² say how much the rules disagree beyond chance. {l} intervals.</p>\
         <table class=\"pooled\"><thead><tr><th>comparison</th><th>metric</th><th class=\"num\">rules</th>\
         <th class=\"num\">fixed [CI]</th><th class=\"num\">p</th><th class=\"num\">random [CI]</th>\
         <th class=\"num\">I²</th><th class=\"num\">Q p</th></tr></thead><tbody>"
    );
    for c in &p.pooled {
        let (fmt, signed) = formats(c.metric, c.scale);
        let key = format!("{}-{}-{}-{}", c.control, c.treatment, c.metric, c.scale);
        let cells = match &c.pooled {
            Some(pool) => {
                let h = pool.heterogeneity.as_ref();
                format!(
                    "{}{}{}{}{}{}",
                    int("studies", pool.studies as i64),
                    num(
                        "estimate",
                        pool.fixed.estimate,
                        &interval_text(pool.fixed.estimate, pool.fixed.ci, signed, fmt)
                    ),
                    num("p_value", pool.fixed.p_value, &pval(pool.fixed.p_value)),
                    num(
                        "random_estimate",
                        pool.random.estimate,
                        &interval_text(pool.random.estimate, pool.random.ci, signed, fmt)
                    ),
                    num_opt("i_squared", h.map(|h| h.i_squared), pct),
                    num_opt("q_p_value", h.map(|h| h.p_value), pval),
                )
            }
            None => "<td class=\"num\">0</td><td colspan=\"5\" class=\"small\">no rule compares these arms yet</td>".into(),
        };
        let _ = write!(
            b,
            "<tr data-pooled=\"{}\"><td>{} − {}</td><td>{}</td>{cells}</tr>",
            esc(&key),
            esc(&c.treatment),
            esc(&c.control),
            metric_label(c.metric, c.scale)
        );
    }
    b.push_str("</tbody></table>");
    // Forest plots: relative lifts, one per pair, revenue and conversion.
    b.push_str("<div class=\"charts\">");
    for (i, c) in p
        .pooled
        .iter()
        .filter(|c| c.scale == "relative" && c.pooled.is_some())
        .enumerate()
    {
        let Some(pool) = &c.pooled else { continue };
        let mut rows: Vec<CiRow> = c
            .rules
            .iter()
            .map(|e| CiRow {
                label: format!("{} ({:.0}%)", e.rule, e.weight * 100.0),
                estimate: e.estimate,
                ci: e.ci,
                colour: colour(i),
            })
            .collect();
        rows.push(CiRow {
            label: "◆ pooled, fixed".into(),
            estimate: pool.fixed.estimate,
            ci: pool.fixed.ci,
            colour: "#212529",
        });
        rows.push(CiRow {
            label: "◆ pooled, random".into(),
            estimate: pool.random.estimate,
            ci: pool.random.ci,
            colour: "#868e96",
        });
        let _ = write!(
            b,
            "<figure class=\"forest\" id=\"forest-{}\"><figcaption>{} − {}: {} ({l} CI)</figcaption>{}</figure>",
            esc(&format!("{}-{}-{}", c.control, c.treatment, c.metric)),
            esc(&c.treatment),
            esc(&c.control),
            metric_label(c.metric, c.scale),
            svg::ci_chart(&rows, signed_pct)
        );
    }
    b.push_str("</div>");
    b
}

fn incremental_section(p: &Program) -> String {
    let l = level(p.options.alpha);
    let inc = &p.incremental;
    let mut b = format!(
        "<h2>Incremental revenue</h2><p class=\"small\">Revenue per recipient over the holdout × the arm's recipients, with the lift's {l} interval; \
         per message: divided by the arm's <code>send</code> decisions. Totals add the rules (treated as independent).</p>\
         <table class=\"incremental\"><thead><tr><th>rule</th><th>arm</th><th class=\"num\">recipients</th><th class=\"num\">messages</th>\
         <th class=\"num\">lift / recipient</th><th class=\"num\">incremental revenue [CI]</th><th class=\"num\">per message [CI]</th></tr></thead><tbody>"
    );
    let per = |m: Option<f64>, ci: Option<[f64; 2]>| match (m, ci) {
        (Some(m), Some(ci)) => num("per_message", m, &interval_text(m, ci, signed_money, money)),
        _ => "<td class=\"num\" data-col=\"per_message\">–</td>".into(),
    };
    for r in &inc.rules {
        let _ = write!(
            b,
            "<tr data-increment=\"{}:{}\"><td><a href=\"/experiments/{}\">{}</a></td><td>{}</td>{}{}{}{}{}</tr>",
            esc(&r.rule),
            esc(&r.arm),
            encode(&r.rule),
            esc(&r.rule),
            esc(&r.arm),
            int("recipients", r.recipients),
            int("messages_sent", r.messages_sent),
            num(
                "lift_per_recipient",
                r.lift_per_recipient,
                &signed_money(r.lift_per_recipient)
            ),
            num(
                "incremental_revenue",
                r.incremental_revenue,
                &interval_text(r.incremental_revenue, r.ci, signed_money, money)
            ),
            per(r.per_message, r.per_message_ci),
        );
    }
    for t in &inc.totals {
        let _ = write!(
            b,
            "<tr data-total=\"{}\"><th>total ({} rules)</th><th>{}</th>{}{}<td></td>{}{}</tr>",
            esc(&t.arm),
            t.rules,
            esc(&t.arm),
            int("recipients", t.recipients),
            int("messages_sent", t.messages_sent),
            num(
                "incremental_revenue",
                t.incremental_revenue,
                &interval_text(t.incremental_revenue, t.ci, signed_money, money)
            ),
            per(t.per_message, t.per_message_ci),
        );
    }
    b.push_str("</tbody></table>");
    let series: Vec<Series> = inc
        .daily
        .iter()
        .enumerate()
        .map(|(i, s)| Series {
            label: format!("{} − holdout, cumulative", s.arm),
            colour: colour(i + 1),
            points: s
                .points
                .iter()
                .filter_map(|p| {
                    Some((
                        day_number(&p.date)?,
                        p.cumulative,
                        p.cumulative_ci[0],
                        p.cumulative_ci[1],
                    ))
                })
                .collect(),
        })
        .collect();
    if series.iter().any(|s| !s.points.is_empty()) {
        let _ = write!(
            b,
            "<figure id=\"incremental-daily\"><figcaption>Cumulative incremental revenue by day of assignment ({l} CI)</figcaption>{}\
             <p class=\"small\">Each point: everyone assigned up to that day, every rule's recipients × its lift so far; recent days include windows still open.</p></figure>",
            svg::line_chart(&series, date_of, signed_money)
        );
    }
    b
}

fn global_control_section(p: &Program) -> String {
    let g = &p.global_control;
    let mut b = format!(
        "<h2>Global control group</h2><p class=\"small\">Customers held out of all marketing ({}% configured) against everyone else who qualified for a marketing rule, \
         per customer over the report window from their first qualification.</p>",
        g.configured_percent
    );
    if g.groups.is_empty() {
        b.push_str("<p class=\"small\">No global control group in the data.</p>");
        return b;
    }
    b.push_str(
        "<table class=\"global-control\"><thead><tr><th>group</th><th class=\"num\">customers</th><th class=\"num\">conversions</th>\
         <th class=\"num\">conversion rate</th><th class=\"num\">revenue / customer</th></tr></thead><tbody>",
    );
    for line in &g.groups {
        let _ = write!(
            b,
            "<tr data-group=\"{}\"><td>{}</td>{}{}{}{}</tr>",
            esc(&line.group),
            esc(&line.group),
            int("customers", line.customers),
            int("conversions", line.conversions),
            num(
                "conversion_rate",
                line.conversion_rate,
                &pct(line.conversion_rate)
            ),
            num(
                "revenue_per_customer",
                line.revenue_per_customer,
                &money(line.revenue_per_customer)
            ),
        );
    }
    b.push_str("</tbody></table>");
    if let Some(a) = &g.analysis {
        let comparisons: Vec<&Comparison> = a.comparisons.iter().collect();
        b.push_str(&comparisons_table(&comparisons, p.options.alpha));
        if g.configured_percent > 0.0 {
            b.push_str(&if a.srm.flagged {
                format!(
                    "<p class=\"warning\">⚠ Sample-ratio mismatch: the group's share differs from the configured {}% (p = {}). Check that the percent was not changed.</p>",
                    g.configured_percent,
                    pval(a.srm.p_value)
                )
            } else {
                format!(
                    "<p class=\"ok\">Sample ratio matches the configured {}% (p = {}).</p>",
                    g.configured_percent,
                    pval(a.srm.p_value)
                )
            });
        }
    }
    b
}

fn timing_section(p: &Program) -> String {
    if p.timing.is_empty() {
        return String::new();
    }
    let l = level(p.options.alpha);
    let mut b = format!(
        "<h2>Timing</h2><p class=\"small\">Rules whose triggered variants differ in <code>delay</code>: each variant's lift over the holdout, by delay ({l} CI).</p>"
    );
    for t in &p.timing {
        let _ = write!(
            b,
            "<h3>{}</h3><table class=\"timing\" data-rule=\"{}\"><thead><tr><th>variant</th><th class=\"num\">delay</th><th class=\"num\">recipients</th>\
             <th class=\"num\">conversion lift</th><th class=\"num\">revenue / recipient lift</th></tr></thead><tbody>",
            esc(&t.rule),
            esc(&t.rule)
        );
        for pt in &t.points {
            let _ = write!(
                b,
                "<tr data-variant=\"{}\"><td>{}</td>{}{}<td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(&pt.variant),
                esc(&pt.variant),
                num(
                    "delay_secs",
                    pt.delay_secs as f64,
                    &format!("{} h", pt.delay_secs as f64 / 3600.0)
                ),
                int("recipients", pt.recipients),
                effect_text(&pt.conversion.relative, pct, signed_pct),
                effect_text(&pt.revenue.relative, pct, signed_pct),
            );
        }
        b.push_str("</tbody></table>");
        let curve =
            |label: &str, i: usize, pick: fn(&crate::program::TimingPoint) -> &Effect| Series {
                label: label.into(),
                colour: colour(i),
                points: t
                    .points
                    .iter()
                    .filter_map(|pt| {
                        let e = estimate(pick(pt))?;
                        Some(((pt.delay_secs / 60) as i64, e.estimate, e.ci[0], e.ci[1]))
                    })
                    .collect(),
            };
        let series = [
            curve("conversion lift over holdout", 0, |pt| {
                &pt.conversion.relative
            }),
            curve("revenue / recipient lift over holdout", 1, |pt| {
                &pt.revenue.relative
            }),
        ];
        if series.iter().any(|s| !s.points.is_empty()) {
            let _ = write!(
                b,
                "<figure class=\"timing-curve\"><figcaption>{}: lift by delay (hours)</figcaption>{}</figure>",
                esc(&t.rule),
                svg::line_chart(&series, |m| format!("{} h", m as f64 / 60.0), signed_pct)
            );
        }
    }
    b
}

/// `/program`: every rule together. `q` are the page's query parameters.
pub fn program_page(p: &Program, q: &BTreeMap<String, String>) -> String {
    let qs = query_string(q);
    let mut b = String::new();
    let _ = write!(
        b,
        "<header><p class=\"small\"><a href=\"/experiments{qs}\">← all experiments</a> · \
         <a href=\"/api/program{}\">JSON</a></p><h1>Program</h1>\
         <p class=\"meta\">{} rules · window {} d · data until {}</p></header>",
        esc(&qs),
        p.rules.len(),
        p.options.window_secs as f64 / 86_400.0,
        esc(p.data_until.as_deref().unwrap_or("–")),
    );
    b.push_str(&program_verdict(p));
    b.push_str(&pooled_section(p));
    b.push_str(&incremental_section(p));
    b.push_str(&global_control_section(p));
    b.push_str(&timing_section(p));
    if !p.notes.is_empty() {
        b.push_str("<h2>Notes</h2><ul class=\"notes\">");
        for n in &p.notes {
            let _ = write!(b, "<li>{}</li>", esc(n));
        }
        b.push_str("</ul>");
    }
    page("Program", &b)
}
