//! The broker is killed with SIGKILL mid-stream and restarted: no acknowledged need is
//! lost, the state equals a replay of the log, and deadlines that passed while it was
//! down fire as of their own time.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{all_events, token, Server};
use rofr_engine::state::State;
use rofr_engine::types::Timestamp;
use rofr_engine::{Event, EventKind};
use serde_json::{json, Value};

const DEAL: &str = r#"
[deal]
name = "crash"

[sourcing]
quote_window = "30m"
confirm_window = "2h"
retry_after = "1h"

[[provider]]
id = "azure"

[[provider]]
id = "oracle"

[[first_refusal]]
holder = "azure"
variant = "first_offer"
window = "1h"
partial = true
term = { from = 2025-01-01 }
"#;

const T0: &str = "2025-02-03T00:00:00Z";

/// `rofr serve` at 3,600 model seconds per real second from `clock_start`.
fn serve(database: &Path, deal: Option<&Path>, clock_start: &str) -> Server {
    let mut extra = vec!["--speed", "3600", "--clock-start", clock_start];
    let deal = deal.map(|d| d.to_str().unwrap().to_owned());
    if let Some(deal) = &deal {
        extra.extend(["--deal", deal.as_str()]);
    }
    common::serve(database, &extra)
}

fn need(id: &str) -> Value {
    json!({
        "id": id, "sku": "H100", "gpus": 16, "hours": 24, "workload": "training",
        "earliest_start": "2025-02-10T00:00:00Z", "latest_start": "2025-04-01T00:00:00Z",
        "max_price_per_gpu_hour": 8.0, "decide_by": "2025-04-01T00:00:00Z"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_broker_loses_nothing_it_acknowledged_and_fires_overdue_deadlines_as_of_their_time(
) {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("rofr.db");
    let deal = dir.path().join("deal.toml");
    std::fs::write(&deal, DEAL).unwrap();

    let mut server = serve(&database, Some(&deal), T0);
    let url = server.url.clone();
    let buyer = token(&database, &["--party", "buyer"]);
    let auditor = token(&database, &["--party", "auditor"]);
    let client = reqwest::Client::new();

    // Four writers submit needs as fast as they can; the broker is killed under them.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, url, buyer, acknowledged) = (
            client.clone(),
            url.clone(),
            buyer.clone(),
            acknowledged.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let id = format!("w{w}-{i:05}");
                let sent = client
                    .post(format!("{url}/v1/needs"))
                    .bearer_auth(&buyer)
                    .json(&need(&id))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().as_u16() == 201 => {
                        acknowledged.lock().unwrap().push(id)
                    }
                    Ok(response) => panic!("unexpected answer {}", response.status()),
                    Err(_) => return,
                }
            }
        }));
    }
    while acknowledged.lock().unwrap().len() < 200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    // The broker comes back three model hours later: every offer's one-hour window has
    // passed while it was down.
    let restart_at = Timestamp::parse(T0).unwrap().plus_seconds(3 * 3600);
    let server = serve(&database, None, &restart_at.to_string());
    let url = server.url.clone();
    // The restarted broker's first tick fires the overdue deadlines; wait for it.
    let started = std::time::Instant::now();
    loop {
        let lapses = all_events(&client, &url, &auditor)
            .await
            .iter()
            .filter(|e| e["event"]["type"] == "offer_lapsed")
            .count();
        if lapses >= acknowledged.len() || started.elapsed() > std::time::Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    for id in &acknowledged {
        let response = client
            .get(format!("{url}/v1/needs/{id}"))
            .bearer_auth(&buyer)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status().as_u16(),
            200,
            "acknowledged need {id} was lost"
        );
    }

    let entries = all_events(&client, &url, &auditor).await;
    let events: Vec<Event> = common::events_in(&entries);
    let indexes: Vec<u64> = entries
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        (0..entries.len() as u64).collect::<Vec<_>>(),
        "the log has no gaps"
    );

    let mut deadlines = BTreeMap::new();
    let mut lapses = 0;
    for event in &events {
        match &event.kind {
            EventKind::OfferSent {
                offer, deadline, ..
            } => {
                deadlines.insert((event.need.clone(), *offer), *deadline);
            }
            EventKind::OfferLapsed { offer, .. } => {
                assert_eq!(
                    Some(&event.at),
                    deadlines.get(&(event.need.clone(), *offer)),
                    "lapse not at its deadline"
                );
                assert!(
                    event.at < restart_at,
                    "the lapse is recorded as of the deadline, not the restart"
                );
                lapses += 1;
            }
            _ => {}
        }
    }
    assert!(
        lapses >= acknowledged.len(),
        "every acknowledged need's offer lapsed while the broker was down ({lapses} lapses)"
    );

    // The state the server reports equals a replay of its log. The model clock runs an
    // hour a second, so deadlines go on firing: the list is compared with a log read
    // just before and just after it, and only where the two reads agree.
    let started = std::time::Instant::now();
    let (events, listed) = loop {
        let before = all_events(&client, &url, &auditor).await;
        let page = common::get_json(
            client
                .get(format!("{url}/v1/needs?limit=1000"))
                .bearer_auth(&buyer),
        )
        .await;
        let after = all_events(&client, &url, &auditor).await;
        if before.len() == after.len() {
            let events: Vec<Event> = common::events_in(&after);
            break (events, page["needs"].as_array().unwrap().clone());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the log never held still for the length of a list"
        );
    };
    let replayed = State::from_events(&events);
    for row in &listed {
        let id = row["id"].as_str().unwrap();
        let need = &replayed.need(id).unwrap();
        assert_eq!(row["status"], need.status().as_str(), "{id}");
        assert_eq!(row["awarded"], need.awarded().get(), "{id}");
    }
    drop(server);
}
