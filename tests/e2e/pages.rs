//! The report pages on a replayed lake: `/experiments` and
//! `/experiments/{rule}` fetched over HTTP and checked against the JSON
//! API (every number shown is the API's), then rendered by headless
//! Chromium (`KAIROS_TEST_CHROMIUM`, installed by `.ci/setup-test-env`)
//! and the screenshot checked: the charts' stroke colour and the tables'
//! header band with text in it must be on screen.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::report::replay;
use crate::support::{QUIET, Server, external};

const RULE: &str = "cart_abandonment";
/// The first comparison's colour (`kairos_report::svg::PALETTE[0]`): only
/// the charts use it.
const CHART_RGB: [u8; 3] = [0xd6, 0x33, 0x6c];
/// The tables' header background (`th` in `pages.rs`' CSS).
const TABLE_HEADER_RGB: [u8; 3] = [0xdb, 0xe4, 0xf0];

async fn fetch(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = reqwest::get(url).await.expect("GET");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.text().await.expect("body"))
}

/// The `<tr ...>` element whose opening tag contains `attr`.
fn row<'a>(html: &'a str, attr: &str) -> &'a str {
    let start = html
        .find(&format!("<tr {attr}>"))
        .unwrap_or_else(|| panic!("no <tr {attr}> in the page"));
    let end = html[start..].find("</tr>").expect("row ends") + start;
    &html[start..end]
}

/// The `data-value` of the cell `data-col="col"` in `row`.
fn cell(row: &str, col: &str) -> f64 {
    let at = row
        .find(&format!("data-col=\"{col}\" data-value=\""))
        .unwrap_or_else(|| panic!("no {col} value in {row}"));
    let rest = &row[at..];
    let v = rest.split("data-value=\"").nth(1).expect("value");
    v[..v.find('"').expect("quote")]
        .parse()
        .unwrap_or_else(|e| panic!("{col}: {e} in {row}"))
}

