//! The PostgreSQL store against a real server: appends from several connections take
//! turns and leave one gapless log, and a connection lost inside a transaction writes
//! nothing. Reads `ROFR_TEST_DATABASE_URL`; where it is unset the tests say so and pass
//! without running.

use rofr_store::{Batch, NewEvent, PostgresStore, ScratchDatabase, Store};

fn scratch(test: &str) -> Option<ScratchDatabase> {
    ScratchDatabase::for_test("rofr_store", test)
}

fn event(writer: usize, n: usize) -> NewEvent {
    let data = format!("{{\"writer\":{writer},\"n\":{n}}}").into_bytes();
    NewEvent {
        need: format!("w{writer}"),
        kind: "need_submitted".into(),
        at: "2025-01-01T00:00:00Z".into(),
        leaf_hash: [writer as u8; 32],
        data,
    }
}

#[test]
fn appends_from_four_connections_make_one_gapless_log() {
    let Some(database) = scratch("appends_from_four_connections_make_one_gapless_log") else {
        return;
    };
    let url = database.url().to_owned();
    std::thread::scope(|scope| {
        for writer in 0..4 {
            let url = url.clone();
            scope.spawn(move || {
                let mut store = PostgresStore::open(&url).unwrap();
                for n in 0..50 {
                    store.begin_exclusive().unwrap();
                    // What others committed is visible under the lock.
                    let seen = store.event_count().unwrap();
                    let first = store
                        .commit(&Batch {
                            events: vec![event(writer, 2 * n), event(writer, 2 * n + 1)],
                            ..Batch::default()
                        })
                        .unwrap();
                    assert_eq!(first, seen, "appended right after what it saw");
                }
            });
        }
    });
    let store = PostgresStore::open(&url).unwrap();
    let events = store.all_events().unwrap();
    assert_eq!(events.len(), 400);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.index, i as u64);
    }
    // Each writer's two events of a batch are adjacent: batches never interleave.
    for pair in events.chunks(2) {
        assert_eq!(pair[0].need, pair[1].need);
    }
}

#[test]
fn a_connection_lost_inside_a_transaction_writes_nothing_and_the_next_one_reconnects() {
    let Some(database) = scratch(
        "a_connection_lost_inside_a_transaction_writes_nothing_and_the_next_one_reconnects",
    ) else {
        return;
    };
    let mut store = PostgresStore::open(database.url()).unwrap();
    store.begin_exclusive().unwrap();
    // Another session ends every connection but its own, as a server restart would.
    let killed = kill_other_connections(database.url());
    assert!(killed >= 1);
    // A read inside the lost transaction fails, and the store now knows the connection
    // is gone; the commit that follows must not reconnect and write without the lock.
    assert!(store.event_count().is_err());
    let lost = store.commit(&Batch {
        events: vec![event(0, 0)],
        ..Batch::default()
    });
    assert!(lost.is_err(), "the commit of a lost transaction fails");
    let fresh = PostgresStore::open(database.url()).unwrap();
    assert_eq!(fresh.event_count().unwrap(), 0, "nothing of it was written");
    // The store noticed the loss: its next write opens a new connection and goes
    // through.
    store.abort().unwrap();
    let first = store
        .commit(&Batch {
            events: vec![event(0, 1)],
            ..Batch::default()
        })
        .unwrap();
    assert_eq!(first, 0);
    assert_eq!(store.event_count().unwrap(), 1);
}

/// Terminates every other connection to the database; returns how many.
fn kill_other_connections(url: &str) -> usize {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let rows = client
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    rows.len()
}

#[test]
fn a_webhook_delivery_is_claimed_by_one_broker_at_a_time() {
    let Some(database) = scratch("a_webhook_delivery_is_claimed_by_one_broker_at_a_time") else {
        return;
    };
    let mut a = PostgresStore::open(database.url()).unwrap();
    let mut b = PostgresStore::open(database.url()).unwrap();
    let deliveries = (0..20)
        .map(|n| rofr_store::NewDelivery {
            provider: "azure".into(),
            event_offset: n,
            body: format!("{{\"n\":{n}}}"),
            due_ms: 1_000,
        })
        .collect();
    a.commit(&Batch {
        events: (0..20).map(|n| event(0, n)).collect(),
        deliveries,
        ..Batch::default()
    })
    .unwrap();
    // Both claim at once; every due delivery goes to exactly one of them.
    let (mine, theirs) = std::thread::scope(|scope| {
        let one = scope.spawn(|| a.claim_deliveries(2_000, 60_000, 15).unwrap());
        let other = scope.spawn(|| b.claim_deliveries(2_000, 60_000, 15).unwrap());
        (one.join().unwrap(), other.join().unwrap())
    });
    let mut ids: Vec<i64> = mine.iter().chain(&theirs).map(|d| d.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        mine.len() + theirs.len(),
        "no delivery claimed twice"
    );
    assert_eq!(ids.len(), 20, "every due delivery claimed");
    // Within the lease nobody takes them again; after it they come back.
    assert!(a.claim_deliveries(3_000, 60_000, 50).unwrap().is_empty());
    assert_eq!(a.claim_deliveries(70_000, 60_000, 50).unwrap().len(), 20);
}
