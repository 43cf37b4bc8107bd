//! Three `rofr serve` replicas share one PostgreSQL database under concurrent load, and
//! one is killed with SIGKILL mid-run. Afterwards: no acknowledged need is lost, no
//! quantity is awarded twice, the ledger has no gap and passes `rofr ledger audit`, and
//! every deadline fired exactly once.
//!
//! Needs PostgreSQL: the test reads `ROFR_TEST_DATABASE_URL` and makes a fresh
//! database there; where it is unset the test says so and does nothing.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{need_json, rofr, token, Server};
use rofr_engine::deal::parse_deal;
use rofr_engine::{Event, EventKind};
use rofr_store::ScratchDatabase;
use serde_json::{json, Value};

/// Short windows on the real clock, so that offers lapse, quote rounds close and
/// confirmations run out while the load is on.
const DEAL: &str = r#"
[deal]
name = "replicas"

[sourcing]
quote_window = "2s"
confirm_window = "3s"
retry_after = "1h"

[[provider]]
id = "azure"

[[provider]]
id = "oracle"

[[provider]]
id = "coreweave"

[[first_refusal]]
holder = "azure"
variant = "first_offer"
window = "2s"
partial = true
term = { from = 2025-01-01 }
"#;

/// A client that tries each live replica in turn until one answers; a replica that
/// cannot be reached is skipped. Returns the status and body of the first answer.
#[derive(Clone)]
struct Replicas {
    urls: Arc<Vec<String>>,
    dead: Arc<Vec<AtomicBool>>,
    next: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl Replicas {
    fn new(urls: Vec<String>) -> Replicas {
        let dead = urls.iter().map(|_| AtomicBool::new(false)).collect();
        Replicas {
            urls: Arc::new(urls),
            dead: Arc::new(dead),
            next: Arc::new(AtomicUsize::new(0)),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// Sends the request to one replica after another (round robin, the same
    /// Idempotency-Key each time) until one answers.
    async fn send(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> (u16, Value) {
        for _ in 0..self.urls.len() * 3 {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len();
            if self.dead[i].load(Ordering::Relaxed) {
                continue;
            }
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.urls[i]))
                .bearer_auth(token);
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    return (status, response.json().await.unwrap_or(Value::Null));
                }
                Err(_) => continue,
            }
        }
        panic!("no replica answered {path}");
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        self.send(token, reqwest::Method::GET, path, None, None)
            .await
    }

    async fn post(&self, token: &str, path: &str, body: &Value, key: &str) -> (u16, Value) {
        self.send(token, reqwest::Method::POST, path, Some(body), Some(key))
            .await
    }
}

