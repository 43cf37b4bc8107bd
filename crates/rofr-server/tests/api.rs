//! Black-box tests of the HTTP API: a real server on a loopback port, real HTTP, and a
//! fresh database each. Every test runs twice: on a SQLite file, and on a PostgreSQL
//! database made for it on the server `ROFR_TEST_DATABASE_URL` names (skipped, saying
//! so, where that is unset).

mod common;
use common::{need, origin, DEAL};
use rofr_store::{Location, ScratchDatabase};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rofr_engine::types::ProviderId;
use rofr_server::{Broker, Clock, Party};
use serde_json::{json, Value};

struct App {
    url: String,
    broker: Broker,
    client: reqwest::Client,
    buyer: String,
    auditor: String,
    azure: String,
    oracle: String,
    stranger: String,
    _dir: tempfile::TempDir,
    _database: Option<ScratchDatabase>,
}

impl Drop for App {
    fn drop(&mut self) {
        // The writer stops, and with it the broker's connections, before a scratch
        // database is dropped.
        self.broker.shutdown();
    }
}

/// Where a test's broker keeps its log.
enum Backend {
    Sqlite,
    Postgres(ScratchDatabase),
}

impl Backend {
    /// A fresh PostgreSQL database, or `None` (after saying why) where the tests have no
    /// server to use.
    fn postgres(test: &str) -> Option<Backend> {
        ScratchDatabase::for_test("rofr_api", test).map(Backend::Postgres)
    }
}

