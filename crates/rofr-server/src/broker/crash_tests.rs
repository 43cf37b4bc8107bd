//! A broker that dies at each named failure point ([`super::fail`]) loses nothing it
//! acknowledged, leaves nothing half written, and restarts into the state a replay of
//! its log gives.
//!
//! Each case runs this test binary again as a child, armed to abort at the third time
//! it reaches one point (a real crash: no destructor runs, nothing is flushed). The
//! child submits needs and has the holder accept them, on a real SQLite file, writing
//! down every answer it was given. The test then reads what the child left: the ledger
//! audits clean; every stored idempotent answer and webhook delivery quotes entries the
//! log holds, byte for byte; a broker restarted on the file gives each acknowledged
//! command its first answer again, byte for byte; its state and projection equal a
//! replay of the log from its first entry; and it goes on taking commands.

use std::io::Write as _;
use std::path::Path;

use rofr_engine::log::Entry;
use rofr_engine::need::NeedSpec;
use rofr_engine::types::{NeedId, ProviderId, Timestamp};
use rofr_engine::{Command, Engine};
use rofr_ledger::VerifierKey;
use rofr_store::{Location, ScratchDatabase};
use serde_json::{json, Value};

use super::fail::FailPoint;
use super::{Broker, Idempotency, Outcome, Party};
use crate::ledger::CheckpointPolicy;
use crate::Clock;

const DEAL: &str = include_str!("../../../../examples/deals/stargate.toml");
/// Commands the child sends at most: more than any point needs to be reached thrice.
const COMMANDS: usize = 60;

fn origin() -> Timestamp {
    Timestamp::parse("2025-02-03T00:00:00Z").expect("a valid time")
}

fn holder() -> ProviderId {
    ProviderId::parse("azure").expect("a valid id")
}

/// The child's `i`-th command, its party and its idempotency key: even ones submit a
/// need, odd ones have the holder accept the need just submitted.
fn command(i: usize) -> (Party, Command, Idempotency) {
    let id = format!("crash-{}", i / 2);
    let now = origin();
    let (party, command) = if i % 2 == 0 {
        let need: NeedSpec = serde_json::from_value(json!({
            "id": id,
            "sku": "H100",
            "gpus": 16,
            "earliest_start": now.plus_seconds(86_400).to_string(),
            "latest_start": now.plus_seconds(10 * 86_400).to_string(),
            "hours": 48,
            "workload": "training",
            "max_price_per_gpu_hour": 9.0,
            "decide_by": now.plus_seconds(5 * 86_400).to_string(),
        }))
        .expect("the need parses");
        (Party::Buyer, Command::SubmitNeed { need })
    } else {
        let accept = Command::Accept {
            provider: holder(),
            need: NeedId::parse(&id).expect("a valid id"),
            offer: None,
            gpus: None,
            price: None,
        };
        (Party::Provider(holder()), accept)
    };
    let idempotency = Idempotency {
        key: format!("key-{i}"),
        request_hash: format!("request-{i}"),
    };
    (party, command, idempotency)
}

/// Opens a broker on `location` with the ledger's key at `key`, checkpointing every
/// few entries and announcing the holder's events by webhook.
fn open(location: &Location, key: &Path) -> Broker {
    let clock = Clock::scaled(origin(), 1.0);
    let broker = Broker::open(location, Some(("stargate.toml", DEAL)), clock, Some(key))
        .expect("the broker opens");
    broker.set_checkpoint_policy(CheckpointPolicy {
        every_entries: 3,
        every: std::time::Duration::from_secs(3600),
    });
    broker.allow_private_webhooks(true);
    broker
        .set_webhook(&holder(), "http://127.0.0.1:9/hook")
        .expect("the webhook registers");
    broker
}

