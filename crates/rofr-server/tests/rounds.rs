//! A round the solver places under a binding cap, as the broker logs it: its
//! `sourcing_closed` carries the proof, and the need's evidence bundle tells it.

mod common;

use rofr_engine::deal::parse_deal;
use rofr_engine::types::ProviderId;
use rofr_engine::Command;
use rofr_server::{Broker, Clock, Party};
use rofr_store::Location;
use serde_json::json;

/// Three providers, no right, and a cap on oracle.
const DEAL: &str = r#"
provider = [{ id = "azure" }, { id = "oracle" }, { id = "coreweave" }]

[deal]
name = "rounds"

[[concentration_cap]]
max_share = 0.3
providers = ["oracle"]
base = { azure = 1000 }
"#;

fn command(value: serde_json::Value) -> Command {
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn a_round_placed_under_a_binding_cap_is_proven_in_its_event_and_evidence() {
    parse_deal("rounds.toml", DEAL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = Location::Sqlite(dir.path().join("rofr.db"));
    let broker = Broker::open(
        &path,
        Some(("rounds.toml", DEAL)),
        Clock::scaled(common::origin(), 1.0),
        Some(&dir.path().join("ledger-key")),
    )
    .unwrap();
    // No right applies: straight to quotes.
    let need = common::need("n1", 64);
    broker
        .execute(
            Party::Buyer,
            command(json!({"command": "submit_need", "need": need})),
            None,
        )
        .await
        .unwrap();
    // oracle is cheapest, but may hold at most 30% of 1,000 GPU-hours and what is
    // placed: cheapest first (all 64 GPUs, 6,400 GPU-hours) breaks the cap.
    for (provider, price) in [("oracle", 4.0), ("coreweave", 6.0), ("azure", 7.0)] {
        let quote = json!({"command": "quote", "provider": provider, "need": "n1", "gpus": 64, "price": price});
        let party = Party::Provider(ProviderId::parse(provider).unwrap());
        broker.execute(party, command(quote), None).await.unwrap();
    }
    let events: Vec<serde_json::Value> = broker
        .store(|s| s.all_events())
        .unwrap()
        .iter()
        .map(|e| serde_json::from_slice(&e.data).unwrap())
        .collect();
    let closed = events
        .iter()
        .find(|e| e["type"] == "sourcing_closed")
        .expect("the round closed once every provider quoted");
    let proof = &closed["proof"];
    assert_eq!(proof["status"], "optimal", "{closed}");
    assert_eq!(proof["needs"], 1);
    assert_eq!(proof["cost"], proof["bound"]);
    // The least cost: oracle's room (x ≤ 0.3 · (1,000 + 6,400) / 100 = 22.2 GPU-hours
    // a GPU, so 22 GPUs) at $4, the other 42 at coreweave's $6, 100 hours each.
    assert_eq!(
        proof["cost"],
        22.0 * 100.0 * 4.0 + 42.0 * 100.0 * 6.0,
        "{closed}"
    );
    let awards: Vec<(&str, u64)> = events
        .iter()
        .filter(|e| e["type"] == "award_made")
        .map(|e| (e["provider"].as_str().unwrap(), e["gpus"].as_u64().unwrap()))
        .collect();
    assert_eq!(awards, [("coreweave", 42), ("oracle", 22)]);

    let key = rofr_ledger::VerifierKey::parse(&broker.ledger(|l| l.verifier_key())).unwrap();
    let bundle = broker.evidence("n1", None).await.unwrap().unwrap();
    let report =
        rofr_ledger::evidence::verify(&serde_json::to_vec(&bundle).unwrap(), &key).unwrap();
    let story = report.lines.join("\n");
    assert!(
        story.contains(
            "round 1 closed with 64 GPUs placed at a cost proven least ($34000.00) among every placement of the quotes of 1 need(s) under the caps."
        ),
        "{story}"
    );
    broker.shutdown();
}