/// Equal up to the order DataFusion's parallel sums took (each request
/// runs its own query); counts are whole numbers and compare exactly.
fn same(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-9 * (1.0 + b.abs()),
        "{what}: page {a} vs API {b}"
    );
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// What the verdict must say for one comparison of the JSON report.
fn expected_verdict(c: &Value, alpha: f64) -> String {
    let cuped = &c["revenue_cuped"]["absolute"];
    let e = if cuped["status"] == "estimated" {
        cuped
    } else {
        &c["revenue"]["absolute"]
    };
    let (t, k) = (
        c["treatment"].as_str().expect("t"),
        c["control"].as_str().expect("c"),
    );
    if e["status"] != "estimated" {
        return format!("{t} vs {k}: not estimable yet");
    }
    let (est, p) = (f(&e["estimate"]), f(&e["p_value"]));
    let ci = format!("95% CI [{:.2}, {:.2}]", f(&e["ci"][0]), f(&e["ci"][1]));
    if p < alpha && est > 0.0 {
        format!("<strong>{t} beats {k}</strong> by {est:.2} per recipient|{ci}")
    } else if p < alpha {
        format!(
            "<strong>{t} does worse than {k}</strong> by {:.2} per recipient|{ci}",
            -est
        )
    } else {
        format!("<strong>No significant difference yet</strong> between {t} and {k}|{ci}")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_pages_match_the_api_and_render_in_chromium() {
    let data = tempfile::tempdir().expect("tempdir");
    replay(data.path());
    // No token: loopback clients (this test, Chromium) may read.
    let server = Server::start(
        data.path().to_str().expect("utf8"),
        &format!("{QUIET}[rules]\nenabled = false\n"),
    );

    // --- the rule's page against its JSON ---------------------------------
    let (status, _, json) = fetch(&server.url(&format!("/api/experiments/{RULE}"))).await;
    assert_eq!(status, 200, "{json}");
    let report: Value = serde_json::from_str(&json).expect("json");
    let page_url = server.url(&format!("/experiments/{RULE}"));
    let (status, headers, html) = fetch(&page_url).await;
    assert_eq!(status, 200, "{html}");
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html"),
        "{headers:?}"
    );
    assert!(
        headers["content-security-policy"]
            .to_str()
            .expect("ascii")
            .starts_with("default-src 'none'")
    );
    // Offline: nothing to fetch (the only URL is SVG's namespace name).
    assert!(!html.contains("<script") && !html.contains("<img") && !html.contains("<link"));
    assert_eq!(
        html.matches("http").count(),
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "an external reference in the page"
    );

    let arms = report["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), 3, "holdout, scheduled, triggered");
    for a in arms {
        let name = a["name"].as_str().expect("name");
        let r = row(&html, &format!("data-arm=\"{name}\""));
        for col in [
            "recipients",
            "messages_sent",
            "conversions",
            "conversion_rate",
            "revenue",
            "revenue_per_recipient",
        ] {
            same(cell(r, col), f(&a[col]), &format!("{name} {col}"));
        }
        let s = row(&html, &format!("data-stats=\"{name}\""));
        for col in ["n", "revenue_sum", "revenue_sum_squares", "covariate_sum"] {
            same(
                cell(s, col),
                f(&a["stats"][col]),
                &format!("{name} stats.{col}"),
            );
        }
        // Shown with two decimals.
        let rpr = cell(r, "revenue_per_recipient");
        assert!(r.contains(&format!(">{rpr:.2}</td>")), "{r}");
    }
    let alpha = f(&report["options"]["alpha"]);
    let comparisons = report["analysis"]["comparisons"]
        .as_array()
        .expect("comparisons");
    assert_eq!(comparisons.len(), 3);
    for c in comparisons {
        let key = format!(
            "{}/{}",
            c["control"].as_str().expect("c"),
            c["treatment"].as_str().expect("t")
        );
        let li_at = html
            .find(&format!("<li data-comparison=\"{key}\">"))
            .unwrap_or_else(|| panic!("no verdict for {key}"));
        let li = &html[li_at..li_at + html[li_at..].find("</li>").expect("li ends")];
        for part in expected_verdict(c, alpha).split('|') {
            assert!(
                li.contains(part),
                "verdict for {key}: want {part:?} in {li}"
            );
        }
        // Unadjusted beside CUPED, both the API's numbers.
        let r = row(
            &html,
            &format!("data-comparison=\"{key}\" data-metric=\"revenue\""),
        );
        assert_eq!(cell(r, "revenue"), f(&c["revenue"]["absolute"]["estimate"]));
        assert_eq!(
            cell(r, "revenue_cuped"),
            f(&c["revenue_cuped"]["absolute"]["estimate"])
        );
    }
    // The sample lake's split matches its rule: no warning, the check shown.
    assert_eq!(report["srm"]["flagged"], false);
    assert!(html.contains("id=\"srm-arms\"") && !html.contains("warning srm"));
    // Charts: CI bars (revenue and conversion), and the cumulative lift
    // with one line per comparison that has points.
    assert_eq!(html.matches("<svg class=\"chart ci-chart\"").count(), 2);
    assert_eq!(
        html.matches("<svg class=\"chart cumulative-chart\"")
            .count(),
        1
    );
    let series = report["cumulative"].as_array().expect("cumulative");
    assert_eq!(series.len(), 3, "one series per comparison");
    let with_points = series
        .iter()
        .filter(|s| !s["points"].as_array().expect("points").is_empty())
        .count();
    assert!(with_points >= 1, "{series:?}");
    assert_eq!(html.matches("<polyline").count(), with_points);
    // The last cumulative point is the whole comparison, unadjusted.
    let last = series[0]["points"]
        .as_array()
        .expect("points")
        .last()
        .expect("a point")
        .clone();
    assert_eq!(
        (
            series[0]["control"].as_str(),
            series[0]["treatment"].as_str()
        ),
        (Some("holdout"), Some("triggered"))
    );
    assert!(
        (f(&last["revenue"]["absolute"]["estimate"])
            - f(&comparisons[0]["revenue"]["absolute"]["estimate"]))
        .abs()
            < 1e-6
    );

    // --- the overview against /api/experiments ----------------------------
    let (status, _, json) = fetch(&server.url("/api/experiments")).await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&json).expect("json");
    let (status, _, overview) = fetch(&server.url("/experiments")).await;
    assert_eq!(status, 200, "{overview}");
    let exps = list["experiments"].as_array().expect("experiments");
    let mut corrected = 0;
    for e in exps {
        let rule = e["rule"].as_str().expect("rule");
        let r = row(&overview, &format!("data-rule=\"{rule}\""));
        assert!(r.contains(&format!("href=\"/experiments/{rule}\"")), "{r}");
        assert_eq!(cell(r, "recipients"), f(&e["recipients"]));
        if let Some(p) = e["comparison"]["p_value_holm"].as_f64() {
            // p-values amplify the sums' last-bit differences a little.
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * (1e-12 + b.abs());
            assert!(close(cell(r, "p_value_holm"), p), "{rule}");
            assert!(close(
                cell(r, "p_value_bh"),
                f(&e["comparison"]["p_value_bh"])
            ));
            assert!(close(cell(r, "p_value"), f(&e["comparison"]["p_value"])));
            corrected += 1;
        }
    }
    // In the sample lake only cart_abandonment has an estimable headline.
    assert!(corrected >= 1, "no corrected p-value on the page: {list}");

    // --- errors are pages ---------------------------------------------------
    let (status, headers, body) = fetch(&server.url("/experiments/no_such_rule")).await;
    assert_eq!(status, 404);
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    assert!(
        body.contains(&format!("href=\"/experiments/{RULE}\"")),
        "{body}"
    );
    let (status, _, body) = fetch(&format!("{page_url}?window=soon")).await;
    assert_eq!(status, 400);
    assert!(body.contains("window: "), "{body}");

    // --- the program view against /api/program --------------------------
    let (status, _, json) = fetch(&server.url("/api/program")).await;
    assert_eq!(status, 200, "{json}");
    let program: Value = serde_json::from_str(&json).expect("json");
    let program_url = server.url("/program");
    let (status, _, program_html) = fetch(&program_url).await;
    assert_eq!(status, 200, "{program_html}");
    let mut pooled_rows = 0;
    for c in program["pooled"].as_array().expect("pooled") {
        let key = ["control", "treatment", "metric", "scale"]
            .map(|k| c[k].as_str().expect("string").to_string())
            .join("-");
        let r = row(&program_html, &format!("data-pooled=\"{key}\""));
        if c["pooled"].is_object() {
            same(
                cell(r, "estimate"),
                f(&c["pooled"]["fixed"]["estimate"]),
                &key,
            );
            same(
                cell(r, "p_value"),
                f(&c["pooled"]["fixed"]["p_value"]),
                &key,
            );
            pooled_rows += 1;
        }
    }
    assert!(
        pooled_rows >= 4,
        "{pooled_rows} pooled effects on the sample lake: {json}"
    );
    for t in program["incremental"]["totals"].as_array().expect("totals") {
        let arm = t["arm"].as_str().expect("arm");
        let r = row(&program_html, &format!("data-total=\"{arm}\""));
        same(
            cell(r, "incremental_revenue"),
            f(&t["incremental_revenue"]),
            arm,
        );
    }
    assert!(
        program_html.contains("<svg class=\"chart ci-chart\""),
        "forest plots missing"
    );
    assert!(
        program_html.contains("id=\"incremental-daily\""),
        "cumulative chart missing"
    );

    // --- what a browser shows -------------------------------------------
    let Some(chromium) = external("KAIROS_TEST_CHROMIUM") else {
        return;
    };
    // The program page: its forest plots draw in the palette's first colour.
    let program_shot =
        std::env::temp_dir().join(format!("kairos-program-{}.png", std::process::id()));
    screenshot(&chromium, &program_url, &program_shot);
    let (w, _, rgb) = decode(&program_shot);
    let forest_px = rgb
        .chunks(3)
        .filter(|p| {
            p.iter()
                .zip(CHART_RGB)
                .all(|(a, b)| (i32::from(*a) - i32::from(b)).abs() <= 10)
        })
        .count();
    assert!(
        forest_px >= 300,
        "only {forest_px} pixels of the forest plot colour in {} ({w} wide)",
        program_shot.display()
    );
    let _ = std::fs::remove_file(&program_shot);
    let shot = std::env::temp_dir().join(format!("kairos-pages-{}.png", std::process::id()));
    screenshot(&chromium, &page_url, &shot);
    let (w, h, rgb) = decode(&shot);
    assert_eq!((w, h), (1200, 1600));
    let px = |x: usize, y: usize| &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
    let near = |p: &[u8], c: [u8; 3], tol: i32| {
        p.iter()
            .zip(c)
            .all(|(a, b)| (i32::from(*a) - i32::from(b)).abs() <= tol)
    };
    // The charts: the first comparison's bars, dots and line.
    let chart_px = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .filter(|&(x, y)| near(px(x, y), CHART_RGB, 10))
        .count();
    assert!(
        chart_px >= 300,
        "only {chart_px} pixels of the chart colour in {}: chart missing?",
        shot.display()
    );
    // The tables: rows of the header background, with dark text on them,
    // and text in the rows below the first header.
    let header_rows: Vec<usize> = (0..h)
        .filter(|&y| {
            (0..w)
                .filter(|&x| near(px(x, y), TABLE_HEADER_RGB, 3))
                .count()
                >= 200
        })
        .collect();
    assert!(
        header_rows.len() >= 10,
        "no table header band in {} ({} rows)",
        shot.display(),
        header_rows.len()
    );
    let dark = |y: usize| {
        (0..w)
            .filter(|&x| px(x, y).iter().all(|c| *c < 110))
            .count()
    };
    let header_text: usize = header_rows.iter().map(|&y| dark(y)).sum();
    assert!(
        header_text >= 100,
        "no text in the table header: {}",
        shot.display()
    );
    let first = header_rows[0];
    let below: usize = (first + 30..(first + 130).min(h)).map(dark).sum();
    assert!(
        below >= 300,
        "no text in the table body: {}",
        shot.display()
    );
    eprintln!(
        "screenshot {}: {chart_px} chart pixels, {} header rows, {header_text} header text pixels",
        shot.display(),
        header_rows.len()
    );
    let _ = std::fs::remove_file(&shot);
}

/// Headless Chromium's screenshot of `url` into `out`, within a minute.
fn screenshot(chromium: &str, url: &str, out: &Path) {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", out.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {chromium}: {e}; run .ci/setup-test-env"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium took over 60 s on {url}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(
        status.success() && out.exists(),
        "chromium failed ({status}): {err}"
    );
}

/// Width, height and RGB bytes of a PNG.
fn decode(path: &PathBuf) -> (usize, usize, Vec<u8>) {
    let bytes = std::fs::read(path).expect("read screenshot");
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let (w, h) = (info.width as usize, info.height as usize);
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected screenshot colour type {other:?}"),
    };
    let rgb = buf[..w * h * channels]
        .chunks(channels)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect();
    (w, h, rgb)
}