/// The child: opens a broker on `ROFR_FAIL_DB` (a SQLite file or a PostgreSQL URL)
/// with the key `ROFR_FAIL_KEY`, sends the commands one by one, and appends each
/// answer it gets to the file `ROFR_FAIL_ACKS` as a JSON line before sending the
/// next. Run only by
/// [`each_failure_point_loses_nothing_acknowledged`].
#[test]
#[ignore = "run as a child process by each_failure_point_loses_nothing_acknowledged"]
fn crashing_child() {
    let (Ok(database), Ok(key), Ok(acks)) = (
        std::env::var("ROFR_FAIL_DB"),
        std::env::var("ROFR_FAIL_KEY"),
        std::env::var("ROFR_FAIL_ACKS"),
    ) else {
        panic!("the child runs with ROFR_FAIL_DB, ROFR_FAIL_KEY and ROFR_FAIL_ACKS set");
    };
    let location: Location = database.parse().expect("a database location");
    let mut acks = std::fs::File::create(acks).expect("the answers file opens");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let broker = open(&location, Path::new(&key));
        for i in 0..COMMANDS {
            let (party, command, idempotency) = command(i);
            let answer = broker
                .execute(party, command, Some(idempotency))
                .await
                .expect("the command is accepted");
            let created = answer.outcome == Outcome::Created;
            let line = json!({"i": i, "created": created, "body": answer.body});
            // One write: a crash on another thread may still cut it short.
            acks.write_all(format!("{line}\n").as_bytes())
                .expect("the answer is written down");
        }
    });
}

/// Where a case's child and its restart keep their things.
struct Case {
    location: Location,
    database: String,
    key: std::path::PathBuf,
    acks: std::path::PathBuf,
}

/// Runs the child armed at `point`; returns the answers it was given.
fn crash_at(point: FailPoint, case: &Case) -> Vec<Value> {
    let output = std::process::Command::new(std::env::current_exe().expect("this test binary"))
        .args([
            "--exact",
            "broker::crash_tests::crashing_child",
            "--ignored",
            "--nocapture",
        ])
        .env("ROFR_FAIL_AT", format!("{}:3", point.name()))
        .env("ROFR_FAIL_DB", &case.database)
        .env("ROFR_FAIL_KEY", &case.key)
        .env("ROFR_FAIL_ACKS", &case.acks)
        .output()
        .expect("the child runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(&format!("failing at {}", point.name())),
        "the child did not die at {}: {}\n{stderr}",
        point.name(),
        output.status
    );
    let text = std::fs::read_to_string(&case.acks).unwrap_or_default();
    // The crash may cut the last line short (a checkpoint is signed, or a webhook
    // queued, while the child writes down an answer): that answer was not yet noted.
    let whole = text.rsplit_once('\n').map_or("", |(whole, _)| whole);
    whole
        .lines()
        .map(|line| serde_json::from_str(line).expect("an answer line"))
        .collect()
}

/// The log's entries, by index.
fn log_of(location: &Location) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    let store = location.open().expect("the store opens");
    store
        .scan_log(&mut |index, data, _| {
            assert_eq!(index, entries.len() as u64, "the log has no gaps");
            entries.push(data.to_vec());
            true
        })
        .expect("the log reads");
    entries
}

/// Checks that `body` (`{"need", "events": [{"index", "event"}…]}`) quotes the log.
fn quotes_the_log(body: &str, log: &[Vec<u8>], what: &str) {
    let body: Value = serde_json::from_str(body).expect("a JSON body");
    let events = body["events"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| vec![body]);
    for event in events {
        let index = event["index"].as_u64().expect("an index") as usize;
        let entry = log
            .get(index)
            .unwrap_or_else(|| panic!("{what} quotes entry {index}, which the log lacks"));
        let stored: Value = serde_json::from_slice(entry).expect("the entry parses");
        assert_eq!(
            event["event"], stored,
            "{what} quotes entry {index} as the log holds it"
        );
    }
}

/// The log replayed into a fresh engine, one entry at a time.
fn replay(broker: &Broker, log: &[Vec<u8>]) -> Engine {
    let entries: Vec<Entry> = log
        .iter()
        .map(|data| Entry::from_json(data).expect("the entry parses"))
        .collect();
    let start = entries.first().map_or(origin(), Entry::at);
    let mut engine = Engine::new(broker.deal().clone(), start);
    for entry in &entries {
        engine.apply_entry(entry).expect("a broker's log folds");
    }
    engine
}

