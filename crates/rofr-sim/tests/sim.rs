//! The simulator: determinism, conservation of GPU-hours, each strategy doing what its
//! name says (judged by the engine's own invariant checker on the events), and a tiny
//! scenario whose figures are worked out by hand.

use std::sync::Arc;

use rofr_engine::deal::parse_deal;
use rofr_engine::invariants::check_events;
use rofr_engine::EventKind;
use rofr_sim::run::{draw, Sim};
use rofr_sim::scenario::parse_scenario;
use rofr_sim::{deal_for, simulate, Report, Scenario, Strategy};

const DEAL: &str = r#"
[deal]
name = "tiny"

[sourcing]
quote_window = "24h"
confirm_window = "48h"
retry_after = "24h"

[[provider]]
id = "h"

[[provider]]
id = "a"

[[provider]]
id = "b"

[[first_refusal]]
holder = "h"
variant = "first_offer"
window = "72h"
partial = true
reoffer_threshold = 0.05
third_party_window = "30d"
term = { from = 2024-01-01 }
offer_prices = { H100 = 6.0 }

[first_refusal.scope]
workloads = ["training"]
"#;

/// One launch of 64 H100s for 100 hours on 20 January; the holder has 32 GPUs at $6,
/// `a` 64 at $5, `b` 64 at $7; nobody is ever silent, late or failing.
const TINY: &str = r#"
[scenario]
name = "tiny"
deal = "tiny-deal.toml"
start = 2025-01-01
end = 2025-03-01
step = "7d"
runs = 1
seed = 1
strategies = ["exclusive", "first_offer", "open_market", "ordered"]

[demand]
lead = "10d"
split = 1

[[demand.launch]]
name = "L"
date = 2025-01-20
sku = "H100"
gpus = 64
hours = 100
flexibility = "5d"
workload = "training"
max_price = 8.0

[[provider]]
id = "h"
answer_delay = "1h"
prices = { H100 = 6.0 }
capacity = [{ from = 2025-01-01, sku = "H100", gpus = 32 }]

[[provider]]
id = "a"
answer_delay = "2h"
prices = { H100 = 5.0 }
capacity = [{ from = 2025-01-01, sku = "H100", gpus = 64 }]

[[provider]]
id = "b"
answer_delay = "2h"
prices = { H100 = 7.0 }
capacity = [{ from = 2025-01-01, sku = "H100", gpus = 64 }]
"#;

fn scenario(deal: &str, text: &str) -> Scenario {
    let deal = Arc::new(parse_deal("tiny-deal.toml", deal).unwrap_or_else(|e| panic!("{e:?}")));
    parse_scenario("tiny.toml", text, deal).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn report(scenario: &Scenario) -> Report {
    Report::new(scenario, &simulate(scenario, &|| {}))
}

/// The `busy` scenario's text.
fn busy_text() -> &'static str {
    r#"
[scenario]
name = "busy"
deal = "tiny-deal.toml"
start = 2025-01-01
end = 2025-07-01
step = "7d"
runs = 6
seed = 42
cap = 0.5

[demand]
growth = 0.1
noise = 0.3
lead = "14d"
split = 3

[[demand.stream]]
name = "train"
date = 2025-01-10
every = "5d"
sku = "H100"
gpus = 256
hours = 240
flexibility = "7d"
workload = "training"
max_price = 8.0

[[demand.stream]]
name = "serve"
date = 2025-01-03
every = "3d"
sku = "H100"
gpus = 64
hours = 120
flexibility = "3d"
workload = "inference"
max_price = 8.0

[[provider]]
id = "h"
answer_delay = "30h"
lead_time = "3d"
decline_probability = 0.1
silence_probability = 0.1
failure_probability = 0.05
prices = { H100 = 6.0 }
capacity = [{ from = 2025-01-01, sku = "H100", gpus = 600 }, { from = 2025-04-01, sku = "H100", gpus = 900 }]

[[provider]]
id = "a"
answer_delay = "5h"
lead_time = "10d"
decline_probability = 0.2
failure_probability = 0.05
prices = { H100 = 5.0 }
price_drift = 0.02
capacity = [{ from = 2025-01-01, sku = "H100", gpus = 300 }]

[[provider]]
id = "b"
answer_delay = "2h"
silence_probability = 0.2
prices = { H100 = 7.5 }
capacity = [{ from = 2025-02-01, sku = "H100", gpus = 500 }]
"#
}

