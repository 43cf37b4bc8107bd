//! The simulation's JSON result: per strategy, launch delay (mean, p50, p90), unmet
//! GPU-hours, total cost, holder share, HHI over time, lapses and re-offers, with the
//! series the HTML report draws. Figures are means over runs, rounded for reading; the
//! HTML report prints these very numbers.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::run::RunResult;
use crate::scenario::Scenario;
use crate::Outcome;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: String,
    pub deal: String,
    pub seed: u64,
    pub runs: u32,
    pub start: String,
    pub end: String,
    pub step_days: f64,
    pub holder: Option<String>,
    pub providers: Vec<String>,
    /// The first day of each reporting step.
    pub steps: Vec<String>,
    pub strategies: Vec<StrategyReport>,
    /// The trade-offs in plain words.
    pub summary: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bin {
    pub label: String,
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    /// HHI (0–10,000) of confirmed GPU-hours so far, by step.
    pub hhi: Vec<f64>,
    /// Each provider's share of confirmed GPU-hours so far, by step.
    pub shares: BTreeMap<String, Vec<f64>>,
    /// Dollars confirmed so far, by step.
    pub cumulative_cost: Vec<f64>,
    /// GPU-hours of demand due so far and not yet confirmed, by step.
    pub unmet_gpu_hours: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyReport {
    pub strategy: String,
    pub needs_per_run: f64,
    pub launches_per_run: f64,
    /// Days each launch started after its date, over every launch of every run.
    pub launch_delay_days: Stats,
    /// Launches that started on their date.
    pub on_time_share: f64,
    /// Launches that got all their GPUs within the horizon.
    pub met_share: f64,
    pub demand_gpu_hours: f64,
    pub awarded_gpu_hours: f64,
    pub unmet_gpu_hours: f64,
    pub total_cost: f64,
    pub cost_per_gpu_hour: f64,
    pub holder_share: f64,
    pub final_hhi: f64,
    pub lapses: f64,
    pub reoffers: f64,
    pub resubmissions: f64,
    pub delay_histogram: Vec<Bin>,
    pub series: Series,
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    let rounded = (value * scale).round() / scale;
    // No "-0" in the output.
    if rounded == 0.0 {
        0.0
    } else {
        rounded
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn hhi(amounts: &[f64]) -> f64 {
    let total: f64 = amounts.iter().sum();
    if total <= 0.0 {
        return 0.0;
    }
    amounts.iter().map(|a| (100.0 * a / total).powi(2)).sum()
}

const BINS: [(&str, f64, f64); 7] = [
    ("on time", 0.0, 0.0),
    ("1–7 days", 0.0, 7.0),
    ("8–14 days", 7.0, 14.0),
    ("15–30 days", 14.0, 30.0),
    ("31–60 days", 30.0, 60.0),
    ("61–90 days", 60.0, 90.0),
    ("over 90 days", 90.0, f64::INFINITY),
];

impl Report {
    pub fn new(scenario: &Scenario, outcome: &Outcome) -> Report {
        let providers: Vec<String> = scenario
            .providers
            .iter()
            .map(|p| p.id.to_string())
            .collect();
        let holder = scenario.holder().map(|h| h.to_string());
        let holder_index = holder
            .as_ref()
            .and_then(|h| providers.iter().position(|p| p == h));
        let steps = (0..scenario.steps())
            .map(|i| {
                let at = scenario.start.plus_seconds(i as i64 * scenario.step);
                at.to_string()[..10].to_owned()
            })
            .collect();
        let strategies: Vec<StrategyReport> = scenario
            .strategies
            .iter()
            .zip(&outcome.results)
            .map(|(s, runs)| {
                strategy_report(s.as_str(), runs, &providers, holder_index, scenario.steps())
            })
            .collect();
        let summary = summarise(scenario, holder.as_deref(), &strategies);
        Report {
            scenario: scenario.name.clone(),
            deal: scenario.deal.name.clone(),
            seed: scenario.seed,
            runs: scenario.runs,
            start: scenario.start.to_string()[..10].to_owned(),
            end: scenario.end.to_string()[..10].to_owned(),
            step_days: round(scenario.step as f64 / 86_400.0, 3),
            holder,
            providers,
            steps,
            strategies,
            summary,
        }
    }
}

fn strategy_report(
    name: &str,
    runs: &[RunResult],
    providers: &[String],
    holder: Option<usize>,
    steps: usize,
) -> StrategyReport {
    let mut delays: Vec<f64> = runs.iter().flat_map(|r| r.delays.iter().copied()).collect();
    delays.sort_by(f64::total_cmp);
    let launches = delays.len().max(1) as f64;
    let delay_histogram = BINS
        .iter()
        .map(|(label, low, high)| {
            let count = delays
                .iter()
                .filter(|&&d| {
                    if *high == 0.0 {
                        d == 0.0
                    } else {
                        d > *low && d <= *high
                    }
                })
                .count();
            Bin {
                label: (*label).to_owned(),
                share: round(count as f64 / launches, 4),
            }
        })
        .collect();
    // Series, per run, then averaged over runs.
    let mut hhi_series = vec![0.0; steps];
    let mut share_series = vec![vec![0.0; steps]; providers.len()];
    let mut cost_series = vec![0.0; steps];
    let mut unmet_series = vec![0.0; steps];
    for run in runs {
        let mut so_far = vec![0.0; providers.len()];
        let (mut cost, mut demand, mut got) = (0.0, 0.0, 0.0);
        for step in 0..steps {
            for (p, amount) in run.step_gpu_hours[step].iter().enumerate() {
                so_far[p] += amount;
                got += amount;
            }
            cost += run.step_cost[step];
            demand += run.step_demand[step];
            let total: f64 = so_far.iter().sum();
            for (p, series) in share_series.iter_mut().enumerate() {
                if total > 0.0 {
                    series[step] += so_far[p] / total;
                }
            }
            hhi_series[step] += hhi(&so_far);
            cost_series[step] += cost;
            unmet_series[step] += (demand - got).max(0.0);
        }
    }
    let n = runs.len().max(1) as f64;
    let average = |series: Vec<f64>, places: i32| -> Vec<f64> {
        series.into_iter().map(|v| round(v / n, places)).collect()
    };
    let awarded = mean(runs.iter().map(|r| r.awarded_gpu_hours));
    let cost = mean(runs.iter().map(|r| r.cost));
    StrategyReport {
        strategy: name.to_owned(),
        needs_per_run: round(mean(runs.iter().map(|r| f64::from(r.needs))), 1),
        launches_per_run: round(mean(runs.iter().map(|r| r.delays.len() as f64)), 1),
        launch_delay_days: Stats {
            mean: round(mean(delays.iter().copied()), 2),
            p50: round(percentile(&delays, 0.5), 2),
            p90: round(percentile(&delays, 0.9), 2),
            max: round(delays.last().copied().unwrap_or(0.0), 2),
        },
        on_time_share: round(
            delays.iter().filter(|&&d| d == 0.0).count() as f64 / launches,
            4,
        ),
        met_share: round(
            runs.iter().map(|r| f64::from(r.launches_met)).sum::<f64>() / launches,
            4,
        ),
        demand_gpu_hours: round(mean(runs.iter().map(|r| r.demand_gpu_hours)), 0),
        awarded_gpu_hours: round(awarded, 0),
        unmet_gpu_hours: round(mean(runs.iter().map(|r| r.unmet_gpu_hours)), 0),
        total_cost: round(cost, 0),
        cost_per_gpu_hour: round(if awarded > 0.0 { cost / awarded } else { 0.0 }, 4),
        holder_share: round(
            mean(runs.iter().map(|r| {
                let total: f64 = r.by_provider.iter().sum();
                match holder {
                    Some(h) if total > 0.0 => r.by_provider[h] / total,
                    _ => 0.0,
                }
            })),
            4,
        ),
        final_hhi: round(mean(runs.iter().map(|r| hhi(&r.by_provider))), 1),
        lapses: round(mean(runs.iter().map(|r| f64::from(r.lapses))), 2),
        reoffers: round(mean(runs.iter().map(|r| f64::from(r.reoffers))), 2),
        resubmissions: round(mean(runs.iter().map(|r| f64::from(r.resubmissions))), 2),
        delay_histogram,
        series: Series {
            hhi: average(hhi_series, 1),
            shares: providers
                .iter()
                .cloned()
                .zip(share_series.into_iter().map(|s| average(s, 4)))
                .collect(),
            cumulative_cost: average(cost_series, 0),
            unmet_gpu_hours: average(unmet_series, 0),
        },
    }
}

/// Dollars in words a planner reads at a glance: $1.23B, $45.6M, $789k.
pub fn dollars(value: f64) -> String {
    let abs = value.abs();
    let sign = if value < 0.0 { "-" } else { "" };
    if abs >= 1e9 {
        format!("{sign}${:.2}B", abs / 1e9)
    } else if abs >= 1e6 {
        format!("{sign}${:.1}M", abs / 1e6)
    } else if abs >= 1e3 {
        format!("{sign}${:.0}k", abs / 1e3)
    } else {
        format!("{sign}${abs:.0}")
    }
}

fn percent(share: f64) -> String {
    format!("{:.0}%", share * 100.0)
}

fn summarise(scenario: &Scenario, holder: Option<&str>, reports: &[StrategyReport]) -> Vec<String> {
    let mut out = Vec::new();
    let Some(first) = reports.first() else {
        return out;
    };
    out.push(format!(
        "{} runs of {} launches each ({} GPU-hours of demand on average), {} to {}, on the deal \"{}\".",
        scenario.runs,
        first.launches_per_run,
        thousands(first.demand_gpu_hours),
        &scenario.start.to_string()[..10],
        &scenario.end.to_string()[..10],
        scenario.deal.name,
    ));
    let fastest = reports
        .iter()
        .min_by(|a, b| {
            a.launch_delay_days
                .mean
                .total_cmp(&b.launch_delay_days.mean)
                .then(a.unmet_gpu_hours.total_cmp(&b.unmet_gpu_hours))
        })
        .expect("at least one");
    let cheapest = reports
        .iter()
        .filter(|r| r.awarded_gpu_hours > 0.0)
        .min_by(|a, b| a.cost_per_gpu_hour.total_cmp(&b.cost_per_gpu_hour));
    let broadest = reports
        .iter()
        .filter(|r| r.awarded_gpu_hours > 0.0)
        .min_by(|a, b| a.final_hhi.total_cmp(&b.final_hhi));
    out.push(format!(
        "Launches slip least under `{}`: {:.1} days late on average, {:.1} at the 90th percentile, {} of launches on time.",
        fastest.strategy,
        fastest.launch_delay_days.mean,
        fastest.launch_delay_days.p90,
        percent(fastest.on_time_share)
    ));
    if let Some(exclusive) = reports.iter().find(|r| r.strategy == "exclusive") {
        if let Some(holder) = holder {
            out.push(format!(
                "Sourcing only from {holder} delays launches by {:.1} days on average ({:.1} at the 90th percentile) and leaves {} GPU-hours of demand unmet ({} of it).",
                exclusive.launch_delay_days.mean,
                exclusive.launch_delay_days.p90,
                thousands(exclusive.unmet_gpu_hours),
                percent(ratio(exclusive.unmet_gpu_hours, exclusive.demand_gpu_hours)),
            ));
        }
        if let Some(fallback) = reports.iter().find(|r| r.strategy == "first_offer") {
            let days = exclusive.launch_delay_days.mean - fallback.launch_delay_days.mean;
            let unmet = exclusive.unmet_gpu_hours - fallback.unmet_gpu_hours;
            out.push(format!(
                "Keeping the first refusal but falling back to others (`first_offer`) saves {:.1} days per launch on average and places {} more GPU-hours; it pays {} per GPU-hour against {} when exclusive, and the holder keeps {} of the GPU-hours.",
                days,
                thousands(unmet),
                dollars_exact(fallback.cost_per_gpu_hour),
                dollars_exact(exclusive.cost_per_gpu_hour),
                percent(fallback.holder_share),
            ));
        }
    }
    if let Some(capped) = reports.iter().find(|r| r.strategy == "capped") {
        out.push(format!(
            "Capping every provider at {} brings the HHI to {:.0} (from {:.0} when exclusive) at {} per GPU-hour, with launches {:.1} days late on average.",
            percent(scenario.cap),
            capped.final_hhi,
            reports.iter().find(|r| r.strategy == "exclusive").map_or(f64::NAN, |r| r.final_hhi),
            dollars_exact(capped.cost_per_gpu_hour),
            capped.launch_delay_days.mean,
        ));
    }
    if let (Some(ordered), Some(open)) = (
        reports.iter().find(|r| r.strategy == "ordered"),
        reports.iter().find(|r| r.strategy == "open_market"),
    ) {
        let extra =
            (ordered.cost_per_gpu_hour - open.cost_per_gpu_hour) * ordered.awarded_gpu_hours;
        out.push(format!(
            "Failing over in a fixed order pays {} per GPU-hour where choosing the cheapest quotes pays {}: {} more for the GPU-hours it placed.",
            dollars_exact(ordered.cost_per_gpu_hour),
            dollars_exact(open.cost_per_gpu_hour),
            dollars(extra),
        ));
    }
    if let (Some(amended), Some(kept)) = (
        reports.iter().find(|r| r.strategy == "amended"),
        reports.iter().find(|r| r.strategy == "first_offer"),
    ) {
        let dates: Vec<String> = scenario
            .amendments
            .iter()
            .map(|a| format!("{} from {}", a.file, &a.effective.to_string()[..10]))
            .collect();
        out.push(format!(
            "Amending the deal as scheduled ({}) against keeping the right all year (`first_offer`): launches {:.1} days late on average against {:.1}, {} per GPU-hour against {}, the holder's share {} against {}, HHI {:.0} against {:.0}.",
            dates.join("; "),
            amended.launch_delay_days.mean,
            kept.launch_delay_days.mean,
            dollars_exact(amended.cost_per_gpu_hour),
            dollars_exact(kept.cost_per_gpu_hour),
            percent(amended.holder_share),
            percent(kept.holder_share),
            amended.final_hhi,
            kept.final_hhi,
        ));
    }
    if let Some(cheapest) = cheapest {
        out.push(format!(
            "Cheapest per GPU-hour: `{}` at {}. Least concentrated: `{}` (HHI {:.0}).",
            cheapest.strategy,
            dollars_exact(cheapest.cost_per_gpu_hour),
            broadest.map_or("-", |b| b.strategy.as_str()),
            broadest.map_or(0.0, |b| b.final_hhi),
        ));
    }
    out
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn dollars_exact(value: f64) -> String {
    format!("${value:.2}")
}

/// A whole number with thousands separators.
pub fn thousands(value: f64) -> String {
    let whole = value.round() as i64;
    let digits = whole.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if whole < 0 {
        format!("-{out}")
    } else {
        out
    }
}
