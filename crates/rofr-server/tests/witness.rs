//! The witness over real HTTP on loopback: its answers as C2SP tlog-witness writes
//! them, and a broker gathering its cosignatures into evidence — then an operator who
//! rewrites history and signs it with the real key, which the witness refuses.

mod common;
use common::origin;
use common::signed_log::{Log, ORIGIN};
use common::witnessed::{self, get, submit, witnessing, Witnessed};

use std::future::IntoFuture as _;
use std::sync::Arc;

use rofr_ledger::witness::AddCheckpoint;
use rofr_ledger::{Checkpoint, CosignerKey, SigningKey, VerifierKey};
use rofr_server::witness::Witness;
use rofr_server::{Broker, Clock};

async fn serve_witness(witness: Witness) -> (String, Arc<Witness>) {
    let witness = Arc::new(witness);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        axum::serve(listener, rofr_server::witness::router(witness.clone())).into_future(),
    );
    (url, witness)
}

async fn post(url: &str, body: String) -> (u16, String, String) {
    let answer = reqwest::Client::new()
        .post(format!("{url}/add-checkpoint"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let media = answer
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, media, answer.text().await.unwrap())
}

#[tokio::test]
async fn the_witness_answers_as_c2sp_tlog_witness_writes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::new(300, None);
    let mut witness = Witness::open(&dir.path().join("w.db"), Some("witness.test/w1")).unwrap();
    witness.trust(ORIGIN, VerifierKey::parse(&log.key.verifier_key()).unwrap());
    let cosigner = CosignerKey::parse(&witness.verifier_key()).unwrap();
    let (url, witness) = serve_witness(witness).await;

    // The first checkpoint, from size zero: one cosignature line on the checkpoint.
    let (status, _, body) = post(&url, log.request(0, 100)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("\u{2014} witness.test/w1 ") && body.ends_with('\n'));
    assert_eq!(body.lines().count(), 1);
    let cosigned = format!("{}{body}", log.note(100));
    let at = cosigner.check(&cosigned).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(at <= now && now - at < 60, "the cosignature's time is now");

    // Growth with a consistency proof.
    let (status, _, body) = post(&url, log.request(100, 300)).await;
    assert_eq!(status, 200, "{body}");
    // A stale old size: 409, the size held, as text/x.tlog.size.
    let (status, media, body) = post(&url, log.request(100, 300)).await;
    assert_eq!(
        (status, media.as_str(), body.as_str()),
        (409, "text/x.tlog.size", "300\n")
    );
    let (status, _, body) = post(&url, log.request(0, 300)).await;
    assert_eq!((status, body.as_str()), (409, "300\n"));
    // The same checkpoint again is cosigned again.
    let (status, _, _) = post(&url, log.request(300, 300)).await;
    assert_eq!(status, 200);
    // Old size above the checkpoint's: 400.
    let smaller = AddCheckpoint {
        old: 300,
        proof: Vec::new(),
        checkpoint: log.note(200),
    };
    let (status, _, _) = post(&url, smaller.body()).await;
    assert_eq!(status, 400);
    // Unknown origin: 404. No trusted signature: 403. Malformed: 400.
    let other = SigningKey::from_seed("example.test/log", &[8; 32]).unwrap();
    let forged = AddCheckpoint {
        old: 300,
        proof: Vec::new(),
        checkpoint: other
            .sign(&Checkpoint::parse(&log.note(300)).unwrap().body())
            .unwrap(),
    };
    let (status, _, _) = post(&url, forged.body()).await;
    assert_eq!(status, 403);
    let unknown = SigningKey::from_seed("elsewhere.test/log", &[9; 32]).unwrap();
    let elsewhere = AddCheckpoint {
        old: 0,
        proof: Vec::new(),
        checkpoint: unknown
            .sign("elsewhere.test/log\n1\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")
            .unwrap(),
    };
    let (status, _, _) = post(&url, elsewhere.body()).await;
    assert_eq!(status, 404);
    let (status, _, _) = post(&url, "old 01\n\nx\n".into()).await;
    assert_eq!(status, 400);
    assert!(witness.forks().unwrap().is_empty());

    // A rewritten history signed with the real key: the same size with another root
    // is a fork (409), a bigger one without a valid proof is refused (422); both kept.
    let rewritten = Log::new(400, Some(5));
    let (status, media, body) = post(&url, rewritten.request(300, 300)).await;
    assert_eq!(status, 409, "{body}");
    assert!(!media.starts_with("text/x.tlog.size"));
    let (status, _, _) = post(&url, rewritten.request(300, 400)).await;
    assert_eq!(status, 422);
    let forks = witness.forks().unwrap();
    assert_eq!(forks.len(), 2);
    assert_eq!(forks[0].kind, "same_size_other_root");
    assert_eq!(forks[1].kind, "inconsistent");
    assert_eq!(forks[0].held, log.note(300));
    assert_eq!(forks[0].shown, rewritten.note(300));
    // It still holds the honest checkpoint.
    let held = witness.held().unwrap();
    assert_eq!(
        (held[0].size, held[0].note.as_str()),
        (300, log.note(300).as_str())
    );
}

