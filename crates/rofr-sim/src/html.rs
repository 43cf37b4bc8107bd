//! The self-contained HTML report: no scripts, no network, charts as inline SVG. Every
//! figure it prints comes from the [`Report`] written beside it as JSON.

use std::fmt::Write;

use crate::report::{dollars, thousands, Report, StrategyReport};

const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
const DELAY_COLOURS: [&str; 7] = [
    "#2e7d32", "#9ccc65", "#fdd835", "#ffb300", "#fb8c00", "#e53935", "#8e0000",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `text` with `code` spans for words in backquotes.
fn words(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(text).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            out.push_str(part);
        }
    }
    out
}

/// A round step for an axis reaching `max` in about five ticks.
fn nice_step(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn short(value: f64) -> String {
    let abs = value.abs();
    if abs >= 1e9 {
        format!("{:.1}B", value / 1e9)
    } else if abs >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if abs >= 1e3 {
        format!("{:.0}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

struct Line<'a> {
    name: &'a str,
    colour: &'a str,
    values: &'a [f64],
    dashed: bool,
}

const W: f64 = 720.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 34.0;

fn x_at(i: usize, n: usize) -> f64 {
    let span = W - LEFT - RIGHT;
    LEFT + if n <= 1 {
        0.0
    } else {
        span * i as f64 / (n - 1) as f64
    }
}

fn x_axis(svg: &mut String, steps: &[String]) {
    let n = steps.len();
    let ticks = 6.min(n);
    for t in 0..ticks {
        let i = if ticks <= 1 {
            0
        } else {
            t * (n - 1) / (ticks - 1)
        };
        let x = x_at(i, n);
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 4.0,
            H - BOTTOM + 18.0,
            escape(&steps[i])
        );
    }
}

/// A line chart over the steps, with a legend at the right.
fn line_chart(title: &str, unit: &str, steps: &[String], lines: &[Line<'_>]) -> String {
    let max = lines
        .iter()
        .flat_map(|l| l.values.iter().copied())
        .fold(0.0, f64::max);
    let step = nice_step(max);
    let top = (max / step).ceil().max(1.0) * step;
    let y_at = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v / top);
    let mut svg = format!(
        r#"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" role="img" aria-label="{}">"#,
        escape(title),
        escape(title)
    );
    let mut v = 0.0;
    while v <= top + step / 2.0 {
        let y = y_at(v);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(v),
            escape(unit)
        );
        v += step;
    }
    x_axis(&mut svg, steps);
    for (k, line) in lines.iter().enumerate() {
        let points: Vec<String> = line
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{:.1},{:.1}", x_at(i, line.values.len()), y_at(v)))
            .collect();
        let dash = if line.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"><title>{}</title></polyline>"#,
            line.colour,
            points.join(" "),
            escape(line.name)
        );
        let y = TOP + 14.0 + 18.0 * k as f64;
        let _ = write!(
            svg,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
            W - RIGHT + 12.0,
            W - RIGHT + 32.0,
            line.colour,
            W - RIGHT + 38.0,
            y + 4.0,
            escape(line.name)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// Provider shares as stacked areas (left axis, 0–100%) with the HHI as a line (right
/// axis, 0–10,000) and the alert threshold dashed.
fn shares_chart(report: &Report, strategy: &StrategyReport, alert: Option<f64>) -> String {
    let steps = &report.steps;
    let n = steps.len();
    let y_share = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v);
    let y_hhi = |v: f64| TOP + (H - TOP - BOTTOM) * (1.0 - v / 10_000.0);
    let title = format!("`{}`: provider shares and HHI over time", strategy.strategy);
    let mut svg = format!(
        r#"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {W} {H}" role="img" aria-label="{}">"#,
        words(&title),
        escape(&title.replace('`', ""))
    );
    for t in 0..=4 {
        let v = t as f64 / 4.0;
        let y = y_share(v);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{:.0}%</text><text x="{:.1}" y="{:.1}" class="tick">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            v * 100.0,
            W - RIGHT + 4.0,
            y + 4.0,
            thousands(v * 10_000.0)
        );
    }
    x_axis(&mut svg, steps);
    let mut below = vec![0.0; n];
    for (k, provider) in report.providers.iter().enumerate() {
        let Some(values) = strategy.series.shares.get(provider) else {
            continue;
        };
        let above: Vec<f64> = below.iter().zip(values).map(|(b, v)| b + v).collect();
        let mut points: Vec<String> = (0..n)
            .map(|i| format!("{:.1},{:.1}", x_at(i, n), y_share(above[i])))
            .collect();
        points.extend(
            (0..n)
                .rev()
                .map(|i| format!("{:.1},{:.1}", x_at(i, n), y_share(below[i]))),
        );
        let colour = PALETTE[k % PALETTE.len()];
        let last = values.last().copied().unwrap_or(0.0);
        let _ = write!(
            svg,
            r#"<polygon fill="{colour}" fill-opacity="0.55" stroke="none" points="{}"><title>{} — {:.0}% at the end</title></polygon>"#,
            points.join(" "),
            escape(provider),
            last * 100.0
        );
        below = above;
    }
    let hhi: Vec<String> = strategy
        .series
        .hhi
        .iter()
        .enumerate()
        .map(|(i, &v)| format!("{:.1},{:.1}", x_at(i, n), y_hhi(v)))
        .collect();
    let _ = write!(
        svg,
        r##"<polyline fill="none" stroke="#111" stroke-width="2.5" points="{}"><title>HHI</title></polyline>"##,
        hhi.join(" ")
    );
    if let Some(alert) = alert {
        let y = y_hhi(alert);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#d62728" stroke-dasharray="6 4"><title>HHI alert {alert:.0}</title></line>"##,
            W - RIGHT
        );
    }
    // Legend: providers, then the HHI line.
    let mut y = TOP + 40.0;
    for (k, provider) in report.providers.iter().enumerate() {
        let _ = write!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="12" height="10" fill="{}" fill-opacity="0.55"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
            W - RIGHT + 50.0,
            y - 8.0,
            PALETTE[k % PALETTE.len()],
            W - RIGHT + 68.0,
            y + 1.0,
            escape(provider)
        );
        y += 16.0;
    }
    let _ = write!(
        svg,
        r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#111" stroke-width="2.5"/><text x="{:.1}" y="{:.1}" class="legend">HHI</text>"##,
        W - RIGHT + 50.0,
        W - RIGHT + 62.0,
        W - RIGHT + 68.0,
        y + 4.0
    );
    if let Some(alert) = alert {
        let y = y + 18.0;
        let _ = write!(
            svg,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#d62728" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" class="legend">HHI alert {}</text>"##,
            W - RIGHT + 50.0,
            W - RIGHT + 62.0,
            W - RIGHT + 68.0,
            y + 4.0,
            thousands(alert)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

/// One stacked bar per strategy: the share of launches in each delay band.
fn delay_chart(report: &Report) -> String {
    let rows = report.strategies.len();
    let height = 40.0 + 30.0 * rows as f64 + 40.0;
    let left = 110.0;
    let width = W - left - 20.0;
    let mut svg = format!(
        r#"<figure><figcaption>How late launches start: share of launches in each band</figcaption><svg viewBox="0 0 {W} {height}" role="img" aria-label="Launch delay distribution per strategy">"#
    );
    for (r, s) in report.strategies.iter().enumerate() {
        let y = 20.0 + 30.0 * r as f64;
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" class="legend">{}</text>"#,
            left - 8.0,
            y + 15.0,
            escape(&s.strategy)
        );
        let mut x = left;
        for (b, bin) in s.delay_histogram.iter().enumerate() {
            let w = width * bin.share;
            if w > 0.0 {
                let _ = write!(
                    svg,
                    r#"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="20" fill="{}"><title>{}: {} {:.1}% of launches</title></rect>"#,
                    DELAY_COLOURS[b % DELAY_COLOURS.len()],
                    escape(&s.strategy),
                    escape(&bin.label),
                    bin.share * 100.0
                );
            }
            x += w;
        }
    }
    let legend_y = 20.0 + 30.0 * rows as f64 + 14.0;
    let mut x = left;
    if let Some(first) = report.strategies.first() {
        for (b, bin) in first.delay_histogram.iter().enumerate() {
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{:.1}" width="12" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" class="legend">{}</text>"#,
                legend_y - 9.0,
                DELAY_COLOURS[b % DELAY_COLOURS.len()],
                x + 16.0,
                legend_y,
                escape(&bin.label)
            );
            x += 16.0 + 6.2 * bin.label.chars().count() as f64 + 12.0;
        }
    }
    svg.push_str("</svg></figure>");
    svg
}