/// A scenario with randomness everywhere: noisy growing demand, providers that decline,
/// stay silent and fail, a cap with a base, all six strategies.
fn busy() -> Scenario {
    let deal = format!(
        "{DEAL}\n[[concentration_cap]]\nmax_share = 0.6\nwindow = \"30d\"\nbinds_holder = false\nbase = {{ h = 50000, a = 20000, b = 20000 }}\n"
    );
    let text = busy_text();
    scenario(&deal, text)
}

#[test]
fn the_tiny_scenario_gives_the_figures_worked_out_by_hand() {
    let scenario = scenario(DEAL, TINY);
    let report = report(&scenario);
    let by = |name: &str| {
        report
            .strategies
            .iter()
            .find(|s| s.strategy == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    // first_offer: h takes the 32 it has at its offered $6; a's $5 beats b's $7 for the
    // other 32: 32·100·6 + 32·100·5 = 35,200; on time; half each: HHI 2·50² = 5,000.
    let first = by("first_offer");
    assert_eq!(first.total_cost, 35_200.0);
    assert_eq!(first.launch_delay_days.mean, 0.0);
    assert_eq!(first.unmet_gpu_hours, 0.0);
    assert_eq!(first.holder_share, 0.5);
    assert_eq!(first.final_hhi, 5_000.0);
    assert_eq!((first.lapses, first.reoffers), (0.0, 0.0));
    // exclusive: h's 32 only until its first reservation (20–24 January) ends; the
    // other 32 find no one, wait, expire on the 25th at their latest start and are asked
    // again at once; h accepts at 01:00 after its hour's answer and sets them aside
    // from then: the launch starts 5 days 1 hour late (5.04 days), all 64 at $6.
    let exclusive = by("exclusive");
    assert_eq!(exclusive.total_cost, 38_400.0);
    assert_eq!(exclusive.unmet_gpu_hours, 0.0);
    assert_eq!(exclusive.launch_delay_days.mean, 5.04);
    assert_eq!(exclusive.met_share, 1.0);
    assert_eq!(exclusive.holder_share, 1.0);
    assert_eq!(exclusive.resubmissions, 1.0);
    // open_market: all 64 from a at $5.
    let open = by("open_market");
    assert_eq!(open.total_cost, 32_000.0);
    assert_eq!(open.holder_share, 0.0);
    assert_eq!(open.final_hhi, 10_000.0);
    // ordered: the deal's order is h, a, b: h's 32 at $6, then a's 32 at $5.
    let ordered = by("ordered");
    assert_eq!(ordered.total_cost, 35_200.0);
    assert_eq!(ordered.holder_share, 0.5);
    // The demand series puts all 6,400 GPU-hours in the launch's week (the third).
    let due: f64 = first.series.unmet_gpu_hours[..2].iter().sum();
    assert_eq!(due, 0.0);
    assert_eq!(report.steps[2], "2025-01-15");
}

#[test]
fn the_same_seed_gives_byte_identical_output_and_another_seed_does_not() {
    let scenario = busy();
    let first = report(&scenario);
    let again = report(&scenario);
    let bytes = |r: &Report| serde_json::to_vec_pretty(r).unwrap();
    assert_eq!(bytes(&first), bytes(&again));
    assert_eq!(
        rofr_sim::html::render_html(&first, None),
        rofr_sim::html::render_html(&again, None)
    );
    let mut other = scenario.clone();
    other.seed = 43;
    assert_ne!(bytes(&first), bytes(&report(&other)));
    // One thread or many: the same bytes.
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| report(&scenario));
    assert_eq!(bytes(&first), bytes(&single));
}

#[test]
fn every_gpu_hour_of_demand_is_awarded_or_unmet() {
    let scenario = busy();
    let outcome = simulate(&scenario, &|| {});
    for (s, runs) in scenario.strategies.iter().zip(&outcome.results) {
        for (r, run) in runs.iter().enumerate() {
            let what = format!("{} run {r}", s.as_str());
            let tolerance = 1e-6 * run.demand_gpu_hours;
            assert!(run.demand_gpu_hours > 0.0, "{what}: no demand");
            assert!(
                (run.awarded_gpu_hours - run.state_awarded_gpu_hours).abs() <= tolerance,
                "{what}: events say {} confirmed, the engine's state {}",
                run.awarded_gpu_hours,
                run.state_awarded_gpu_hours
            );
            assert!(
                (run.awarded_gpu_hours + run.unmet_gpu_hours - run.demand_gpu_hours).abs()
                    <= tolerance,
                "{what}: {} awarded + {} unmet ≠ {} demanded",
                run.awarded_gpu_hours,
                run.unmet_gpu_hours,
                run.demand_gpu_hours
            );
            let by_provider: f64 = run.by_provider.iter().sum();
            assert!(
                (by_provider - run.awarded_gpu_hours).abs() <= tolerance,
                "{what}"
            );
        }
    }
}

#[test]
fn each_strategy_keeps_the_deal_it_runs_and_does_what_its_name_says() {
    let scenario = busy();
    let drawn = draw(&scenario, 0);
    for &strategy in &scenario.strategies {
        let deal = Arc::new(deal_for(&scenario.deal, strategy, scenario.cap));
        let result = Sim::new(&scenario, deal.clone(), &drawn, 0)
            .keep_log()
            .run();
        let name = strategy.as_str();
        // I1–I3 (first refusal, no over-award, caps and restrictions) at every award,
        // judged by the engine's checker on the events of the run.
        check_events(&deal, &result.log).unwrap_or_else(|v| panic!("{name}: {v}"));
        let awarded: Vec<&str> = result
            .log
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::AwardMade { provider, .. } => Some(provider.as_str()),
                _ => None,
            })
            .collect();
        assert!(!awarded.is_empty(), "{name}: nothing awarded");
        match strategy {
            Strategy::Exclusive => {
                assert!(awarded.iter().all(|p| *p == "h"), "{name}: {awarded:?}")
            }
            Strategy::Capped => {
                assert_eq!(deal.caps.len(), 1);
                assert_eq!(deal.caps[0].max_share, 0.5);
                assert!(deal.caps[0].binds_holder);
                assert!(awarded.iter().any(|p| *p != "h"), "{name}: only the holder");
            }
            Strategy::OpenMarket | Strategy::Ordered => {
                assert!(deal.first_refusals.is_empty() && deal.caps.is_empty());
                let offered = result
                    .log
                    .iter()
                    .any(|e| matches!(e.kind, EventKind::OfferSent { .. }));
                assert!(!offered, "{name}: no one holds a right");
            }
            Strategy::FirstOffer | Strategy::LastLook => {
                assert_eq!(deal.first_refusals.len(), 1);
            }
            Strategy::Amended => unreachable!("`busy` schedules no amendment"),
        }
    }
}

