//! What the broker's black-box tests share: the deal they run on and its start.

use rofr_engine::types::Timestamp;

#[allow(dead_code)]
pub mod signed_log;
#[allow(dead_code)]
pub mod witnessed;

/// Three providers; azure holds a first-offer right on everything.
pub const DEAL: &str = r#"
[deal]
name = "api-test"

[[provider]]
id = "azure"

[[provider]]
id = "oracle"

[[provider]]
id = "coreweave"

[[first_refusal]]
holder = "azure"
variant = "first_offer"
window = "72h"
partial = true
term = { from = 2025-01-01 }
offer_prices = { H100 = 6.0 }
"#;

/// The model time the tests' brokers start at, inside the deal's term.
pub fn origin() -> Timestamp {
    Timestamp::parse("2025-02-03T00:00:00Z").unwrap()
}

/// A need for H100s in the deal's scope, as the API takes it.
#[allow(dead_code)]
pub fn need(id: &str, gpus: i64) -> serde_json::Value {
    serde_json::json!({
        "id": id, "sku": "H100", "gpus": gpus, "hours": 100, "workload": "training",
        "earliest_start": "2025-02-10T00:00:00Z", "latest_start": "2025-04-01T00:00:00Z",
        "max_price_per_gpu_hour": 8.0, "decide_by": "2025-04-01T00:00:00Z"
    })
}