fn figures_table(report: &Report) -> String {
    let mut html = String::from(
        "<table><thead><tr><th>strategy</th><th>delay mean (days)</th><th>p50</th><th>p90</th><th>on time</th><th>unmet GPU-hours</th><th>total cost</th><th>$ / GPU-hour</th><th>holder share</th><th>HHI</th><th>lapses</th><th>re-offers</th></tr></thead><tbody>",
    );
    for s in &report.strategies {
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.1}%</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.1}%</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            escape(&s.strategy),
            s.launch_delay_days.mean,
            s.launch_delay_days.p50,
            s.launch_delay_days.p90,
            s.on_time_share * 100.0,
            thousands(s.unmet_gpu_hours),
            dollars(s.total_cost),
            s.cost_per_gpu_hour,
            s.holder_share * 100.0,
            s.final_hhi,
            s.lapses,
            s.reoffers,
        );
    }
    html.push_str("</tbody></table>");
    html
}

/// One line per strategy through the series `pick` chooses; `exclusive` dashed.
fn strategy_lines<'r>(
    report: &'r Report,
    pick: impl Fn(&'r StrategyReport) -> &'r [f64],
) -> Vec<Line<'r>> {
    report
        .strategies
        .iter()
        .enumerate()
        .map(|(k, s)| Line {
            name: &s.strategy,
            colour: PALETTE[k % PALETTE.len()],
            values: pick(s),
            dashed: s.strategy == "exclusive",
        })
        .collect()
}