fn check_restart(point: FailPoint, case: &Case, acks: &[Value]) {
    let location = &case.location;
    assert!(
        !acks.is_empty(),
        "at {}: the child was answered before it died",
        point.name()
    );
    let log = log_of(location);
    let store = location.open().expect("the store opens");
    // Nothing half written: each stored answer and delivery quotes what the log holds.
    for i in 0..COMMANDS {
        let (party, _, idempotency) = command(i);
        if let Some(stored) = store.idempotent(&party.key(), &idempotency.key).unwrap() {
            quotes_the_log(&stored.body, &log, "a stored answer");
        }
    }
    for delivery in store.list_deliveries(None, 1_000).unwrap() {
        quotes_the_log(&delivery.body, &log, "a delivery");
    }
    drop(store);

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let broker = open(location, &case.key);
        let key = broker.ledger(|l| l.verifier_key());
        let verifier = VerifierKey::parse(&key).expect("the ledger's key parses");
        let audit = crate::ledger::audit(location, &verifier).expect("the audit runs");
        assert_eq!(
            audit.problem,
            None,
            "at {}: the ledger audits clean",
            point.name()
        );
        assert_eq!(audit.entries, log.len() as u64);

        // Nothing acknowledged was lost: each answer comes back the same, byte for byte.
        for ack in acks {
            let i = ack["i"].as_u64().expect("an index") as usize;
            let (party, command, idempotency) = command(i);
            let again = broker
                .execute(party, command, Some(idempotency))
                .await
                .expect("an acknowledged command is answered again");
            assert!(
                again.replayed,
                "at {}: command {i} was acknowledged, then lost",
                point.name()
            );
            assert_eq!(again.body, ack["body"].as_str().expect("a body"));
            assert_eq!(again.outcome == Outcome::Created, ack["created"] == true);
        }

        // The state is a replay of the log, and so are the projection's rows.
        let replayed = replay(&broker, &log);
        let now = broker.read(|e| serde_json::to_value(crate::views::summary(e)).unwrap());
        let then = serde_json::to_value(crate::views::summary(&replayed)).unwrap();
        assert_eq!(now, then, "at {}: the state equals a replay", point.name());
        broker.projected().await.expect("the projection is written");
        let rows = broker.store(|s| s.list_needs(None, None, 1_000)).unwrap();
        let state = replayed.state();
        assert_eq!(rows.len(), state.needs().count(), "one row per need");
        for row in rows {
            let need = state
                .need(row.id.as_str())
                .expect("a row for a need of the log");
            assert_eq!(row.status, need.status().as_str(), "need {}", row.id);
            assert_eq!(row.awarded, need.awarded().get(), "need {}", row.id);
        }

        // And the broker goes on.
        let (party, command, idempotency) = command(COMMANDS + 2);
        let next = broker.execute(party, command, Some(idempotency)).await;
        assert!(
            next.is_ok(),
            "at {}: a new command is taken: {next:?}",
            point.name()
        );
        broker.shutdown();
    });
}

/// A fresh database for one case: where it is, how the child names it, and what
/// drops it afterwards.
type Fresh = (Location, String, Option<ScratchDatabase>);

/// Each case on a fresh database that `fresh` makes in the temporary directory it is
/// given; none where it makes none.
fn every_point(points: &[FailPoint], fresh: impl Fn(&Path) -> Option<Fresh>) {
    for &point in points {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let Some((location, database, _scratch)) = fresh(dir.path()) else {
            return;
        };
        let case = Case {
            location,
            database,
            key: dir.path().join("ledger-key"),
            acks: dir.path().join("acks.jsonl"),
        };
        let acks = crash_at(point, &case);
        check_restart(point, &case, &acks);
    }
}

#[test]
fn each_failure_point_loses_nothing_acknowledged() {
    every_point(&FailPoint::ALL, |dir| {
        let path = dir.join("rofr.db");
        Some((
            Location::Sqlite(path.clone()),
            path.display().to_string(),
            None,
        ))
    });
}

/// Replicas commit on the writer's own connection; there is no committer thread.
#[test]
fn each_failure_point_loses_nothing_acknowledged_on_postgres() {
    let shared: Vec<FailPoint> = FailPoint::ALL
        .into_iter()
        .filter(|&p| p != FailPoint::InCommitter)
        .collect();
    every_point(&shared, |_| {
        let test = "each_failure_point_loses_nothing_acknowledged_on_postgres";
        let database = ScratchDatabase::for_test("rofr_crash", test)?;
        Some((
            database.location(),
            database.url().to_owned(),
            Some(database),
        ))
    });
}
