//! The two inline SVG charts of the report page: lifts with confidence
//! interval bars, and cumulative lift over time with its interval band.
//! Plain strings, no script: the page works offline and in any browser.
//! Every label passes through [`esc`].

use std::fmt::Write as _;

/// Series colours, in comparison order (colour-blind-safe enough and
/// distinct from the page's greys and blues).
pub const PALETTE: [&str; 6] = [
    "#d6336c", "#1c7ed6", "#2f9e44", "#f08c00", "#7048e8", "#0c8599",
];

/// The colour of the `i`th comparison.
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Text escaped for HTML and SVG (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value range that includes 0 and never has zero width, padded 5%.
fn domain(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi - lo < 1e-12 {
        return (lo - 1.0, hi + 1.0);
    }
    let pad = (hi - lo) * 0.05;
    (lo - pad, hi + pad)
}

/// Maps `v` in `[lo, hi]` onto `[a, b]` pixels.
fn scale(v: f64, (lo, hi): (f64, f64), a: f64, b: f64) -> f64 {
    a + (v - lo) / (hi - lo) * (b - a)
}

/// One bar of the interval chart.
pub struct CiRow {
    /// What it is, e.g. `triggered − holdout`.
    pub label: String,
    /// Point estimate.
    pub estimate: f64,
    /// Confidence interval.
    pub ci: [f64; 2],
    /// Stroke colour.
    pub colour: &'static str,
}

const WIDTH: f64 = 560.0;

/// Horizontal confidence-interval bars around a zero line; `fmt` formats
/// the axis values. `rows` must not be empty.
pub fn ci_chart(rows: &[CiRow], fmt: fn(f64) -> String) -> String {
    // Room on the left for the longest label ("triggered − scheduled, CUPED").
    let (left, right, row_h, top) = (230.0, WIDTH - 20.0, 30.0, 10.0);
    let height = top + row_h * rows.len() as f64 + 30.0;
    let d = domain(rows.iter().flat_map(|r| [r.ci[0], r.ci[1], r.estimate]));
    let x = |v: f64| scale(v, d, left, right);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="chart ci-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img">"##
    );
    let zero = x(0.0);
    let bottom = height - 25.0;
    let _ = write!(
        s,
        r##"<line x1="{zero:.1}" y1="{top}" x2="{zero:.1}" y2="{bottom}" stroke="#868e96" stroke-dasharray="4 3"/>"##
    );
    for (i, r) in rows.iter().enumerate() {
        let y = top + row_h * (i as f64 + 0.5);
        let (x0, x1, xe) = (x(r.ci[0]), x(r.ci[1]), x(r.estimate));
        let _ = write!(
            s,
            r##"<text x="{tx}" y="{ty:.1}" text-anchor="end" font-size="13">{label}</text><g stroke="{c}" stroke-width="3"><line x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}"/><line x1="{x0:.1}" y1="{ya:.1}" x2="{x0:.1}" y2="{yb:.1}"/><line x1="{x1:.1}" y1="{ya:.1}" x2="{x1:.1}" y2="{yb:.1}"/></g><circle cx="{xe:.1}" cy="{y:.1}" r="5" fill="{c}"/>"##,
            tx = left - 8.0,
            ty = y + 4.0,
            label = esc(&r.label),
            c = r.colour,
            ya = y - 7.0,
            yb = y + 7.0,
        );
    }
    axis_labels(&mut s, d, left, right, bottom + 16.0, fmt);
    s.push_str("</svg>");
    s
}

/// Min, 0 and max under the plot.
fn axis_labels(
    s: &mut String,
    d: (f64, f64),
    left: f64,
    right: f64,
    y: f64,
    fmt: fn(f64) -> String,
) {
    for (v, anchor) in [(d.0, "start"), (0.0, "middle"), (d.1, "end")] {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{y}" text-anchor="{anchor}" font-size="11" fill="#495057">{}</text>"##,
            scale(v, d, left, right),
            esc(&fmt(v))
        );
    }
}

/// One line of the cumulative chart.
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Stroke colour.
    pub colour: &'static str,
    /// (day number, estimate, ci low, ci high), by day.
    pub points: Vec<(i64, f64, f64, f64)>,
}

