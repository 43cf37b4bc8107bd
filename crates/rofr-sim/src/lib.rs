//! The what-if simulator (docs/scenario.md): a scenario's demand rehearsed against its
//! providers' capacity under several sourcing strategies, each a one-line change of the
//! scenario's deal run by the live broker's own `Engine` (and so its solver) with a
//! simulated clock and in-process providers. There is no second model of the rules.
//!
//! Deterministic: run `r` draws its demand from stream `2r` and its providers' choices
//! from stream `2r + 1` of a ChaCha8 generator seeded with the scenario's seed, runs are
//! spread over cores with rayon, and results are combined in a fixed order, so the same
//! seed gives byte-identical output on any number of cores.

pub mod bench;
pub mod html;
pub mod report;
pub mod run;
pub mod scenario;

use std::sync::Arc;

use rayon::prelude::*;
use rofr_engine::deal::{Allocation, CapBasis, ConcentrationCap, Deal, Variant};
use rofr_engine::diagnostic::ClauseRef;

pub use report::Report;
pub use scenario::{parse_scenario, Scenario, Strategy};

/// The scenario's deal as `strategy` changes it.
pub fn deal_for(deal: &Deal, strategy: Strategy, cap: f64) -> Deal {
    let mut deal = deal.clone();
    let holder = deal.first_refusals.first().map(|fr| fr.holder.clone());
    match strategy {
        Strategy::Exclusive => {
            if let Some(holder) = holder {
                deal.providers.retain(|p| p.id == holder);
            }
            deal.caps.clear();
        }
        Strategy::FirstOffer | Strategy::LastLook => {
            let variant = if strategy == Strategy::FirstOffer {
                Variant::FirstOffer
            } else {
                Variant::LastLook
            };
            for fr in &mut deal.first_refusals {
                fr.variant = variant;
            }
        }
        Strategy::OpenMarket => {
            deal.first_refusals.clear();
            deal.caps.clear();
        }
        Strategy::Capped => {
            // Shares are judged award by award, so a cap needs usage to share against:
            // the deal's own caps' base and window are kept.
            let hhi_alert = deal.caps.iter().find_map(|c| c.hhi_alert);
            let window = deal.caps.iter().find_map(|c| c.window);
            let base = deal
                .caps
                .first()
                .map(|c| c.base.clone())
                .unwrap_or_default();
            deal.caps = vec![ConcentrationCap {
                clause: ClauseRef {
                    kind: "concentration_cap",
                    index: 0,
                    name: Some(format!("simulated cap at {cap}")),
                    location: deal.location.clone(),
                },
                max_share: cap,
                window,
                binds_holder: true,
                hhi_alert,
                basis: CapBasis::GpuHours,
                providers: Default::default(),
                base,
            }];
        }
        Strategy::Ordered => {
            deal.first_refusals.clear();
            deal.caps.clear();
            deal.sourcing.allocation = Allocation::Ordered;
        }
        // Changed by its amendments as the run goes, not before.
        Strategy::Amended => {}
    }
    deal
}

/// Every run of every strategy, in the scenario's strategy order: `results[s][r]`.
pub struct Outcome {
    pub results: Vec<Vec<run::RunResult>>,
}

/// Runs the scenario: `scenario.runs` runs of each strategy, spread over the cores.
/// `progress` is called once per finished run of one strategy.
pub fn simulate(scenario: &Scenario, progress: &(dyn Fn() + Sync)) -> Outcome {
    let by_run: Vec<Vec<run::RunResult>> = (0..scenario.runs)
        .into_par_iter()
        .map(|r| {
            // Each run has its own copy of the deal's ids (and draws its own), so
            // that runs on different cores never share an id's count.
            let deal = scenario.deal.detached();
            let drawn = run::draw(scenario, r);
            scenario
                .strategies
                .iter()
                .map(|&strategy| {
                    let deal = Arc::new(deal_for(&deal, strategy, scenario.cap));
                    let mut sim = run::Sim::new(scenario, deal, &drawn, r);
                    if strategy == Strategy::Amended {
                        sim.schedule(&scenario.amendments);
                    }
                    let result = sim.run();
                    progress();
                    result
                })
                .collect()
        })
        .collect();
    let mut results: Vec<Vec<run::RunResult>> = vec![Vec::new(); scenario.strategies.len()];
    for runs in by_run {
        for (s, result) in runs.into_iter().enumerate() {
            results[s].push(result);
        }
    }
    Outcome { results }
}
