//! A broker whose deal requires one witness, the witness on its own loopback port, and
//! the broker's API served: what the witness and tile tests start from.

use std::future::IntoFuture as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rofr_ledger::VerifierKey;
use rofr_server::witness::Witness;
use rofr_server::{Broker, Clock, Party};
use rofr_store::Location;

use super::{origin, DEAL};

pub struct Witnessed {
    pub url: String,
    pub broker: Broker,
    pub buyer: String,
    pub location: Location,
    pub key_file: PathBuf,
    pub witness: Arc<Witness>,
    pub witness_key: String,
    pub log_key: String,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// The deal of the API tests with a required witness `azure` at `url`.
pub fn witnessed_deal(key: &str, url: &str) -> String {
    format!("{DEAL}\n[[witness]]\nname = \"azure\"\nkey = \"{key}\"\nurl = \"{url}\"\n")
}

/// Starts the witness, then the broker naming it, in `dir` on a SQLite file.
pub async fn start(dir: &Path) -> Witnessed {
    start_on(dir, Location::Sqlite(dir.join("rofr.db"))).await
}

/// [`start`] with the broker's log at `location`. The witness learns the log's key and
/// origin once the broker made them; the broker retries it until then.
pub async fn start_on(dir: &Path, location: Location) -> Witnessed {
    let key_file = dir.join("ledger-key");
    let mut witness = Witness::open(&dir.join("witness.db"), Some("witness.azure.test")).unwrap();
    let witness_key = witness.verifier_key();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let witness_url = format!("http://{}", listener.local_addr().unwrap());
    let deal = witnessed_deal(&witness_key, &witness_url);
    let broker = Broker::open(
        &location,
        Some(("deal.toml", &deal)),
        Clock::scaled(origin(), 1.0),
        Some(&key_file),
    )
    .unwrap();
    let log_key = broker.ledger(|l| l.verifier_key());
    let log_origin = broker.ledger(|l| l.origin().to_owned());
    witness.trust(&log_origin, VerifierKey::parse(&log_key).unwrap());
    let witness = Arc::new(witness);
    tokio::spawn(
        axum::serve(listener, rofr_server::witness::router(witness.clone())).into_future(),
    );
    let buyer = Broker::create_token(&location, &Party::Buyer, "test").unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", api.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(rofr_server::serve(broker.clone(), api, async {
        let _ = stopped.await;
    }));
    Witnessed {
        url,
        broker,
        buyer,
        location,
        key_file,
        witness,
        witness_key,
        log_key,
        stop,
        served,
    }
}

/// GETs `path` with `token`, expecting 200.
pub async fn get(url: &str, token: &str, path: &str) -> String {
    let answer = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "{path}");
    answer.text().await.unwrap()
}

pub async fn witnessing(url: &str, token: &str) -> serde_json::Value {
    serde_json::from_str(&get(url, token, "/v1/ledger/witnesses").await).unwrap()
}

/// Submits needs `prefix-0` … through the API.
pub async fn submit(url: &str, token: &str, prefix: &str, count: usize) {
    let client = reqwest::Client::new();
    for i in 0..count {
        let answer = client
            .post(format!("{url}/v1/needs"))
            .bearer_auth(token)
            .json(&super::need(&format!("{prefix}-{i}"), 8))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 201);
    }
}
