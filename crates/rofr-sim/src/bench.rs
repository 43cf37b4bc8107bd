//! The scenario `rofr bench simulate` runs: three years, eight providers, about 50,000
//! needs per run, written as TOML so that it goes through the same parser as any other.

use std::fmt::Write;
use std::sync::Arc;

use rofr_engine::deal::parse_deal;

use crate::scenario::{parse_scenario, Scenario, Strategy};

const SKUS: [(&str, f64); 3] = [("H100", 6.0), ("H200", 7.0), ("GB200", 9.5)];

/// Eight providers, the first holding a `first_offer` right over training and
/// inference; twelve launch streams every 25 hours over 2025–2027, each launch asked for
/// in four needs: about 50,000 needs drawn per run (50,232 in run 0).
pub fn scenario(runs: u32, strategy: Strategy) -> Scenario {
    let mut deal = String::from(
        "[deal]\nname = \"bench\"\n\n[sourcing]\nquote_window = \"24h\"\nconfirm_window = \"48h\"\nretry_after = \"24h\"\n",
    );
    for p in 1..=8 {
        let _ = write!(deal, "\n[[provider]]\nid = \"p{p}\"\n");
    }
    deal.push_str(
        r#"
[[first_refusal]]
holder = "p1"
variant = "first_offer"
window = "72h"
partial = true
reoffer_threshold = 0.05
third_party_window = "45d"
term = { from = 2024-01-01 }

[first_refusal.scope]
workloads = ["training", "inference"]

[[concentration_cap]]
max_share = 0.6
window = "90d"
binds_holder = false
base = { p1 = 1000000, p2 = 200000, p3 = 200000 }
"#,
    );
    let mut text = format!(
        r#"[scenario]
name = "bench: three years, eight providers"
deal = "bench-deal.toml"
start = 2025-01-01
end = 2028-01-01
step = "7d"
runs = {runs}
seed = 7
strategies = ["{}"]
cap = 0.4

[demand]
growth = 0.03
noise = 0.3
lead = "21d"
split = 4
"#,
        strategy.as_str()
    );
    let workloads = ["training", "inference", "research"];
    for s in 0..12 {
        let (sku, price) = SKUS[s % SKUS.len()];
        let _ = write!(
            text,
            "\n[[demand.stream]]\nname = \"stream-{s}\"\ndate = 2025-01-{:02}\nevery = \"25h\"\nsku = \"{sku}\"\ngpus = {}\nhours = {}\nflexibility = \"7d\"\nworkload = \"{}\"\nmax_price = {}\n",
            1 + s,
            128 + 32 * s,
            168 * (1 + s % 4),
            workloads[s % workloads.len()],
            price * 1.5
        );
    }
    for p in 1..=8u32 {
        let _ = write!(
            text,
            "\n[[provider]]\nid = \"p{p}\"\nanswer_delay = \"{}h\"\nlead_time = \"{}d\"\ndecline_probability = 0.05\nsilence_probability = 0.02\nfailure_probability = 0.01\nprice_drift = {}\nprices = {{ {} }}\ncapacity = [\n",
            2 + p * 2,
            3 + p * 2,
            if p % 2 == 0 { -0.005 } else { 0.003 },
            SKUS.iter()
                .map(|(sku, price)| format!("{sku} = {:.2}", price * (0.85 + 0.04 * f64::from(p))))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (k, (sku, _)) in SKUS.iter().enumerate() {
            for (year, growth) in [(2025, 1.0), (2026, 1.6), (2027, 2.4)] {
                let gpus = (f64::from(3000 + 750 * ((p + k as u32) % 4)) * growth) as u32;
                let _ = writeln!(
                    text,
                    "  {{ from = {year}-01-01, sku = \"{sku}\", gpus = {gpus} }},"
                );
            }
        }
        text.push_str("]\n");
    }
    let deal = Arc::new(parse_deal("bench-deal.toml", &deal).expect("the bench deal parses"));
    parse_scenario("bench.toml", &text, deal).unwrap_or_else(|errors| {
        panic!(
            "the bench scenario parses: {}",
            errors.iter().map(|e| e.to_string()).collect::<String>()
        )
    })
}
