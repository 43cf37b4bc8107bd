//! A commit that fails: the commands in it are refused, nothing of them is kept in the
//! broker's state or in the log, and the broker goes on once the store writes again.
//! The failure is real: another connection holds SQLite's write lock for longer than the
//! broker's busy timeout.

use std::time::Duration;

use rofr_engine::command::Command;
use rofr_engine::need::NeedSpec;
use rofr_engine::types::{Gpus, NeedId, Price, Sku, Timestamp, Workload};
use rofr_server::{Broker, BrokerError, Clock, Party};
use rofr_store::Location;

const DEAL: &str = r#"
[deal]
name = "commit-failure"

[[provider]]
id = "azure"

[[provider]]
id = "oracle"

[[first_refusal]]
holder = "azure"
variant = "first_offer"
window = "72h"
partial = true
term = { from = 2025-01-01 }
offer_prices = { H100 = 6.0 }
"#;

fn origin() -> Timestamp {
    Timestamp::parse("2025-02-03T00:00:00Z").unwrap()
}

fn need(id: &str) -> Command {
    let now = origin();
    Command::SubmitNeed {
        need: NeedSpec {
            id: NeedId::parse(id).unwrap(),
            sku: Sku::parse("H100").unwrap(),
            gpus: Gpus(8),
            regions: Default::default(),
            earliest_start: now.plus_seconds(86_400),
            latest_start: now.plus_seconds(30 * 86_400),
            hours: 24,
            workload: Workload::parse("training").unwrap(),
            tags: Default::default(),
            max_price_per_gpu_hour: Price::from_dollars(8.0).unwrap(),
            offer_price_per_gpu_hour: None,
            priority: 0,
            launch: None,
            decide_by: now.plus_seconds(20 * 86_400),
        },
    }
}

fn open(path: &std::path::Path, key: &std::path::Path) -> Broker {
    Broker::open(
        &Location::Sqlite(path.to_owned()),
        Some(("deal.toml", DEAL)),
        Clock::scaled(origin(), 1.0),
        Some(key),
    )
    .unwrap()
}

/// Which of `ids` the broker's state holds, and the needs named in its log.
fn held(broker: &Broker, ids: &[&str]) -> (Vec<String>, Vec<String>) {
    let state: Vec<String> = ids
        .iter()
        .filter(|id| {
            let id = NeedId::parse(id).unwrap();
            broker.read(|e| e.state().needs.contains_key(&id))
        })
        .map(|id| id.to_string())
        .collect();
    let mut logged: Vec<String> = broker
        .store(|s| s.all_events())
        .unwrap()
        .into_iter()
        .map(|e| e.need)
        .filter(|n| !n.is_empty())
        .collect();
    logged.dedup();
    (state, logged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_refuses_its_commands_and_keeps_nothing_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rofr.db");
    let key = dir.path().join("ledger-key");
    let broker = open(&path, &key);
    broker
        .execute(Party::Buyer, need("before"), None)
        .await
        .unwrap();

    // Another connection takes the write lock and keeps it past the busy timeout.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut refused = Vec::new();
    for id in ["during-1", "during-2", "during-3"] {
        let broker = broker.clone();
        refused.push(tokio::spawn(async move {
            broker.execute(Party::Buyer, need(id), None).await
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The engine has run the first of them, but a read that answers a party waits for
    // the disk: it sees the need only if its commit succeeds, which it will not.
    let seen = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let id = NeedId::parse("during-1").unwrap();
            broker
                .read_committed(move |e| e.state().needs.contains_key(&id))
                .await
        })
    };
    for answer in refused {
        let answer = answer.await.unwrap();
        assert!(
            matches!(&answer, Err(BrokerError::Setup(m)) if m.starts_with("storage failed")),
            "expected a storage failure, got {answer:?}"
        );
    }
    blocker.execute_batch("ROLLBACK").unwrap();
    assert!(
        !seen.await.unwrap().unwrap(),
        "a read showed a need that was never on disk"
    );

    // The store writes again: the broker takes commands as before.
    broker
        .execute(Party::Buyer, need("after"), None)
        .await
        .unwrap();
    let ids = ["before", "during-1", "during-2", "during-3", "after"];
    let expected = vec!["before".to_string(), "after".to_string()];
    assert_eq!(held(&broker, &ids), (expected.clone(), expected.clone()));

    // A restart rebuilds the same state from the log.
    broker.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(broker);
    let reopened = open(&path, &key);
    assert_eq!(held(&reopened, &ids), (expected.clone(), expected));
    reopened.shutdown();
}