async fn spawn_app(backend: Backend) -> App {
    let dir = tempfile::tempdir().unwrap();
    let (path, database) = match backend {
        Backend::Sqlite => (Location::Sqlite(dir.path().join("rofr.db")), None),
        Backend::Postgres(scratch) => (scratch.location(), Some(scratch)),
    };
    let key = dir.path().join("ledger-key");
    let broker = Broker::open(
        &path,
        Some(("deal.toml", DEAL)),
        Clock::scaled(origin(), 1.0),
        Some(&key),
    )
    .unwrap();
    // The webhook receivers of these tests listen on loopback.
    broker.allow_private_webhooks(true);
    let token = |party: Party| Broker::create_token(&path, &party, "test").unwrap();
    let provider = |id: &str| Party::Provider(ProviderId::parse(id).unwrap());
    let (buyer, auditor) = (token(Party::Buyer), token(Party::Auditor));
    let (azure, oracle, stranger) = (
        token(provider("azure")),
        token(provider("oracle")),
        token(provider("nobody")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(rofr_server::serve(
        broker.clone(),
        listener,
        std::future::pending(),
    ));
    App {
        url,
        broker,
        client: reqwest::Client::new(),
        buyer,
        auditor,
        azure,
        oracle,
        stranger,
        _dir: dir,
        _database: database,
    }
}

impl App {
    async fn post(&self, token: &str, path: &str, body: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn event_count(&self) -> usize {
        let (status, page) = self.get(&self.auditor, "/v1/events?limit=1000").await;
        assert_eq!(status, 200);
        page["events"].as_array().unwrap().len()
    }

    async fn submit(&self, id: &str, gpus: i64) -> (u16, Value) {
        self.post(&self.buyer, "/v1/needs", &need(id, gpus).to_string())
            .await
    }
}

fn types(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_submitted_need_is_offered_to_the_holder_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = app.submit("n1", 64).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(types(&body), ["need_submitted", "offer_sent"]);
    assert_eq!(body["events"][1]["event"]["provider"], "azure");
    assert_eq!(body["events"][0]["index"], 1, "entry 0 adopts the deal");
    let (_, offers) = app.get(&app.azure, "/v1/offers").await;
    assert_eq!(offers["offers"][0]["need"], "n1");
    assert_eq!(offers["offers"][0]["gpus"], 64);
}

async fn another_provider_can_neither_see_nor_answer_the_holders_offer(backend: Backend) {
    let app = spawn_app(backend).await;
    app.submit("n1", 64).await;
    let (_, offers) = app.get(&app.oracle, "/v1/offers").await;
    assert_eq!(offers["offers"], json!([]));
    let (_, all) = app.get(&app.buyer, "/v1/offers").await;
    assert_eq!(
        all["offers"][0]["provider"], "azure",
        "the buyer sees every open offer"
    );
    let before = app.event_count().await;
    let (status, body) = app.post(&app.oracle, "/v1/needs/n1/accept", "{}").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = app
        .post(&app.oracle, "/v1/needs/n1/decline", r#"{"reason":"price"}"#)
        .await;
    assert_eq!(status, 404);
    let (status, _) = app.get(&app.oracle, "/v1/needs/n1").await;
    assert_eq!(
        status, 403,
        "providers read needs only through their offers"
    );
    assert_eq!(app.event_count().await, before);
}

async fn a_decline_sends_requests_for_quotes_and_the_cheapest_quote_wins(backend: Backend) {
    let app = spawn_app(backend).await;
    app.submit("n1", 64).await;
    let (status, body) = app
        .post(
            &app.azure,
            "/v1/needs/n1/decline",
            r#"{"reason":"no_capacity"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(types(&body), ["offer_declined", "rfq_sent", "rfq_sent"]);
    let (_, rfqs) = app.get(&app.oracle, "/v1/rfqs").await;
    assert_eq!(rfqs["rfqs"][0]["need"], "n1");
    let (status, body) = app
        .post(
            &app.oracle,
            "/v1/needs/n1/quote",
            r#"{"gpus":64,"price":5.5}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, need) = app.get(&app.buyer, "/v1/needs/n1").await;
    assert_eq!(need["status"], "sourcing");
    let (_, listed) = app.get(&app.auditor, "/v1/needs?status=sourcing").await;
    assert_eq!(listed["needs"][0]["id"], "n1");
}

async fn requests_without_a_valid_token_are_unauthorized(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .get(format!("{}/v1/needs", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (status, body) = app.get("rofr_not_a_token", "/v1/needs").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
}

async fn parties_are_held_to_their_roles(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, _) = app
        .post(&app.azure, "/v1/needs", &need("n1", 8).to_string())
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .post(&app.auditor, "/v1/needs", &need("n1", 8).to_string())
        .await;
    assert_eq!(status, 403);
    let (status, _) = app.get(&app.buyer, "/v1/rfqs").await;
    assert_eq!(
        status, 403,
        "requests for quotes are listed to their providers"
    );
    let (status, _) = app.get(&app.azure, "/v1/summary").await;
    assert_eq!(status, 403);
    assert_eq!(app.event_count().await, 1, "the deal's entry alone");
}

async fn bad_input_gets_a_4xx_naming_the_field_and_writes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    app.submit("n1", 64).await;
    let before = app.event_count().await;
    let mut unknown = need("n2", 8);
    unknown["colour"] = json!("blue");
    let mut past = need("n3", 8);
    past["decide_by"] = json!("2024-01-01T00:00:00Z");
    let mut bad_time = need("n4", 8);
    bad_time["earliest_start"] = json!("next tuesday");
    let cases: Vec<(&str, &str, String, u16, Option<&str>)> = vec![
        (&app.buyer, "/v1/needs", "{not json".into(), 400, None),
        (&app.buyer, "/v1/needs", unknown.to_string(), 422, None),
        (
            &app.buyer,
            "/v1/needs",
            need("n5", 0).to_string(),
            422,
            Some("gpus"),
        ),
        (
            &app.buyer,
            "/v1/needs",
            need("n6", -4).to_string(),
            422,
            Some("gpus"),
        ),
        (
            &app.buyer,
            "/v1/needs",
            past.to_string(),
            422,
            Some("decide_by"),
        ),
        (
            &app.buyer,
            "/v1/needs",
            bad_time.to_string(),
            422,
            Some("earliest_start"),
        ),
        (
            &app.buyer,
            "/v1/needs",
            need("n1", 8).to_string(),
            409,
            Some("id"),
        ),
        (
            &app.azure,
            "/v1/needs/n1/accept",
            r#"{"gpus": 65}"#.into(),
            422,
            Some("gpus"),
        ),
        (
            &app.azure,
            "/v1/needs/n1/decline",
            r#"{"reason": "bored"}"#.into(),
            422,
            Some("reason"),
        ),
        (&app.azure, "/v1/needs/nope/accept", "{}".into(), 404, None),
        (&app.stranger, "/v1/needs/n1/accept", "{}".into(), 404, None),
        (
            &app.oracle,
            "/v1/needs/n1/quote",
            r#"{"gpus": 8, "price": 5.0}"#.into(),
            404,
            None,
        ),
        (
            &app.azure,
            "/v1/needs/n1/accept",
            r#"{"gpus": "many"}"#.into(),
            422,
            Some("gpus"),
        ),
        (
            &app.azure,
            "/v1/needs/n1/accept",
            r#"{"price": -1}"#.into(),
            422,
            Some("price"),
        ),
        (&app.azure, "/v1/needs/n1/match", "{}".into(), 404, None),
        (
            &app.azure,
            "/v1/needs/n1/quote",
            r#"{"gpus": 8}"#.into(),
            422,
            None,
        ),
        (&app.buyer, "/v1/needs/n1/cancel", "{}".into(), 422, None),
        (
            &app.buyer,
            "/v1/needs/nope/cancel",
            r#"{"reason": "x"}"#.into(),
            404,
            None,
        ),
        (
            &app.buyer,
            "/v1/needs/n1/awards/1/approve",
            "{}".into(),
            404,
            None,
        ),
        (
            &app.buyer,
            "/v1/needs/n1/awards/1/reject",
            r#"{"reason": 7}"#.into(),
            422,
            Some("reason"),
        ),
        (
            &app.azure,
            "/v1/needs/n1/awards/1/confirm",
            r#"{"reservation": "r"}"#.into(),
            404,
            None,
        ),
        (
            &app.azure,
            "/v1/needs/n1/awards/1/fail",
            r#"{"reason": "x", "extra": 1}"#.into(),
            422,
            None,
        ),
        (
            &app.oracle,
            "/v1/needs/n1/awards/1/confirm",
            r#"{"reservation": ""}"#.into(),
            422,
            Some("reservation"),
        ),
        (
            &app.azure,
            "/v1/needs/n1/decline",
            r#"{"reason": "partial"}"#.into(),
            422,
            Some("reason"),
        ),
    ];
    for (token, path, body, status, field) in cases {
        let (got, answer) = app.post(token, path, &body).await;
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
        if let Some(field) = field {
            assert_eq!(answer["error"]["field"], field, "{path} {body}: {answer}");
        }
    }
    assert_eq!(
        app.event_count().await,
        before,
        "a refused request wrote nothing"
    );
}

async fn a_retry_with_the_same_idempotency_key_repeats_no_effect(backend: Backend) {
    let app = spawn_app(backend).await;
    let send = |key: &'static str, body: String| {
        app.client
            .post(format!("{}/v1/needs", app.url))
            .bearer_auth(&app.buyer)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = send("k-1", need("n1", 8).to_string()).await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let first_body = first.text().await.unwrap();
    let again = send("k-1", need("n1", 8).to_string()).await.unwrap();
    assert_eq!(again.status().as_u16(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.text().await.unwrap(), first_body);
    assert_eq!(app.event_count().await, 3, "the deal, one need, one offer");
    let other = send("k-1", need("n2", 8).to_string()).await.unwrap();
    assert_eq!(other.status().as_u16(), 422);
    assert_eq!(app.event_count().await, 3);
}

async fn pages_are_bounded_and_follow_on(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..5 {
        app.submit(&format!("n{i}"), 8).await;
    }
    let (status, page) = app.get(&app.buyer, "/v1/needs?limit=2").await;
    assert_eq!(status, 200);
    assert_eq!(page["needs"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, page2) = app
        .get(&app.buyer, &format!("/v1/needs?limit=2&after={next}"))
        .await;
    assert_eq!(page2["needs"][0]["id"], "n2");
    let (status, body) = app.get(&app.buyer, "/v1/needs?limit=100000").await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["field"], "limit");
    let (status, _) = app.get(&app.buyer, "/v1/needs?status=happy").await;
    assert_eq!(status, 422);
    let (_, offers) = app.get(&app.buyer, "/v1/offers?limit=2").await;
    assert_eq!(offers["offers"].as_array().unwrap().len(), 2);
    let next = offers["next"].as_str().unwrap().to_owned();
    let (_, rest) = app
        .get(&app.azure, &format!("/v1/offers?limit=10&after={next}"))
        .await;
    assert_eq!(
        rest["offers"].as_array().unwrap().len(),
        3,
        "the holder pages through its own offers"
    );
    let order: Vec<&str> = rest["offers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["need"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["n2", "n3", "n4"],
        "in need order after the first page"
    );
    assert_eq!(rest["next"], Value::Null);

    // A provider's awards page too, in the order their needs were submitted.
    for i in [0, 1, 3] {
        let (status, body) = app
            .post(&app.azure, &format!("/v1/needs/n{i}/accept"), "{}")
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let awarded = |page: &Value| -> Vec<String> {
        page["awards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["need"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, awards) = app.get(&app.azure, "/v1/awards?limit=2").await;
    assert_eq!(status, 200, "{awards}");
    assert_eq!(awarded(&awards), ["n0", "n1"]);
    let next = awards["next"].as_str().unwrap().to_owned();
    let (_, rest) = app
        .get(&app.azure, &format!("/v1/awards?limit=2&after={next}"))
        .await;
    assert_eq!(awarded(&rest), ["n3"]);
    assert_eq!(rest["next"], Value::Null);
    let (_, live) = app
        .get(
            &app.azure,
            "/v1/awards?status=pending_approval,made,confirmed",
        )
        .await;
    assert_eq!(awarded(&live), ["n0", "n1", "n3"]);
    let (_, failed) = app.get(&app.azure, "/v1/awards?status=failed").await;
    assert_eq!(failed["awards"], json!([]));
    let (_, others) = app.get(&app.oracle, "/v1/awards").await;
    assert_eq!(
        others["awards"],
        json!([]),
        "another provider's awards are not listed"
    );
    for (path, field) in [
        ("/v1/awards?status=made,happy", "status"),
        ("/v1/awards?after=nope", "after"),
        ("/v1/awards?limit=0", "limit"),
    ] {
        let (status, body) = app.get(&app.azure, path).await;
        assert_eq!(status, 422, "{path}: {body}");
        assert_eq!(body["error"]["field"], field, "{path}: {body}");
    }
}

async fn health_and_metrics_answer(backend: Backend) {
    let shared = matches!(backend, Backend::Postgres(_));
    let app = spawn_app(backend).await;
    app.submit("n1", 8).await;
    let (status, health) = app.get("", "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(health["deal"], "api-test");
    assert_eq!(health["log_entries"], 2);
    assert_eq!(health["shared"], shared);
    let text = app
        .client
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("rofr_events_appended_total 2"), "{text}");
    assert!(text.contains("rofr_needs{status=\"offered\"} 1"), "{text}");
}

async fn the_openapi_document_is_served_and_locked(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .get(format!("{}/openapi.json", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    let document: Value = serde_json::from_str(&text).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    for path in [
        "/v1/needs",
        "/v1/needs/{id}/accept",
        "/v1/needs/{id}/awards/{award}/confirm",
        "/v1/events",
        "/v1/offers",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }
    insta::assert_snapshot!("openapi", text);
}

async fn offers_reach_the_providers_webhook_signed_and_retried_until_accepted(backend: Backend) {
    use std::sync::{Arc, Mutex};
    let app = spawn_app(backend).await;

    // A receiver that refuses the first two attempts.
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let receiver = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let seen = seen.clone();
                async move {
                    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
                    let mut seen = seen.lock().unwrap();
                    seen.push((header("rofr-timestamp"), header("rofr-signature"), body));
                    if seen.len() <= 2 {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let response = app
        .client
        .put(format!("{}/v1/webhook", app.url))
        .bearer_auth(&app.azure)
        .json(&json!({"url": hook}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let secret = response.json::<Value>().await.unwrap()["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = app.post(&app.azure, "/v1/webhook", "{}").await;
    assert_eq!(status, 405, "registration is a PUT");
    let bad = app
        .client
        .put(format!("{}/v1/webhook", app.url))
        .bearer_auth(&app.azure)
        .json(&json!({"url": "ftp://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 422);

    app.submit("n1", 64).await;
    let started = std::time::Instant::now();
    let delivered = loop {
        let (_, list) = app.get(&app.buyer, "/v1/webhook/deliveries").await;
        let first = list["deliveries"][0].clone();
        if first["status"] == "delivered" || started.elapsed() > std::time::Duration::from_secs(15)
        {
            break first;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(delivered["status"], "delivered", "{delivered}");
    assert_eq!(delivered["attempts"], 3);
    assert_eq!(delivered["provider"], "azure");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let (timestamp, signature, body) = &seen[2];
    let now = rofr_server::webhook::unix_ms() / 1000;
    rofr_server::webhook::verify(&secret, timestamp, body.as_bytes(), signature, now, 300).unwrap();
    let body: Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["event"]["type"], "offer_sent");
    assert_eq!(body["index"], 2, "after the deal's entry and the need's");
    // Another provider's token sees nothing of it.
    let (status, _) = app.get(&app.oracle, "/v1/webhook/deliveries").await;
    assert_eq!(status, 403);
}

async fn checkpoints_follow_the_policy_and_proofs_check_against_them(backend: Backend) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let app = spawn_app(backend).await;
    app.broker
        .set_checkpoint_policy(rofr_server::ledger::CheckpointPolicy {
            every_entries: 2,
            every: std::time::Duration::from_secs(3600),
        });
    let missing = app
        .client
        .get(format!("{}/v1/ledger/checkpoint", app.url))
        .bearer_auth(&app.auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(
        missing.status().as_u16(),
        404,
        "no checkpoint before any entry"
    );
    app.submit("n1", 8).await;
    app.submit("n2", 8).await;

    let key_text = app
        .client
        .get(format!("{}/v1/ledger/key", app.url))
        .bearer_auth(&app.auditor)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let key = rofr_ledger::VerifierKey::parse(key_text.trim()).unwrap();
    // The writer signs after answering, so the checkpoint may trail the answer briefly.
    let started = std::time::Instant::now();
    let checkpoint = loop {
        let note = app
            .client
            .get(format!("{}/v1/ledger/checkpoint", app.url))
            .bearer_auth(&app.auditor)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let checkpoint = rofr_ledger::Checkpoint::parse(key.open(&note).unwrap()).unwrap();
        if checkpoint.size == 5 || started.elapsed() > std::time::Duration::from_secs(5) {
            break checkpoint;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        checkpoint.size, 5,
        "made after the deal's entry and four events, per the policy"
    );

    // The log's bytes must be read as they are: re-serializing parsed JSON would
    // reorder keys and change the leaf.
    #[derive(serde::Deserialize)]
    struct Page {
        events: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        event: Box<serde_json::value::RawValue>,
    }
    let text = app
        .client
        .get(format!("{}/v1/events?limit=10", app.url))
        .bearer_auth(&app.auditor)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let page: Page = serde_json::from_str(&text).unwrap();
    let event = page.events[1].event.get().to_owned();
    let (status, proof) = app
        .get(&app.auditor, "/v1/ledger/inclusion?index=1&size=5")
        .await;
    assert_eq!(status, 200);
    let proof: Vec<[u8; 32]> = proof["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| b64.decode(p.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    let leaf = rofr_ledger::leaf_hash(event.as_bytes());
    assert!(
        rofr_ledger::verify_inclusion(1, 5, &leaf, &proof, &checkpoint.root),
        "the served bytes are the leaf"
    );

    let fresh = app
        .client
        .post(format!("{}/v1/ledger/checkpoint", app.url))
        .bearer_auth(&app.buyer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let later = rofr_ledger::Checkpoint::parse(key.open(&fresh).unwrap()).unwrap();
    let (status, consistency) = app
        .get(
            &app.auditor,
            &format!("/v1/ledger/consistency?from=5&to={}", later.size),
        )
        .await;
    assert_eq!(status, 200);
    let consistency: Vec<[u8; 32]> = consistency["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| b64.decode(p.as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    assert!(rofr_ledger::verify_consistency(
        5,
        later.size,
        &checkpoint.root,
        &later.root,
        &consistency
    ));

    let (status, _) = app
        .get(&app.auditor, "/v1/ledger/inclusion?index=9&size=5")
        .await;
    assert_eq!(status, 422);
    // The holder may prove its own offer, the need it holds the right over and the
    // deal's entry; another provider none of them.
    for (token, index, status) in [
        (&app.azure, 2, 200),
        (&app.azure, 1, 200),
        (&app.azure, 0, 200),
        (&app.oracle, 0, 404),
        (&app.oracle, 1, 404),
        (&app.oracle, 2, 404),
    ] {
        let path = format!("/v1/ledger/inclusion?index={index}&size=5");
        assert_eq!(app.get(token, &path).await.0, status, "{path}");
    }
    let (status, _) = app.post(&app.azure, "/v1/ledger/checkpoint", "").await;
    assert_eq!(status, 403);
}

async fn a_command_that_fails_inside_the_broker_is_refused_alone(backend: Backend) {
    use rofr_engine::Command;
    use std::sync::Arc;
    let app = spawn_app(backend).await;
    assert_eq!(app.submit("before", 8).await.0, 201);
    let before = app.event_count().await;
    app.broker.inject_fault(Some(Arc::new(|command: &Command| {
        if command.need().is_some_and(|id| id.as_str() == "boom") {
            panic!("a defect applying {command:?}");
        }
    })));
    let (status, body) = app.submit("boom", 8).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "internal", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("defect") && !message.contains("boom"),
        "the answer leaks nothing of the failure: {message}"
    );
    assert_eq!(app.event_count().await, before, "nothing of it was written");
    let (status, _) = app.get(&app.buyer, "/v1/needs/boom").await;
    assert_eq!(status, 404);
    // The broker goes on: the next commands are applied and read back.
    assert_eq!(app.submit("after", 8).await.0, 201);
    let (status, _) = app.post(&app.azure, "/v1/needs/before/accept", "{}").await;
    assert_eq!(status, 200);
    let (status, shown) = app.get(&app.buyer, "/v1/needs/after").await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["status"], "offered");
    app.broker.inject_fault(None);
    assert_eq!(app.submit("boom", 8).await.0, 201, "the id was never taken");
}

async fn hostile_requests_get_their_4xx_in_the_envelope_and_write_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(app.submit("n1", 64).await.0, 201);
    let before = app.event_count().await;
    let raw = |method: reqwest::Method, path: &str| {
        app.client
            .request(method, format!("{}{path}", app.url))
            .bearer_auth(&app.buyer)
    };
    let mut answers = Vec::new();
    let trailing = format!("{}{{\"id\":\"n9\"}}", need("n8", 8));
    answers.push((
        raw(reqwest::Method::POST, "/v1/needs")
            .header("content-type", "application/json")
            .body(trailing),
        400,
        "malformed_json",
    ));
    answers.push((
        raw(reqwest::Method::POST, "/v1/needs")
            .header("content-type", "text/plain")
            .body(need("n8", 8).to_string()),
        415,
        "unsupported_media_type",
    ));
    answers.push((
        raw(reqwest::Method::POST, "/v1/needs").body(need("n8", 8).to_string()),
        415,
        "unsupported_media_type",
    ));
    answers.push((
        raw(reqwest::Method::DELETE, "/v1/needs"),
        405,
        "method_not_allowed",
    ));
    answers.push((raw(reqwest::Method::GET, "/v2/nothing"), 404, "not_found"));
    answers.push((
        raw(reqwest::Method::POST, "/v1/needs")
            .header("content-type", "application/json")
            .body(format!("{{\"id\":\"{}\"}}", "x".repeat(70_000))),
        413,
        "payload_too_large",
    ));
    answers.push((
        raw(reqwest::Method::GET, "/v1/needs?limit=many"),
        422,
        "invalid_field",
    ));
    answers.push((
        raw(reqwest::Method::GET, "/v1/needs?colour=blue"),
        422,
        "invalid_field",
    ));
    answers.push((
        raw(reqwest::Method::POST, "/v1/needs/n1/awards/first/approve"),
        404,
        "not_found",
    ));
    answers.push((
        raw(
            reqwest::Method::POST,
            "/v1/needs/n1/awards/99999999999/approve",
        ),
        404,
        "not_found",
    ));
    let mut huge = need("n8", 8);
    huge["gpus"] = json!(4_000_000_000u64);
    answers.push((
        raw(reqwest::Method::POST, "/v1/needs").json(&huge),
        422,
        "invalid_field",
    ));
    let mut late = need("n8", 8);
    late["decide_by"] = json!("2025-05-01T00:00:00Z");
    answers.push((
        raw(reqwest::Method::POST, "/v1/needs").json(&late),
        422,
        "invalid_field",
    ));
    let reason = format!("{}\u{1b}[31m", "x".repeat(60_000));
    answers.push((
        raw(reqwest::Method::POST, "/v1/needs/n1/cancel").json(&json!({ "reason": reason })),
        422,
        "invalid_field",
    ));
    for (request, status, code) in answers {
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let kind = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body: Value = response.json().await.unwrap();
        assert_eq!((got, kind.as_str()), (status, "application/json"), "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // A path number that does not parse is named with its range.
    let body: Value = raw(reqwest::Method::POST, "/v1/needs/n1/awards/first/approve")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["error"]["message"],
        format!(
            "nothing is at this path: `first` is not a number from 0 to {}",
            u32::MAX
        ),
        "{body}"
    );
    // A quote of $0 from a provider asked for one.
    app.post(&app.azure, "/v1/needs/n1/decline", r#"{"reason":"price"}"#)
        .await;
    let (status, body) = app
        .post(&app.oracle, "/v1/needs/n1/quote", r#"{"gpus":8,"price":0}"#)
        .await;
    assert_eq!((status, &body["error"]["field"]), (422, &json!("price")));
    let after_decline = before + 2; // the decline and the requests for quotes
    assert!(app.event_count().await >= after_decline);

    // The scheme is case-insensitive, and a 401 says how to authenticate.
    let response = app
        .client
        .get(format!("{}/v1/whoami", app.url))
        .header("authorization", format!("bearer {}", app.buyer))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = app
        .client
        .get(format!("{}/v1/whoami", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"rofr\""
    );

    // A provider's 404 is the same for a missing need and one that is not its own.
    let (status, theirs) = app.post(&app.stranger, "/v1/needs/n1/accept", "{}").await;
    let (_, missing) = app.post(&app.stranger, "/v1/needs/zz/accept", "{}").await;
    assert_eq!(status, 404);
    assert_eq!(
        theirs["error"]["message"]
            .as_str()
            .unwrap()
            .replace("n1", "zz"),
        missing["error"]["message"].as_str().unwrap()
    );
}

async fn health_shows_the_brokers_clock(backend: Backend) {
    let app = spawn_app(backend).await;
    app.submit("n1", 8).await;
    let (_, events) = app.get(&app.auditor, "/v1/events").await;
    let last = events["events"][1]["event"]["at"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (_, health) = app.get("", "/healthz").await;
    let now = health["now"].as_str().unwrap();
    assert!(now > last.as_str(), "the clock moved on from {last}: {now}");
}

async fn webhooks_may_not_reach_inside_the_brokers_network_or_carry_credentials(backend: Backend) {
    let app = spawn_app(backend).await;
    app.broker.allow_private_webhooks(false);
    let put = |url: &str| {
        app.client
            .put(format!("{}/v1/webhook", app.url))
            .bearer_auth(&app.azure)
            .json(&json!({ "url": url }))
            .send()
    };
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://[::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.7/hook",
        "https://172.16.0.1/hook",
        "https://100.64.0.1/hook",
        "http://0.0.0.0/hook",
        "https://alice:hunter2@hooks.example.com/hook",
    ] {
        let response = put(url).await.unwrap();
        assert_eq!(response.status().as_u16(), 422, "{url}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["field"], "url", "{url}: {body}");
        assert!(
            !body.to_string().contains("hunter2"),
            "credentials are never echoed: {body}"
        );
    }
    let response = put("https://hooks.example.com/rofr").await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    // Allowed by the operator, private addresses are taken; credentials never are.
    app.broker.allow_private_webhooks(true);
    assert_eq!(
        put("http://127.0.0.1:9000/hook").await.unwrap().status(),
        200
    );
    let response = put("http://alice:hunter2@127.0.0.1/hook").await.unwrap();
    assert_eq!(response.status().as_u16(), 422);
}

/// The deal's versions name the entry that holds each and its file's hash; the
/// buyer and the auditor may read them, a provider may not.
async fn the_deal_names_its_versions_and_their_entries(backend: Backend) {
    use sha2::Digest;
    let app = spawn_app(backend).await;
    let (status, deal) = app.get(&app.buyer, "/v1/deal").await;
    assert_eq!(status, 200, "{deal}");
    assert_eq!(deal["name"], "api-test");
    let versions = deal["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "{deal}");
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[0]["index"], 0, "entry 0 holds it");
    assert_eq!(
        versions[0]["sha256"],
        hex::encode(sha2::Sha256::digest(DEAL))
    );
    assert!(versions[0]["adopted_at"].is_string(), "{deal}");
    assert_eq!(app.get(&app.auditor, "/v1/deal").await.0, 200);
    assert_eq!(app.get(&app.azure, "/v1/deal").await.0, 403);
}

/// The test deal without its first-refusal clause: the right ends.
fn without_the_right() -> String {
    let clause = DEAL.find("[[first_refusal]]").unwrap();
    DEAL[..clause].to_owned()
}

/// Polls a need's events until one of type `kind` is there.
async fn events_until(app: &App, need: &str, kind: &str) -> Vec<Value> {
    let started = std::time::Instant::now();
    loop {
        let (status, body) = app
            .get(&app.buyer, &format!("/v1/needs/{need}/events"))
            .await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().unwrap().clone();
        if events.iter().any(|e| e["event"]["type"] == kind) {
            return events;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no {kind} for {need}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// An amendment is checked whole before it is written: bad text names its
/// file:line:column, an effective time in the past names the field, a dry run says
/// what becomes of the open needs, and none of them writes anything. Written, it is
/// one entry; from its effective time new needs skip the ended right, an open need
/// under `move` has its offer withdrawn, and each need's bundle carries and proves the
/// versions that governed it, refusing one changed byte in an amendment.
async fn an_amendment_ends_the_right_for_new_needs_and_moves_open_ones(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, _) = app.submit("n1", 8).await;
    assert_eq!(status, 201);
    let before = app.event_count().await;
    let amend = |text: &str, effective: &str, dry_run: bool| {
        json!({"file": "v2.toml", "text": text, "effective": effective,
               "open_needs": "move", "dry_run": dry_run})
        .to_string()
    };
    let later = "2030-01-01T00:00:00Z";
    let (status, body) = app
        .post(
            &app.buyer,
            "/v1/deal/amendments",
            &amend("[deal\n", later, false),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (422, &json!("text")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("v2.toml:1:6"),
        "{body}"
    );
    let renamed = DEAL.replace("api-test", "other");
    let (status, body) = app
        .post(
            &app.buyer,
            "/v1/deal/amendments",
            &amend(&renamed, later, false),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("renamed-deal"),
        "{body}"
    );
    let v2 = without_the_right();
    let (status, body) = app
        .post(
            &app.buyer,
            "/v1/deal/amendments",
            &amend(&v2, "2025-01-01T00:00:00Z", false),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (422, &json!("effective")),
        "{body}"
    );
    let (status, body) = app
        .post(&app.azure, "/v1/deal/amendments", &amend(&v2, later, false))
        .await;
    assert_eq!(status, 403, "only the buyer amends: {body}");
    // A text that fits a request but makes a ledger entry over 65,535 bytes (what a
    // C2SP entry bundle's length holds) is refused whole, and the broker goes on.
    let padding = 65_500 - amend(&format!("{v2}\n# "), later, false).len();
    let padded = format!("{v2}\n# {}", "x".repeat(padding));
    let request = amend(&padded, later, false);
    assert!(request.len() <= 64 * 1024, "{}", request.len());
    let (status, body) = app.post(&app.buyer, "/v1/deal/amendments", &request).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (413, &json!("entry_too_large")),
        "{body}"
    );
    assert_eq!(app.event_count().await, before, "nothing written");
    let (status, plan) = app
        .post(&app.buyer, "/v1/deal/amendments", &amend(&v2, later, true))
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["version"], 2);
    assert_eq!(plan["impact"]["withdrawn"]["azure"], 1, "{plan}");
    assert!(
        plan["changes"].to_string().contains("first_refusal"),
        "{plan}"
    );
    assert_eq!(
        app.event_count().await,
        before,
        "refusals and dry runs write nothing"
    );

    let now = app.broker.clock().now().to_string();
    let (status, answer) = app
        .post(&app.buyer, "/v1/deal/amendments", &amend(&v2, &now, false))
        .await;
    assert_eq!(status, 201, "{answer}");
    let entry = &answer["events"][0];
    assert_eq!(entry["event"]["type"], "deal_amended", "{answer}");
    assert_eq!(entry["event"]["version"], 2);
    assert_eq!(entry["event"]["open_needs"], "move");
    let amendment_index = entry["index"].as_u64().unwrap();

    // The next command brings the version into force, if the answer did not.
    let (status, body) = app.submit("n2", 8).await;
    assert_eq!(status, 201, "{body}");
    let submitted = &body["events"][0]["event"];
    assert_eq!(
        submitted["holder"],
        Value::Null,
        "a need after the effective time skips the holder"
    );
    assert_eq!(submitted["deal_version"], 2);
    assert!(
        body["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["event"]["type"] != "offer_sent"),
        "{body}"
    );
    let n1 = events_until(&app, "n1", "terms_changed").await;
    let kinds: Vec<&str> = n1
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    let withdrawn = kinds
        .iter()
        .position(|k| *k == "offer_withdrawn")
        .expect("withdrawn");
    assert_eq!(kinds[withdrawn + 1], "terms_changed", "{kinds:?}");
    assert!(
        kinds[withdrawn + 2..].contains(&"rfq_sent"),
        "then sourced: {kinds:?}"
    );

    let (_, deal) = app.get(&app.auditor, "/v1/deal").await;
    let versions = deal["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{deal}");
    assert_eq!(versions[1]["index"], amendment_index);
    assert_eq!(versions[1]["in_force"], true);
    assert_eq!(versions[0]["in_force"], false);
    assert_eq!(versions[1]["open_needs"], "move");

    let key = rofr_ledger::VerifierKey::parse(&app.broker.ledger(|l| l.verifier_key())).unwrap();
    for (need, version_lines) in [("n1", 2), ("n2", 1)] {
        let bundle = app.broker.evidence(need, None).await.unwrap().unwrap();
        let json = serde_json::to_vec(&bundle).unwrap();
        let report = rofr_ledger::evidence::verify(&json, &key).unwrap();
        let text = report.lines.join("\n");
        assert_eq!(
            text.matches("by deal \"api-test\" version").count(),
            version_lines,
            "{need}: {text}"
        );
        assert!(text.contains("version 2 (#"), "{need}: {text}");
        let indexes: Vec<u64> = bundle.entries.iter().map(|e| e.index).collect();
        assert!(
            indexes.contains(&0) && indexes.contains(&amendment_index),
            "{indexes:?}"
        );
        assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");

        let mut forged: Value = serde_json::from_slice(&json).unwrap();
        let place = indexes.iter().position(|i| *i == amendment_index).unwrap();
        let slot = &mut forged["entries"][place]["data"];
        let mut data = B64.decode(slot.as_str().unwrap()).unwrap();
        let at = data.windows(5).position(|w| w == b"azure").unwrap();
        data[at] = b'b';
        *slot = Value::String(B64.encode(&data));
        let failure = rofr_ledger::evidence::verify(forged.to_string().as_bytes(), &key)
            .expect_err("a changed byte in the amendment fails");
        assert_eq!(failure.entry, Some(amendment_index), "{}", failure.reason);
    }
    // A provider other than a holder is not shown the terms.
    let bundle = app
        .broker
        .evidence("n2", Some(&ProviderId::parse("oracle").unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert!(bundle
        .entries
        .iter()
        .all(|e| e.index != amendment_index && e.index != 0));
}

/// Under `keep`, a need open at the effective time runs on under the version it was
/// submitted under: its offer to the holder stands, and nothing moves it. Needs
/// submitted after follow the new version.
async fn under_keep_open_needs_keep_the_terms_they_started_under(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, _) = app.submit("n1", 8).await;
    assert_eq!(status, 201);
    let body = json!({"file": "v2.toml", "text": without_the_right(), "effective": "now"});
    let (status, plan) = app
        .post(
            &app.buyer,
            "/v1/deal/amendments",
            &json!({"file": "v2.toml", "text": without_the_right(), "effective": "now", "dry_run": true}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        plan["impact"]["withdrawn"],
        json!({}),
        "keep withdraws nothing: {plan}"
    );
    let (status, answer) = app
        .post(&app.buyer, "/v1/deal/amendments", &body.to_string())
        .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer["events"][0]["event"]["open_needs"], "keep",
        "the default"
    );
    let (_, body) = app.submit("n2", 8).await;
    assert_eq!(body["events"][0]["event"]["deal_version"], 2);
    assert_eq!(body["events"][0]["event"]["holder"], Value::Null);
    let (_, n1) = app.get(&app.buyer, "/v1/needs/n1/events").await;
    let kinds: Vec<&str> = n1["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["need_submitted", "offer_sent"], "{n1}");
    // The holder may still answer the offer it was made under version 1.
    let (status, body) = app.post(&app.azure, "/v1/needs/n1/accept", "{}").await;
    assert_eq!(status, 200, "{body}");
    let (_, need) = app.get(&app.buyer, "/v1/needs/n1").await;
    assert_eq!(need["holder"], "azure", "{need}");
}

/// Each test, once on SQLite and once on PostgreSQL.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(backend) = super::Backend::postgres(stringify!($name)) {
                        super::$name(backend).await
                    }
                }
            )*
        }
    };
}

on_both_backends!(
    a_submitted_need_is_offered_to_the_holder_first,
    another_provider_can_neither_see_nor_answer_the_holders_offer,
    a_decline_sends_requests_for_quotes_and_the_cheapest_quote_wins,
    requests_without_a_valid_token_are_unauthorized,
    parties_are_held_to_their_roles,
    bad_input_gets_a_4xx_naming_the_field_and_writes_nothing,
    a_retry_with_the_same_idempotency_key_repeats_no_effect,
    pages_are_bounded_and_follow_on,
    health_and_metrics_answer,
    the_openapi_document_is_served_and_locked,
    offers_reach_the_providers_webhook_signed_and_retried_until_accepted,
    checkpoints_follow_the_policy_and_proofs_check_against_them,
    a_command_that_fails_inside_the_broker_is_refused_alone,
    hostile_requests_get_their_4xx_in_the_envelope_and_write_nothing,
    health_shows_the_brokers_clock,
    webhooks_may_not_reach_inside_the_brokers_network_or_carry_credentials,
    the_deal_names_its_versions_and_their_entries,
    an_amendment_ends_the_right_for_new_needs_and_moves_open_ones,
    under_keep_open_needs_keep_the_terms_they_started_under,
);
