//! The report as one self-contained HTML page: inline CSS and SVG, no script, nothing
//! fetched, laid out to print. Each figure shows the entries it came from (the first
//! few on the page, all of them in the JSON).

use std::fmt::Write as _;

use crate::figures::{Figure, SharePoint};
use crate::Report;

/// Entry indexes shown beside a figure; the JSON has them all.
const SHOWN_ENTRIES: usize = 40;
/// Needs listed in the first-refusal table; the JSON has them all.
const SHOWN_NEEDS: usize = 500;

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.2}")
    }
}

fn entries(list: &[u64]) -> String {
    if list.is_empty() {
        return "<span class=\"none\">no entries</span>".into();
    }
    let mut out = String::from("<details><summary>");
    let _ = write!(
        out,
        "{} entr{}",
        list.len(),
        if list.len() == 1 { "y" } else { "ies" }
    );
    out.push_str("</summary><span class=\"idx\">");
    for i in list.iter().take(SHOWN_ENTRIES) {
        let _ = write!(out, "#{i} ");
    }
    if list.len() > SHOWN_ENTRIES {
        let _ = write!(
            out,
            "… and {} more (report.json)",
            list.len() - SHOWN_ENTRIES
        );
    }
    out.push_str("</span></details>");
    out
}

/// A figure's row; `key` is its path in report.json, on the row as `data-figure`.
fn row(out: &mut String, label: &str, key: &str, value: String, figure: &Figure) {
    let _ = write!(
        out,
        "<tr data-figure=\"{}\" data-value=\"{}\"><th>{}</th><td class=\"v\">{}</td><td>{}</td></tr>",
        esc(key),
        figure.value,
        esc(label),
        value,
        entries(&figure.entries)
    );
}

fn count(out: &mut String, label: &str, key: &str, figure: &Figure) {
    row(out, label, key, number(figure.value), figure);
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
];

/// Shares over time (one line a provider, percent) and the HHI on a second chart.
fn share_chart(timeline: &[SharePoint], caps: &[(String, f64)], alert: Option<f64>) -> String {
    if timeline.is_empty() {
        return "<p class=\"none\">No GPU-hours were awarded in the period.</p>".into();
    }
    let (w, h, pad) = (640.0, 220.0, 36.0);
    let n = timeline.len().max(2) as f64 - 1.0;
    let x = |i: usize| pad + (w - 2.0 * pad) * (i as f64 / n);
    let y = |v: f64, top: f64| h - pad - (h - 2.0 * pad) * (v / top).clamp(0.0, 1.0);
    let mut providers: Vec<&String> = timeline.iter().flat_map(|p| p.shares.keys()).collect();
    providers.sort();
    providers.dedup();
    let mut svg = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"Shares of GPU-hours over time\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    let _ = write!(
        svg,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>",
        h - pad,
        w - pad,
        h - pad
    );
    for pct in [0.0, 25.0, 50.0, 75.0, 100.0] {
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" font-size=\"10\">{pct}%</text>",
            y(pct, 100.0) + 3.0
        );
    }
    for (k, provider) in providers.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let points: Vec<String> = timeline
            .iter()
            .enumerate()
            .map(|(i, p)| {
                format!(
                    "{:.1},{:.1}",
                    x(i),
                    y(*p.shares.get(*provider).unwrap_or(&0.0), 100.0)
                )
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            points.join(" ")
        );
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\" fill=\"{color}\">{}</text>",
            pad + 90.0 * k as f64,
            14,
            esc(provider)
        );
        if let Some((_, cap)) = caps.iter().find(|(p, _)| p == *provider) {
            let _ = write!(svg, "<line x1=\"{pad}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"{color}\" stroke-dasharray=\"4 3\"><title>cap on {2}: {3}%</title></line>", y(*cap, 100.0), w - pad, esc(provider), number(*cap));
        }
    }
    let _ = write!(svg, "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">{}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text>", h - 8.0, timeline[0].day, w - pad, h - 8.0, timeline[timeline.len() - 1].day);
    svg.push_str("</svg>");
    // HHI, 0–10,000, with the alert line.
    let top = 10_000.0;
    let points: Vec<String> = timeline
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.hhi, top)))
        .collect();
    let _ = write!(svg, "<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"HHI over time\" xmlns=\"http://www.w3.org/2000/svg\"><line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>", h - pad, w - pad, h - pad);
    for v in [0.0, 2500.0, 5000.0, 7500.0, 10000.0] {
        let _ = write!(
            svg,
            "<text x=\"2\" y=\"{:.1}\" font-size=\"10\">{}</text>",
            y(v, top) + 3.0,
            v as i64
        );
    }
    let _ = write!(svg, "<polyline fill=\"none\" stroke=\"#333\" stroke-width=\"2\" points=\"{}\"/><text x=\"{pad}\" y=\"14\" font-size=\"11\">HHI</text>", points.join(" "));
    if let Some(alert) = alert {
        let _ = write!(svg, "<line x1=\"{pad}\" y1=\"{0:.1}\" x2=\"{1}\" y2=\"{0:.1}\" stroke=\"#d62728\" stroke-dasharray=\"5 3\"/><text x=\"{1}\" y=\"{2:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#d62728\">alert {3}</text>", y(alert, top), w - pad, y(alert, top) - 3.0, number(alert));
    }
    svg.push_str("</svg>");
    svg
}