async fn evidence(url: &str, token: &str, need: &str) -> String {
    get(url, token, &format!("/v1/ledger/evidence/{need}")).await
}

#[tokio::test]
async fn bundles_carry_the_witness_cosignature_and_a_rewritten_log_loses_it() {
    let dir = tempfile::tempdir().unwrap();
    let Witnessed {
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
    } = witnessed::start(dir.path()).await;
    submit(&url, &buyer, "n", 2).await;
    let bundle = evidence(&url, &buyer, "n-0").await;
    let cosigner = CosignerKey::parse(&witness_key).unwrap();
    let log = VerifierKey::parse(&log_key).unwrap();
    let report = rofr_ledger::evidence::verify_witnessed(
        bundle.as_bytes(),
        &log,
        std::slice::from_ref(&cosigner),
    )
    .unwrap_or_else(|f| panic!("{f}: {bundle}"));
    assert!(report
        .lines
        .iter()
        .any(|l| l.contains("Cosigned by witness witness.azure.test")));
    // The checkpoint is served with the cosignature, and the status says so.
    let served_note = get(&url, &buyer, "/tlog/checkpoint").await;
    assert!(cosigner.check(&served_note).is_ok(), "{served_note}");
    let status = witnessing(&url, &buyer).await;
    assert_eq!(status["witnesses"][0]["name"], "azure");
    assert!(status["witnessed_size"].as_u64().unwrap() > 0, "{status}");
    let held = witness.held().unwrap()[0].size;
    let _ = stop.send(());
    served.await.unwrap().unwrap();
    broker.shutdown();
    drop(broker);

    // The operator rewrites n1's submission, recomputes its recorded hash, drops the
    // checkpoints that would betray it, and starts again with the real key.
    let db = rusqlite::Connection::open(dir.path().join("rofr.db")).unwrap();
    let (index, data): (i64, Vec<u8>) = db
        .query_row(
            "SELECT idx, data FROM events WHERE need = 'n-0' ORDER BY idx LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let text = String::from_utf8(data)
        .unwrap()
        .replace("\"gpus\":8", "\"gpus\":4");
    db.execute(
        "UPDATE events SET data = ?1, leaf_hash = ?2 WHERE idx = ?3",
        rusqlite::params![
            text.as_bytes(),
            rofr_ledger::leaf_hash(text.as_bytes()).to_vec(),
            index
        ],
    )
    .unwrap();
    db.execute("DELETE FROM checkpoints", []).unwrap();
    drop(db);
    let broker = Broker::open(
        &location,
        None,
        Clock::scaled(origin(), 1.0),
        Some(&key_file),
    )
    .unwrap();
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", api.local_addr().unwrap());
    tokio::spawn(rofr_server::serve(
        broker.clone(),
        api,
        std::future::pending(),
    ));
    let bundle = evidence(&url, &buyer, "n-0").await;
    // Without the witness the rewritten log's bundle verifies: only its own key vouches.
    rofr_ledger::evidence::verify(bundle.as_bytes(), &log).unwrap();
    let failure =
        rofr_ledger::evidence::verify_witnessed(bundle.as_bytes(), &log, &[cosigner]).unwrap_err();
    assert!(
        failure
            .reason
            .contains("no cosignature by witness `witness.azure.test`"),
        "{failure}"
    );
    // The witness refused it and kept both checkpoints; it still holds the honest one.
    let forks = witness.forks().unwrap();
    assert!(!forks.is_empty(), "the witness kept no fork proof");
    assert_eq!(witness.held().unwrap()[0].size, held);
    let status = witnessing(&url, &buyer).await;
    let error = status["witnesses"][0]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("409") || error.contains("422"), "{status}");
    broker.shutdown();
}
