//! The broker when storage fails or is damaged, on a real SQLite file.
//!
//! A commit that fails: the commands in it are refused, nothing of them is kept in the
//! broker's state or in the log, and the broker goes on once the store writes again. The
//! failure is real: another connection holds SQLite's write lock for longer than the
//! broker's busy timeout.
//!
//! A damaged log: the broker does not start on a log it cannot fold; an entry that does
//! not parse, or a missing entry, is named in the error, and nothing is written.
//!
//! A needs projection that disagrees with the log (a row changed, missing or extra) is
//! rebuilt from the log at start.

use std::time::Duration;

use rofr_engine::command::Command;
use rofr_engine::need::NeedSpec;
use rofr_engine::types::{Gpus, NeedId, Price, Sku, Workload};
use rofr_server::{Broker, BrokerError, Clock, Party};
mod common;
use common::{origin, DEAL};
use rofr_store::Location;

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

/// Submits every need of `ids` from `clients` tasks at once, each taking its share in
/// order, and waits until every one is acknowledged.
async fn submit_all(broker: &Broker, ids: &[String], clients: usize) {
    let mut tasks = Vec::new();
    for share in ids.chunks(ids.len().div_ceil(clients).max(1)) {
        let broker = broker.clone();
        let share = share.to_vec();
        tasks.push(tokio::spawn(async move {
            for id in share {
                broker.execute(Party::Buyer, need(&id), None).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

fn open(dir: &std::path::Path) -> Result<Broker, BrokerError> {
    Broker::open(
        &Location::Sqlite(dir.join("rofr.db")),
        Some(("deal.toml", DEAL)),
        Clock::scaled(origin(), 1.0),
        Some(&dir.join("ledger-key")),
    )
}

/// Which of `ids` the broker's state holds, and the needs named in its log.
fn held(broker: &Broker, ids: &[&str]) -> (Vec<String>, Vec<String>) {
    let state: Vec<String> = ids
        .iter()
        .filter(|id| {
            let id = NeedId::parse(id).unwrap();
            broker.read(|e| e.state().has_need(id.as_str()))
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
    let broker = open(dir.path()).unwrap();
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
                .read_committed(move |e| e.state().has_need(id.as_str()))
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
    let reopened = open(dir.path()).unwrap();
    assert_eq!(held(&reopened, &ids), (expected.clone(), expected));
    reopened.shutdown();
}

/// A log of three needs (each submitted and offered: six entries), the broker stopped.
async fn log_of_three_needs(dir: &std::path::Path) -> u64 {
    let broker = open(dir).unwrap();
    for id in ["n1", "n2", "n3"] {
        broker.execute(Party::Buyer, need(id), None).await.unwrap();
    }
    broker.shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let entries = broker.store(|s| s.event_count()).unwrap();
    drop(broker);
    entries
}

fn count(dir: &std::path::Path) -> i64 {
    let db = rusqlite::Connection::open(dir.join("rofr.db")).unwrap();
    db.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

/// Runs `statements` on the broker's database in `dir`, behind its back.
fn tamper(dir: &std::path::Path, statements: &[String]) {
    let db = rusqlite::Connection::open(dir.join("rofr.db")).unwrap();
    for statement in statements {
        db.execute(statement, []).unwrap();
    }
}

/// A statement that puts JSON that is no event in place of entry `idx`.
fn spoil(idx: u64) -> String {
    format!("UPDATE events SET data = CAST('{{\"not\": \"an event\"}}' AS BLOB) WHERE idx = {idx}")
}

/// Why the broker in `dir` refuses to start.
fn refusal(dir: &std::path::Path) -> String {
    open(dir)
        .err()
        .expect("the broker refused to start")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_that_does_not_parse_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let entries = log_of_three_needs(dir.path()).await;
    assert!(entries >= 6, "{entries} entries");
    tamper(dir.path(), &[spoil(3)]);
    let error = refusal(dir.path());
    assert!(
        error.starts_with("event 3 in the log does not parse"),
        "{error}"
    );
    assert_eq!(count(dir.path()), entries as i64, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_a_bad_entry_and_a_later_gap_the_first_is_named() {
    // The log is read on one thread and parsed on another: the error named is still
    // the first in the log.
    let dir = tempfile::tempdir().unwrap();
    log_of_three_needs(dir.path()).await;
    tamper(
        dir.path(),
        &[spoil(1), "DELETE FROM events WHERE idx = 4".into()],
    );
    let error = refusal(dir.path());
    assert!(
        error.starts_with("event 1 in the log does not parse"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let entries = log_of_three_needs(dir.path()).await;
    tamper(dir.path(), &["DELETE FROM events WHERE idx = 2".into()]);
    assert_eq!(refusal(dir.path()), "the log jumps from entry 1 to entry 3");
    assert_eq!(count(dir.path()), entries as i64 - 1, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_that_disagrees_with_the_log_is_rebuilt_at_start() {
    let edits = [
        "UPDATE needs SET status = 'completed', awarded = 8 WHERE id = 'n2'",
        "DELETE FROM needs WHERE id = 'n3'",
        "INSERT INTO needs (id, status, sku, gpus, awarded, submitted_at, updated_at, first_event, last_event)
         VALUES ('n0', 'waiting', 'H100', 1, 0, 'x', 'x', 0, 0)",
    ];
    for edit in edits {
        let dir = tempfile::tempdir().unwrap();
        log_of_three_needs(dir.path()).await;
        let rows = || {
            let store = rofr_store::SqliteStore::open(&dir.path().join("rofr.db")).unwrap();
            rofr_store::Store::list_needs(&store, None, None, 100).unwrap()
        };
        let written = rows();
        assert_eq!(written.len(), 3, "{written:?}");
        let db = rusqlite::Connection::open(dir.path().join("rofr.db")).unwrap();
        db.execute(edit, []).unwrap();
        drop(db);
        assert_ne!(rows(), written, "{edit}");
        let broker = open(dir.path()).unwrap();
        broker.shutdown();
        drop(broker);
        assert_eq!(rows(), written, "after {edit}");
    }
}

/// Rows held back are written by sweeps of a few thousand at a time, in order of id,
/// with no list query asking for them: after 5,000 needs every one has its row, as the
/// broker's own list (which writes whatever is still held back) then gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeps_write_every_row_held_back() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).unwrap();
    let ids: Vec<String> = (0..5_000).map(|i| format!("n{i:05}")).collect();
    submit_all(&broker, &ids, 50).await;
    let rows = || {
        let store = rofr_store::SqliteStore::open(&dir.path().join("rofr.db")).unwrap();
        rofr_store::Store::list_needs(&store, None, None, 10_000).unwrap()
    };
    let waited = std::time::Instant::now();
    let mut written = rows();
    while written.len() < 5_000 && waited.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        written = rows();
    }
    assert_eq!(written.len(), 5_000, "rows written without a list query");
    let written_ids: Vec<String> = written.iter().map(|r| r.id.clone()).collect();
    assert_eq!(written_ids, ids);
    broker.projected().await.unwrap();
    assert_eq!(
        rows(),
        written,
        "the rows swept are the rows a list query writes"
    );
    broker.shutdown();
}

/// Whether the ledger's answers for a log of `entries` entries verify against a fresh
/// checkpoint: inclusion of entries in forgotten blocks of the tree and in the last
/// one, consistency from sizes inside forgotten blocks, and the evidence of the first
/// need, every entry of which lies in the first four blocks.
async fn ledger_answers_verify(broker: &Broker) {
    let (size, note) = broker.checkpoint_now().unwrap();
    assert!(size > 1024, "the log reaches past the tree's first block");
    let key = rofr_ledger::VerifierKey::parse(&broker.ledger(|l| l.verifier_key())).unwrap();
    let checkpoint = rofr_ledger::Checkpoint::parse(key.open(&note).unwrap()).unwrap();
    let rows = broker.store(|s| s.all_events()).unwrap();
    assert_eq!(rows.len() as u64, size);
    for index in [0, 5, 1023, 1024, size - 1] {
        let proof = broker
            .ledger_with_log(|l, log| l.inclusion_proof(index, size, log))
            .unwrap()
            .unwrap();
        let leaf = rofr_ledger::leaf_hash(&rows[index as usize].data);
        assert!(
            rofr_ledger::verify_inclusion(index, size, &leaf, &proof, &checkpoint.root),
            "entry {index} of {size}"
        );
    }
    for old in [1, 100, 1024, 1100] {
        let mut full = rofr_ledger::MerkleTree::new();
        for row in &rows[..old as usize] {
            full.append(&row.data);
        }
        let proof = broker
            .ledger_with_log(|l, log| l.consistency_proof(old, size, log))
            .unwrap()
            .unwrap();
        assert!(
            rofr_ledger::verify_consistency(
                old,
                size,
                &full.root(old).unwrap(),
                &checkpoint.root,
                &proof
            ),
            "{old} -> {size}"
        );
    }
    // The need submitted first: 600 clients submit at once, so which one that is
    // depends on scheduling, not on its name.
    let first = &rows
        .iter()
        .find(|r| r.kind == "need_submitted")
        .unwrap()
        .need;
    let bundle = broker.evidence(first, None).await.unwrap().unwrap();
    let json = serde_json::to_vec(&bundle).unwrap();
    let report = rofr_ledger::evidence::verify(&json, &key).unwrap();
    assert_eq!(&report.need, first);
    assert!(
        bundle.entries.iter().all(|e| e.index < 1024),
        "{first}: {:?}",
        bundle.entries.iter().map(|e| e.index).collect::<Vec<_>>()
    );
}

/// The broker's ledger tree keeps only its top levels for whole blocks of 256 entries
/// and reads a block's entries back from the log when a proof needs them: the proofs
/// verify, before and after a restart, and a log changed behind the broker's back is
/// refused with the entries named rather than proved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_read_forgotten_leaves_back_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).unwrap();
    let ids: Vec<String> = (0..600).map(|i| format!("m{i:03}")).collect();
    submit_all(&broker, &ids, 600).await;
    ledger_answers_verify(&broker).await;

    broker.shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(broker);
    let broker = open(dir.path()).unwrap();
    ledger_answers_verify(&broker).await;

    let db = rusqlite::Connection::open(dir.path().join("rofr.db")).unwrap();
    db.execute(
        "UPDATE events SET data = CAST(data || X'20' AS BLOB) WHERE idx = 7",
        [],
    )
    .unwrap();
    drop(db);
    let size = broker.store(|s| s.event_count()).unwrap();
    let error = broker
        .ledger_with_log(|l, log| l.inclusion_proof(3, size, log))
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("entries 0..256 read back do not hash"),
        "{error}"
    );
    broker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_begins_with_its_deal_and_is_reopened_from_it() {
    let dir = tempfile::tempdir().unwrap();
    log_of_three_needs(dir.path()).await;
    let db = rusqlite::Connection::open(dir.path().join("rofr.db")).unwrap();
    let (need, kind, data): (String, String, Vec<u8>) = db
        .query_row(
            "SELECT need, kind, data FROM events WHERE idx = 0",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((need.as_str(), kind.as_str()), ("", "deal_adopted"));
    let entry: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(entry["version"], 1);
    assert_eq!(entry["file"], "deal.toml");
    assert_eq!(entry["text"], DEAL, "the file's bytes, exactly");
    use sha2::Digest;
    assert_eq!(entry["sha256"], hex::encode(sha2::Sha256::digest(DEAL)));
    let submitted: Vec<u8> = db
        .query_row(
            "SELECT data FROM events WHERE kind = 'need_submitted' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let submitted: serde_json::Value = serde_json::from_slice(&submitted).unwrap();
    assert_eq!(
        submitted["deal_version"], 1,
        "a need names its deal's version"
    );

    // The deal kept beside the log does not count: a broker opened without a deal
    // file (a replica) takes it from the log.
    db.execute(
        "UPDATE meta SET value = 'not a deal' WHERE key = 'deal'",
        [],
    )
    .unwrap();
    drop(db);
    let broker = Broker::open(
        &Location::Sqlite(dir.path().join("rofr.db")),
        None,
        Clock::scaled(origin(), 1.0),
        Some(&dir.path().join("ledger-key")),
    )
    .unwrap();
    assert_eq!(broker.deal_text(), DEAL);
    assert_eq!(broker.read(|e| e.deal_version()), 1);
    broker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deal_entry_changed_by_one_byte_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let entries = log_of_three_needs(dir.path()).await;
    // `first_offer` becomes `first_offeR` inside the entry's text, leaving its hash.
    tamper(
        dir.path(),
        &["UPDATE events SET data = CAST(REPLACE(CAST(data AS TEXT), 'first_offer', 'first_offeR') AS BLOB) WHERE idx = 0".into()],
    );
    let error = refusal(dir.path());
    assert!(
        error.starts_with("entry 0 of the log adopts a deal whose text does not match its SHA-256"),
        "{error}"
    );
    assert_eq!(count(dir.path()), entries as i64, "nothing was written");
}