/// Bars of GPU-hours still owed against each commitment, day by day.
fn burn_chart(days: &[(String, f64)], min: f64) -> String {
    if days.is_empty() || min <= 0.0 {
        return String::new();
    }
    let (w, h, pad) = (640.0, 120.0, 24.0);
    let step = (w - 2.0 * pad) / days.len() as f64;
    let mut svg = format!("<svg class=\"chart\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"Commitment burn-down\" xmlns=\"http://www.w3.org/2000/svg\">");
    for (i, (day, left)) in days.iter().enumerate() {
        let bar = (h - 2.0 * pad) * (left / min).clamp(0.0, 1.0);
        let _ = write!(svg, "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar:.1}\" fill=\"#9467bd\"><title>{day}: {} GPU-hours to go</title></rect>", pad + i as f64 * step, h - pad - bar, (step - 1.0).max(1.0), number(*left));
    }
    let _ = write!(
        svg,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">{}</text></svg>",
        h - 6.0,
        esc(&days[0].0)
    );
    svg
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:60em;color:#111;padding:0 1em}\
h1{font-size:1.6em}h2{border-bottom:2px solid #333;margin-top:2em}section{break-inside:avoid-page}\
table{border-collapse:collapse;width:100%;margin:.5em 0}th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}\
td.v{font-variant-numeric:tabular-nums;text-align:right;white-space:nowrap}.idx{font-family:monospace;font-size:.85em;color:#555}\
.none{color:#777}.bad{color:#b00;font-weight:bold}.ok{color:#070}.chart{width:100%;max-width:640px;display:block;margin:.5em 0}\
code{font-size:.9em;word-break:break-all}@media print{details{display:block}details>summary{list-style:none}body{margin:0}}";

/// The page.
pub fn render(report: &Report) -> String {
    let f = &report.figures;
    let mut out = String::new();
    let title = format!("Conduct of the deal, {} to {}", report.from, report.to);
    let _ = write!(out, "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1>", esc(&title), esc(&title));
    if let Some(p) = &report.shown_to {
        let _ = write!(
            out,
            "<p><strong>{}'s view:</strong> only the entries this provider may see.</p>",
            esc(p)
        );
    }
    // The checkpoint and what could not be verified.
    let c = &report.checkpoint;
    let _ = write!(out, "<section id=\"checkpoint\"><h2>Checkpoint</h2><table><tr><th>Log</th><td><code>{}</code></td></tr><tr><th>Size</th><td>{} entries</td></tr><tr><th>Root</th><td><code>{}</code></td></tr><tr><th>Signed by</th><td>{} (checked)</td></tr><tr><th>Cosigned by</th><td>{}</td></tr><tr><th>Export</th><td>{} entries, SHA-256 <code>{}</code></td></tr></table>",
        esc(&c.origin), c.size, esc(&c.root), esc(&c.signed_by),
        if c.cosigned_by.is_empty() { "<span class=\"bad\">no witness checked</span>".to_owned() } else { c.cosigned_by.iter().map(|w| format!("{} at {} (checked)", esc(&w.name), esc(&w.at))).collect::<Vec<_>>().join("; ") },
        report.export_entries, esc(&report.export_sha256));
    out.push_str("<h3>What could not be verified</h3><ul id=\"not-verified\">");
    for line in &f.not_verified {
        let _ = write!(out, "<li>{}</li>", esc(line));
    }
    out.push_str("</ul></section>");
    // First refusal.
    let fr = &f.first_refusal;
    out.push_str("<section id=\"first-refusal\"><h2>First refusal</h2><table>");
    count(
        &mut out,
        "Needs in the period",
        "needs.total",
        &f.needs.total,
    );
    count(
        &mut out,
        "In a first-refusal scope",
        "first_refusal.in_scope",
        &fr.in_scope,
    );
    count(
        &mut out,
        "Offered to the holder first",
        "first_refusal.offered_first",
        &fr.offered_first,
    );
    count(
        &mut out,
        "Not offered to the holder first",
        "first_refusal.not_offered_first",
        &fr.not_offered_first,
    );
    count(&mut out, "I1 kept", "first_refusal.i1_kept", &fr.i1_kept);
    count(
        &mut out,
        "I1 broken",
        "first_refusal.i1_broken",
        &fr.i1_broken,
    );
    count(
        &mut out,
        "I1 not judged",
        "first_refusal.i1_not_judged",
        &fr.i1_not_judged,
    );
    out.push_str("</table><table class=\"needs\"><tr><th>Need</th><th>Holder</th><th>Offered first</th><th>I1</th><th>Entries</th></tr>");
    for v in fr.needs.iter().take(SHOWN_NEEDS) {
        let verdict = match v.i1.as_str() {
            "kept" => "<span class=\"ok\">kept</span>".to_owned(),
            "broken" => format!(
                "<span class=\"bad\">broken</span>: {}",
                esc(v.detail.as_deref().unwrap_or(""))
            ),
            other => esc(other),
        };
        let offered = if v.offered_first {
            "yes".to_owned()
        } else {
            format!("no: {}", esc(v.reason.as_deref().unwrap_or("")))
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{offered}</td><td>{verdict}</td><td>{}</td></tr>",
            esc(&v.need),
            esc(v.holder.as_deref().unwrap_or("—")),
            entries(&v.entries)
        );
    }
    out.push_str("</table>");
    if fr.needs.len() > SHOWN_NEEDS {
        let _ = write!(
            out,
            "<p>… and {} more needs (report.json).</p>",
            fr.needs.len() - SHOWN_NEEDS
        );
    }
    out.push_str("</section>");
    // The holder's conduct.
    let h = &f.holder;
    out.push_str("<section id=\"holder\"><h2>The holder's conduct</h2><table>");
    count(&mut out, "Offers to the holder", "holder.offers", &h.offers);
    count(
        &mut out,
        "Answered within the window",
        "holder.answered_in_window",
        &h.answered_in_window,
    );
    let seconds = |fig: &Figure| {
        if fig.entries.is_empty() {
            "—".to_owned()
        } else {
            format!("{} h", number(fig.value / 3600.0))
        }
    };
    row(
        &mut out,
        "Median time to answer",
        "holder.median_answer_seconds",
        seconds(&h.median_answer_seconds),
        &h.median_answer_seconds,
    );
    row(
        &mut out,
        "Median window given",
        "holder.median_window_seconds",
        seconds(&h.median_window_seconds),
        &h.median_window_seconds,
    );
    count(
        &mut out,
        "Lapses (offers and matches let run out)",
        "holder.lapses",
        &h.lapses,
    );
    for (reason, fig) in &h.refusals_by_reason {
        count(
            &mut out,
            &format!("Refusals: {reason}"),
            &format!("holder.refusals_by_reason.{reason}"),
            fig,
        );
    }
    count(
        &mut out,
        "GPUs refused",
        "holder.gpus_refused",
        &h.gpus_refused,
    );
    count(
        &mut out,
        "Held back by a concentration cap",
        "holder.capped",
        &h.capped,
    );
    count(
        &mut out,
        "Matches offered (last look)",
        "holder.matches_offered",
        &h.matches_offered,
    );
    count(
        &mut out,
        "Matches taken",
        "holder.matches_accepted",
        &h.matches_accepted,
    );
    count(&mut out, "Re-offers", "holder.reoffers", &h.reoffers);
    count(
        &mut out,
        "Revivals of the right",
        "holder.revivals",
        &h.revivals,
    );
    out.push_str("</table></section>");
    // What refusals cost.
    let cost = &f.cost;
    out.push_str("<section id=\"cost\"><h2>What refusals cost</h2><table>");
    row(
        &mut out,
        "Premium paid over the holder's offered price",
        "cost.premium_dollars",
        format!("${}", number(cost.premium_dollars.value)),
        &cost.premium_dollars,
    );
    count(
        &mut out,
        "Awards that paid a premium",
        "cost.premium_awards",
        &cost.premium_awards,
    );
    row(
        &mut out,
        "Launch delay after the holder's refusal or silence",
        "cost.delay_hours",
        format!("{} h", number(cost.delay_hours.value)),
        &cost.delay_hours,
    );
    count(
        &mut out,
        "Needs delayed",
        "cost.delayed_needs",
        &cost.delayed_needs,
    );
    out.push_str("</table></section>");
    // Concentration.
    let conc = &f.concentration;
    out.push_str("<section id=\"concentration\"><h2>Concentration</h2><table><tr><th>Provider</th><th>GPU-hours</th><th>Share</th><th>Cap</th><th>Entries</th></tr>");
    for s in &conc.providers {
        let over = s.cap.is_some_and(|cap| s.share > cap);
        let _ = write!(out, "<tr data-provider=\"{}\" data-gpu-hours=\"{}\" data-share=\"{}\"><td>{}</td><td class=\"v\">{}</td><td class=\"v{}\">{}%</td><td class=\"v\">{}</td><td>{}</td></tr>", esc(&s.provider), s.gpu_hours.value, s.share, esc(&s.provider), number(s.gpu_hours.value), if over { " bad" } else { "" }, number(s.share), s.cap.map_or("—".into(), |c| format!("{}%", number(c))), entries(&s.gpu_hours.entries));
    }
    let _ = write!(
        out,
        "</table><p>HHI at the period's end: <strong id=\"hhi\" data-value=\"{}\">{}</strong>{}</p>",
        conc.hhi,
        number(conc.hhi),
        conc.hhi_alert
            .map_or(String::new(), |a| format!(" (alert line {})", number(a)))
    );
    let caps: Vec<(String, f64)> = conc
        .providers
        .iter()
        .filter_map(|s| s.cap.map(|c| (s.provider.clone(), c)))
        .collect();
    out.push_str(&share_chart(&conc.timeline, &caps, conc.hhi_alert));
    out.push_str("<h3>Commitments</h3>");
    if conc.commitments.is_empty() {
        out.push_str("<p class=\"none\">The deal in force names no commitment.</p>");
    }
    for b in &conc.commitments {
        let _ = write!(out, "<table>");
        row(
            &mut out,
            &format!(
                "{}: awarded GPU-hours (minimum {})",
                b.provider,
                b.min_gpu_hours.map_or("none".into(), number)
            ),
            &format!("commitments.{}", b.provider),
            number(b.awarded_gpu_hours.value),
            &b.awarded_gpu_hours,
        );
        out.push_str("</table>");
        out.push_str(&burn_chart(
            &b.remaining_by_day,
            b.min_gpu_hours.unwrap_or(0.0),
        ));
    }
    out.push_str("</section>");
    // How the rounds were placed.
    let r = &f.rounds;
    out.push_str("<section id=\"rounds\"><h2>How sourcing rounds were placed</h2><table>");
    count(
        &mut out,
        "Rounds where cheapest first kept every cap (the least cost)",
        "rounds.cheapest_first",
        &r.cheapest_first,
    );
    count(
        &mut out,
        "Rounds placed by the solver at a cost proven least",
        "rounds.proven",
        &r.proven,
    );
    count(
        &mut out,
        "Rounds where the solver's work limit stopped the proof",
        "rounds.bounded",
        &r.bounded,
    );
    row(
        &mut out,
        "Largest gap between such a round's cost and its proven bound",
        "rounds.largest_gap_percent",
        format!("{}%", number(r.largest_gap_percent.value)),
        &r.largest_gap_percent,
    );
    out.push_str("</table></section>");
    // Approvals, deliveries, the deal.
    out.push_str("<section id=\"approvals\"><h2>Approvals and deliveries</h2><table>");
    count(
        &mut out,
        "Approvals requested",
        "approvals.requested",
        &f.approvals.requested,
    );
    count(
        &mut out,
        "Approved",
        "approvals.approved",
        &f.approvals.approved,
    );
    count(
        &mut out,
        "Rejected",
        "approvals.rejected",
        &f.approvals.rejected,
    );
    count(
        &mut out,
        "Reservations confirmed",
        "deliveries.confirmed",
        &f.deliveries.confirmed,
    );
    count(
        &mut out,
        "Delivery failures",
        "deliveries.failures",
        &f.deliveries.failures,
    );
    for (reason, fig) in &f.deliveries.by_reason {
        count(
            &mut out,
            &format!("Failures: {reason}"),
            &format!("deliveries.by_reason.{reason}"),
            fig,
        );
    }
    out.push_str("</table></section>");
    out.push_str("<section id=\"deal\"><h2>The deal's versions</h2><table><tr><th>Version</th><th>File</th><th>Effective</th><th>Open needs</th><th>In force in the period</th><th>SHA-256</th><th>Entry</th></tr>");
    if f.deal_versions.is_empty() {
        out.push_str("<tr><td colspan=\"7\" class=\"none\">Not in this export.</td></tr>");
    }
    for v in &f.deal_versions {
        let _ = write!(out, "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>#{}</td></tr>", v.version, esc(&v.file), esc(&v.effective), esc(v.open_needs.as_deref().unwrap_or("—")), if v.in_force_in_period { "yes" } else { "no" }, esc(&v.sha256), v.entry);
    }
    out.push_str("</table></section>");
    let _ = writeln!(out, "<footer><p>Every figure is recomputed from the export by <code>rofr report verify</code>. Format {}.</p></footer></body></html>", esc(&report.format));
    out
}
