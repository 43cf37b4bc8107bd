//! What the broker's black-box tests share: the deal they run on and its start.

use rofr_engine::types::Timestamp;

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