/// A provider's agent: answers its offers, requests for quotes and awards on any
/// replica until `stop`. The holder accepts a third of its offers, declines a third
/// and lets a third lapse; the others quote on every request; awards to `azure` and
/// `oracle` are confirmed, and `coreweave` lets its confirmations run out.
async fn agent(replicas: Replicas, provider: &'static str, token: String, stop: Arc<AtomicBool>) {
    let mut answered: BTreeMap<String, ()> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let (_, offers) = replicas.get(&token, "/v1/offers?limit=500").await;
        for offer in offers["offers"].as_array().into_iter().flatten() {
            let need = offer["need"].as_str().unwrap_or_default().to_owned();
            let number: u64 = need
                .rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let key = format!("{provider}-offer-{need}-{}", offer["offer"]);
            if answered.contains_key(&key) {
                continue;
            }
            let path = match number % 3 {
                0 => format!("/v1/needs/{need}/accept"),
                1 => format!("/v1/needs/{need}/decline"),
                _ => continue,
            };
            let body = if number % 3 == 0 {
                json!({})
            } else {
                json!({"reason": "no_capacity"})
            };
            replicas.post(&token, &path, &body, &key).await;
            answered.insert(key, ());
        }
        let (_, rfqs) = replicas.get(&token, "/v1/rfqs").await;
        for rfq in rfqs["rfqs"].as_array().into_iter().flatten() {
            let need = rfq["need"].as_str().unwrap_or_default().to_owned();
            let key = format!("{provider}-quote-{need}-{}", rfq["round"]);
            if answered.contains_key(&key) {
                continue;
            }
            let price = if provider == "oracle" { 5.0 } else { 6.0 };
            let body = json!({"gpus": rfq["gpus"], "price": price});
            replicas
                .post(&token, &format!("/v1/needs/{need}/quote"), &body, &key)
                .await;
            answered.insert(key, ());
        }
        if provider != "coreweave" {
            let (_, awards) = replicas
                .get(&token, "/v1/awards?status=made&limit=1000")
                .await;
            for award in awards["awards"].as_array().into_iter().flatten() {
                if award["status"] != "made" {
                    continue;
                }
                let need = award["need"].as_str().unwrap_or_default().to_owned();
                let key = format!("{provider}-confirm-{need}-{}", award["award"]);
                if answered.contains_key(&key) {
                    continue;
                }
                let path = format!("/v1/needs/{need}/awards/{}/confirm", award["award"]);
                replicas
                    .post(&token, &path, &json!({"reservation": key}), &key)
                    .await;
                answered.insert(key, ());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_nothing_award_nothing_twice_and_keep_one_gapless_ledger() {
    let Some(scratch) = ScratchDatabase::for_test("rofr_replicas", "three_replicas") else {
        return;
    };
    let url = scratch.url().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let deal_file = dir.path().join("deal.toml");
    std::fs::write(&deal_file, DEAL).unwrap();
    let key_file = dir.path().join("ledger-key");
    let key = key_file.to_str().unwrap();
    let common_args = ["--ledger-key", key, "--checkpoint-every", "40"];

    // The first replica adopts the deal and makes the schema and the key; the others
    // find them there.
    let mut servers: Vec<Option<Server>> = Vec::new();
    let mut first_args = common_args.to_vec();
    first_args.extend(["--deal", deal_file.to_str().unwrap()]);
    servers.push(Some(common::serve(&url, &first_args)));
    servers.push(Some(common::serve(&url, &common_args)));
    servers.push(Some(common::serve(&url, &common_args)));
    let urls: Vec<String> = servers
        .iter()
        .map(|s| s.as_ref().unwrap().url.clone())
        .collect();

    let buyer = token(&url, &["--party", "buyer"]);
    let auditor = token(&url, &["--party", "auditor"]);
    let replicas = Replicas::new(urls);

    let stop = Arc::new(AtomicBool::new(false));
    let mut agents = Vec::new();
    for provider in ["azure", "oracle", "coreweave"] {
        let token = token(&url, &["--party", "provider", "--provider", provider]);
        agents.push(tokio::spawn(agent(
            replicas.clone(),
            provider,
            token,
            stop.clone(),
        )));
    }

    // Four buyers submit needs on whichever replica answers, each need with its own
    // Idempotency-Key, so a retry on another replica after a kill adds nothing.
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut buyers = Vec::new();
    for b in 0..4 {
        let (replicas, buyer, acknowledged, stop) = (
            replicas.clone(),
            buyer.clone(),
            acknowledged.clone(),
            stop.clone(),
        );
        buyers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("b{b}-{i:05}");
                let (status, body) = replicas
                    .post(&buyer, "/v1/needs", &need_json(&id), &id)
                    .await;
                assert_eq!(status, 201, "{id}: {body}");
                acknowledged.lock().unwrap().push(id);
                i += 1;
            }
        }));
    }

    let until = |count: usize| {
        let acknowledged = acknowledged.clone();
        async move {
            let started = Instant::now();
            while acknowledged.lock().unwrap().len() < count {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the load stalled"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    until(150).await;
    // SIGKILL the second replica mid-run; the clients carry on with the other two.
    replicas.dead[1].store(true, Ordering::Relaxed);
    let mut killed = servers[1].take().unwrap();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let at_kill = acknowledged.lock().unwrap().len();
    until(at_kill + 150).await;
    stop.store(true, Ordering::Relaxed);
    for task in buyers {
        task.await.unwrap();
    }
    // Let every window that the load opened run out (offers and rounds 2 s,
    // confirmations 3 s), with the agents still answering what comes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for task in agents {
        task.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let checked_at = rofr_engine::types::Timestamp::parse(
        &chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
    .unwrap();

    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    // Nothing acknowledged is lost, on either surviving replica.
    for id in &acknowledged {
        let (status, _) = replicas.get(&buyer, &format!("/v1/needs/{id}")).await;
        assert_eq!(status, 200, "acknowledged need {id} was lost");
    }

    // One gapless log, in which no need was submitted twice and no quantity is awarded
    // twice (I2), nor any other invariant broken.
    let entries = common::all_events(&replicas.http, &replicas.urls[0], &auditor).await;
    let indexes: Vec<u64> = entries
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(
        indexes,
        (0..entries.len() as u64).collect::<Vec<_>>(),
        "the ledger has a gap"
    );
    assert_eq!(
        entries[0]["event"]["type"], "deal_adopted",
        "the log begins with its deal, once, though three replicas started it"
    );
    let events: Vec<Event> = common::events_in(&entries);
    assert_eq!(events.len(), entries.len() - 1);
    let submitted = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::NeedSubmitted(_)))
        .count();
    assert_eq!(submitted, acknowledged.len(), "each need submitted once");
    let deal = parse_deal("deal.toml", DEAL).unwrap();
    rofr_engine::invariants::check_events(&deal, &events).unwrap();
    let state = rofr_engine::state::State::from_events(&events);
    for need in state.needs() {
        assert!(
            need.awarded() <= need.spec.gpus,
            "{} over-awarded",
            need.spec.id
        );
    }

    // Every deadline that passed fired exactly once: each offer was answered or lapsed
    // once, each request-for-quote round closed once, each award was confirmed or
    // failed once.
    let mut offers: BTreeMap<(String, u32), (rofr_engine::types::Timestamp, usize)> =
        BTreeMap::new();
    let mut rounds: BTreeMap<(String, u32), (rofr_engine::types::Timestamp, usize)> =
        BTreeMap::new();
    let mut awards: BTreeMap<(String, u32), (rofr_engine::types::Timestamp, usize)> =
        BTreeMap::new();
    let mut lapses = 0;
    for event in &events {
        let need = event.need.to_string();
        match &event.kind {
            EventKind::OfferSent {
                offer, deadline, ..
            } => {
                offers.insert((need, *offer), (*deadline, 0));
            }
            EventKind::OfferAccepted { offer, .. }
            | EventKind::OfferDeclined {
                offer: Some(offer), ..
            } => offers.get_mut(&(need, *offer)).expect("offer sent").1 += 1,
            EventKind::OfferLapsed { offer, .. } => {
                let (deadline, answers) = offers.get_mut(&(need, *offer)).expect("offer sent");
                assert_eq!(event.at, *deadline, "a lapse is recorded at its deadline");
                *answers += 1;
                lapses += 1;
            }
            EventKind::RfqSent {
                round, deadline, ..
            } => {
                rounds.entry((need, *round)).or_insert((*deadline, 0));
            }
            EventKind::SourcingClosed { round, .. } => {
                rounds.get_mut(&(need, *round)).expect("round opened").1 += 1
            }
            EventKind::AwardMade {
                award, confirm_by, ..
            } => {
                awards.insert((need, *award), (*confirm_by, 0));
            }
            EventKind::AwardConfirmed { award, .. } | EventKind::AwardFailed { award, .. } => {
                if let Some(entry) = awards.get_mut(&(need, *award)) {
                    entry.1 += 1;
                }
            }
            _ => {}
        }
    }
    for (what, table) in [("offer", &offers), ("round", &rounds), ("award", &awards)] {
        for ((need, n), (deadline, settled)) in table {
            assert!(
                *settled <= 1,
                "{what} {n} of {need} settled {settled} times"
            );
            if *deadline < checked_at {
                assert_eq!(*settled, 1, "{what} {n} of {need} never settled");
            }
        }
    }
    eprintln!(
        "{} needs acknowledged, {} log entries, {} offers ({lapses} lapsed), {} quote rounds, {} awards",
        acknowledged.len(),
        events.len(),
        offers.len(),
        rounds.len(),
        awards.len()
    );
    assert!(lapses > 0, "some offers lapsed, fired by the deadline");
    assert!(
        awards.values().any(|(_, s)| *s == 1),
        "some awards were settled"
    );

    // Both survivors have folded in the whole log, whoever wrote it.
    for url in [&replicas.urls[0], &replicas.urls[2]] {
        let started = Instant::now();
        loop {
            let health = common::get_json(replicas.http.get(format!("{url}/healthz"))).await;
            assert_eq!(health["shared"], true);
            if health["log_entries"] == events.len() as u64 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{url} is behind the log: {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The signed checkpoints, made by different replicas, agree with the log.
    let audit =
        common::succeed(rofr().args(["ledger", "audit", "--database", &url, "--ledger-key", key]));
    assert!(common::stdout(&audit).starts_with("audit ok"));

    drop(servers);
    drop(scratch);
}

#[test]
fn migrate_brings_a_new_postgres_database_up_to_date_once() {
    let Some(scratch) = ScratchDatabase::for_test("rofr_migrate", "migrate") else {
        return;
    };
    let migrate = || {
        common::stdout(&common::succeed(rofr().args([
            "migrate",
            "--database",
            scratch.url(),
        ])))
    };
    assert!(migrate().contains("schema version 1 (1 migration applied now)"));
    assert!(migrate().contains("schema version 1 (0 migrations applied now)"));
}

#[test]
fn a_missing_postgres_database_is_named_with_what_to_do() {
    let Ok(admin) = std::env::var("ROFR_TEST_DATABASE_URL") else {
        eprintln!("skipped: ROFR_TEST_DATABASE_URL is unset");
        return;
    };
    let (server, _) = admin.rsplit_once('/').unwrap();
    let url = format!("{server}/rofr_never_made");
    let output = rofr()
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &url])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("database \"rofr_never_made\" does not exist")
            && message.contains("createdb"),
        "{message}"
    );
}