/// The report as one HTML page.
pub fn render_html(report: &Report, hhi_alert: Option<f64>) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} — rofr simulation</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; color: #1a1a1a; max-width: 980px; margin: 2rem auto; padding: 0 1rem; }}
h1 {{ font-size: 1.6rem; margin-bottom: 0.2rem; }} h2 {{ margin-top: 2.2rem; font-size: 1.2rem; border-bottom: 1px solid #ddd; }}
.meta {{ color: #555; }} figure {{ margin: 1rem 0; }} figcaption {{ font-weight: 600; margin-bottom: 0.3rem; }}
svg {{ width: 100%; height: auto; background: #fff; }} .tick {{ font-size: 11px; fill: #555; }} .legend {{ font-size: 12px; fill: #222; }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }} th, td {{ border-bottom: 1px solid #e3e3e3; padding: 4px 6px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }} code {{ background: #f3f3f3; padding: 0 3px; border-radius: 3px; }}
ul.summary li {{ margin: 0.35rem 0; }} .grid {{ display: grid; grid-template-columns: 1fr; gap: 0.5rem; }}
</style></head><body>
<h1>{title}</h1>
<p class="meta">Deal “{deal}” · {start} to {end} · steps of {step} days · {runs} runs per strategy · seed {seed}{holder}</p>
<h2>What the runs say</h2><ul class="summary">"#,
        title = escape(&report.scenario),
        deal = escape(&report.deal),
        start = report.start,
        end = report.end,
        step = report.step_days,
        runs = report.runs,
        seed = report.seed,
        holder = report
            .holder
            .as_ref()
            .map(|h| format!(" · first-refusal holder {}", escape(h)))
            .unwrap_or_default(),
    );
    for line in &report.summary {
        let _ = write!(html, "<li>{}</li>", words(line));
    }
    html.push_str("</ul><h2>Figures</h2>");
    html.push_str(&figures_table(report));
    html.push_str("<p class=\"meta\">Means over runs. Delay: days between a launch's date and the latest start among the GPUs it got; a launch still short at the horizon's end counts as late until then. Unmet: GPU-hours of demand never confirmed.</p>");
    html.push_str("<h2>Launch delays</h2>");
    html.push_str(&delay_chart(report));
    html.push_str("<h2>Provider shares and concentration</h2><div class=\"grid\">");
    for s in &report.strategies {
        html.push_str(&shares_chart(report, s, hhi_alert));
    }
    html.push_str("</div><h2>Cost over time</h2>");
    let cost_lines = strategy_lines(report, |s| &s.series.cumulative_cost);
    html.push_str(&line_chart(
        "Cumulative spend confirmed ($)",
        "",
        &report.steps,
        &cost_lines,
    ));
    html.push_str("<h2>Unmet demand over time</h2>");
    let unmet_lines = strategy_lines(report, |s| &s.series.unmet_gpu_hours);
    html.push_str(&line_chart(
        "GPU-hours due and not yet confirmed",
        "",
        &report.steps,
        &unmet_lines,
    ));
    html.push_str("<p class=\"meta\">Made by <code>rofr simulate</code>; the same figures are in the JSON result.</p></body></html>\n");
    html
}