/// A scenario that ends the right on 1 April: the `amended` strategy runs alongside
/// the others; under it, needs submitted from that day are never offered to the
/// holder, needs submitted before keep their terms, I1–I3 hold under the version
/// governing each need, and the report sets it beside the right kept all year.
#[test]
fn a_scheduled_amendment_ends_the_right_from_its_date() {
    let busy = busy();
    let deal = format!(
        "{DEAL}\n[[concentration_cap]]\nmax_share = 0.6\nwindow = \"30d\"\nbinds_holder = false\nbase = {{ h = 50000, a = 20000, b = 20000 }}\n"
    );
    let without = deal[..deal.find("[[first_refusal]]").unwrap()].to_owned()
        + &deal[deal.find("[[concentration_cap]]").unwrap()..];
    let text = busy_text().replace(
        "[demand]",
        "[[amendment]]\ndeal = \"ends.toml\"\ndate = 2025-04-01\n\n[demand]",
    );
    let parsed = Arc::new(parse_deal("tiny-deal.toml", &deal).unwrap());
    let scenario = rofr_sim::scenario::parse_scenario_with(
        "busy.toml",
        &text,
        parsed.clone(),
        &mut |name: &str| {
            assert_eq!(name, "ends.toml");
            Ok(("ends.toml".to_owned(), without.clone()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        scenario.strategies.last(),
        Some(&Strategy::Amended),
        "added by the amendment"
    );
    assert_eq!(scenario.strategies.len(), busy.strategies.len() + 1);
    let date = rofr_engine::types::Timestamp::parse("2025-04-01T00:00:00Z").unwrap();
    let drawn = draw(&scenario, 0);
    let mut sim = Sim::new(&scenario, parsed.clone(), &drawn, 0).keep_log();
    sim.schedule(&scenario.amendments);
    let result = sim.run();
    let v2 = scenario.amendments[0].deal.clone();
    rofr_engine::invariants::check_under(&[&parsed, &v2], &result.log)
        .unwrap_or_else(|v| panic!("{v}"));
    let mut version = std::collections::HashMap::new();
    let (mut before, mut after) = (0, 0);
    for event in &result.log {
        match &event.kind {
            EventKind::NeedSubmitted(s) => {
                let expected = if event.at >= date { 2 } else { 1 };
                assert_eq!(
                    s.deal_version,
                    Some(expected),
                    "{} at {}",
                    event.need,
                    event.at
                );
                version.insert(event.need.clone(), expected);
            }
            EventKind::OfferSent { .. } => match version[&event.need] {
                1 => before += 1,
                _ => after += 1,
            },
            EventKind::TermsChanged { .. } => panic!("`keep` moves no need"),
            _ => {}
        }
    }
    assert!(before > 0, "the holder was offered needs before the date");
    assert_eq!(after, 0, "and none submitted after it");
    let report = report(&scenario);
    assert!(
        report
            .summary
            .iter()
            .any(|line| line
                .starts_with("Amending the deal as scheduled (ends.toml from 2025-04-01)")),
        "{:#?}",
        report.summary
    );
}

#[test]
fn ordered_takes_the_first_provider_in_the_deal_and_open_market_the_cheapest() {
    // Without the holder's capacity, `a` ($5) and `b` ($7) can each supply everything.
    let text = TINY.replace("gpus = 32 }]", "gpus = 0 }]").replace(
        r#"["exclusive", "first_offer", "open_market", "ordered"]"#,
        r#"["open_market", "ordered"]"#,
    );
    let deal = DEAL.replace(
        "[[provider]]\nid = \"a\"\n\n[[provider]]\nid = \"b\"",
        "[[provider]]\nid = \"b\"\n\n[[provider]]\nid = \"a\"",
    );
    let scenario = scenario(&deal, &text);
    let report = report(&scenario);
    // The deal lists b before a: ordered takes b's dearer GPUs, open market a's.
    assert_eq!(report.strategies[0].total_cost, 64.0 * 100.0 * 5.0);
    assert_eq!(report.strategies[1].total_cost, 64.0 * 100.0 * 7.0);
    assert_eq!(report.strategies[1].series.shares["b"].last(), Some(&1.0));
}

#[test]
fn scenario_errors_name_the_file_line_and_column() {
    let deal = Arc::new(parse_deal("tiny-deal.toml", DEAL).unwrap());
    let broken = TINY
        .replace("runs = 1", "runs = 0")
        .replace("id = \"b\"\nanswer_delay", "id = \"zeta\"\nanswer_delay")
        .replace("flexibility = \"5d\"", "flexibility = \"5 fortnights\"");
    let errors = parse_scenario("tiny.toml", &broken, deal.clone()).unwrap_err();
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    let find = |key: &str| {
        errors
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .unwrap_or_else(|| panic!("no error for {key}: {text:#?}"))
    };
    assert_eq!(find("scenario.runs").location.line, 8);
    assert_eq!(find("scenario.runs").location.column, 8);
    assert_eq!(find("demand.launch[0].flexibility").location.line, 22);
    assert!(find("provider[2].id")
        .message
        .contains("no provider `zeta`"));
    let unknown =
        parse_scenario("tiny.toml", &TINY.replace("seed = 1", "sede = 1"), deal).unwrap_err();
    assert_eq!(unknown[0].code, "invalid-toml");
    assert_eq!(
        (unknown[0].location.line, unknown[0].location.column),
        (9, 1)
    );
}

#[test]
fn capped_without_a_cap_base_is_refused() {
    // Shares are judged award by award, and the tiny deal has no cap base.
    let capped = TINY.replace(r#"["exclusive", "#, r#"["capped", "exclusive", "#);
    let deal = Arc::new(parse_deal("tiny-deal.toml", DEAL).unwrap());
    let errors = parse_scenario("tiny.toml", &capped, deal).unwrap_err();
    assert_eq!(errors[0].key.as_deref(), Some("scenario.strategies[0]"));
    assert!(errors[0].message.contains("base"), "{}", errors[0]);
}

#[test]
fn a_provider_that_answers_after_the_window_closes_is_warned_about() {
    let slow = TINY.replace(
        "id = \"a\"\nanswer_delay = \"2h\"",
        "id = \"a\"\nanswer_delay = \"30h\"",
    );
    let warned = scenario(DEAL, &slow);
    assert_eq!(warned.warnings.len(), 1, "{:?}", warned.warnings);
    let warning = &warned.warnings[0];
    assert_eq!(warning.key.as_deref(), Some("provider[1].answer_delay"));
    assert!(
        warning.message.contains("quote window of 24 h"),
        "{warning}"
    );
    assert!(scenario(DEAL, TINY).warnings.is_empty());
}