/// Lines over days with their interval bands, a zero line and a legend;
/// `date` labels a day number, `fmt` a value. Series without points are
/// left out of the plot but stay in the legend.
pub fn line_chart(series: &[Series], date: fn(i64) -> String, fmt: fn(f64) -> String) -> String {
    let (left, right, top, height) = (70.0, WIDTH - 20.0, 20.0 + 18.0 * series.len() as f64, 300.0);
    let bottom = height - 30.0;
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (d0, d1) = all().fold((i64::MAX, i64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let days = if d0 < d1 {
        (d0 as f64, d1 as f64)
    } else {
        (d0 as f64 - 1.0, d0 as f64 + 1.0)
    };
    let yd = domain(all().flat_map(|p| [p.1, p.2, p.3]));
    let x = |day: i64| scale(day as f64, days, left, right);
    // Larger values up.
    let y = |v: f64| scale(v, yd, bottom, top);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="chart cumulative-chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" role="img">"##
    );
    for (i, se) in series.iter().enumerate() {
        let ly = 14.0 + 18.0 * i as f64;
        let _ = write!(
            s,
            r##"<rect x="{left}" y="{:.1}" width="14" height="4" fill="{c}"/><text x="{:.1}" y="{ly:.1}" font-size="12">{}</text>"##,
            ly - 6.0,
            left + 20.0,
            esc(&se.label),
            c = se.colour
        );
    }
    let _ = write!(
        s,
        r##"<rect x="{left}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#ced4da"/><line x1="{left}" y1="{z:.1}" x2="{right}" y2="{z:.1}" stroke="#868e96" stroke-dasharray="4 3"/>"##,
        right - left,
        bottom - top,
        z = y(0.0)
    );
    for se in series.iter().filter(|s| !s.points.is_empty()) {
        let upper: Vec<String> = se
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.3)))
            .collect();
        let lower: Vec<String> = se
            .points
            .iter()
            .rev()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.2)))
            .collect();
        let line: Vec<String> = se
            .points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = write!(
            s,
            r##"<polygon points="{} {}" fill="{c}" fill-opacity="0.12" stroke="none"/><polyline points="{}" fill="none" stroke="{c}" stroke-width="3" stroke-linejoin="round"/>"##,
            upper.join(" "),
            lower.join(" "),
            line.join(" "),
            c = se.colour
        );
        for p in &se.points {
            let _ = write!(
                s,
                r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"##,
                x(p.0),
                y(p.1),
                se.colour
            );
        }
    }
    for (v, dy) in [(yd.1, 4.0), (0.0, 4.0), (yd.0, 0.0)] {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="#495057">{}</text>"##,
            left - 6.0,
            y(v) + dy,
            esc(&fmt(v))
        );
    }
    if d0 <= d1 {
        for (d, anchor) in [(d0, "start"), (d1, "end")] {
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}" font-size="11" fill="#495057">{}</text>"##,
                x(d),
                bottom + 16.0,
                esc(&date(d))
            );
        }
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(v: f64) -> String {
        format!("{v:.2}")
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn ci_bars_span_their_interval_around_zero() {
        let svg = ci_chart(
            &[CiRow {
                label: "b − <a>".into(),
                estimate: 1.0,
                ci: [-1.0, 3.0],
                colour: PALETTE[0],
            }],
            money,
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("b − &lt;a&gt;"), "{svg}");
        // Domain [-1, 3] padded by 0.2 each side onto x 230..540: zero at
        // 230 + 1.2/4.4·310.
        assert!(svg.contains(r#"x1="314.5""#), "{svg}");
        assert!(svg.contains(&format!(r#"stroke="{}""#, PALETTE[0])));
        assert!(svg.contains(">-1.20<") && svg.contains(">3.20<"), "{svg}");
    }

    #[test]
    fn lines_and_bands_per_series() {
        let svg = line_chart(
            &[
                Series {
                    label: "triggered − holdout".into(),
                    colour: PALETTE[0],
                    points: vec![(10, 1.0, -1.0, 3.0), (12, 2.0, 1.0, 3.0)],
                },
                Series {
                    label: "empty".into(),
                    colour: PALETTE[1],
                    points: vec![],
                },
            ],
            |d| format!("day {d}"),
            money,
        );
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert_eq!(svg.matches("<polygon").count(), 1);
        assert!(svg.contains(">day 10<") && svg.contains(">day 12<"));
        assert!(svg.contains(">empty<"), "the legend keeps it");
        // A single day still plots (no zero-width x domain).
        let one = line_chart(
            &[Series {
                label: "x".into(),
                colour: PALETTE[0],
                points: vec![(5, 1.0, 0.5, 1.5)],
            }],
            |d| d.to_string(),
            money,
        );
        assert!(one.contains("<circle") && !one.contains("NaN"), "{one}");
    }
}
