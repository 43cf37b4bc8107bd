//! `rofr witness` as its operator runs it: killed with SIGKILL while a log streams
//! checkpoints at it, restarted, it holds at least every checkpoint it cosigned, and
//! refuses to roll back; its key and its fork proofs from the command line.

mod common;
#[path = "../../rofr-server/tests/common/signed_log.rs"]
mod signed_log;

use std::path::Path;

use common::{rofr, spawn_with_url, stdout, succeed, Server};
use rofr_ledger::witness::AddCheckpoint;
use rofr_ledger::SigningKey;
use signed_log::{Log, ORIGIN};

fn witness(db: &Path, log: &SigningKey) -> Server {
    spawn_with_url(
        rofr()
            .args([
                "witness",
                "serve",
                "--name",
                "witness.test/w1",
                "--listen",
                "127.0.0.1:0",
                "--db",
            ])
            .arg(db)
            .arg("--log")
            .arg(format!("{ORIGIN}={}", log.verifier_key())),
    )
}

async fn add(
    client: &reqwest::Client,
    url: &str,
    body: String,
) -> Result<(u16, String), reqwest::Error> {
    let answer = client
        .post(format!("{url}/add-checkpoint"))
        .body(body)
        .send()
        .await?;
    let status = answer.status().as_u16();
    Ok((status, answer.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_witness_keeps_what_it_cosigned_and_refuses_to_roll_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("witness.db");
    // A name no key can have is refused, and no file is made.
    let refused = rofr()
        .args(["witness", "key", "--name", "bad name", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--name `bad name`"));
    assert!(!db.exists());
    let log = std::sync::Arc::new(Log::new(5_000, None));
    let streamed = log.clone();
    let key_before = stdout(&succeed(
        rofr()
            .args(["witness", "key", "--name", "witness.test/w1", "--db"])
            .arg(&db),
    ));

    let running = witness(&db, &log.key);
    let client = reqwest::Client::new();
    // Checkpoints stream at the witness, 10 entries apart; it is killed under them.
    let url = running.url.clone();
    let stream_client = client.clone();
    let (acknowledged, mut seen) = tokio::sync::watch::channel(0u64);
    let stream = tokio::spawn(async move {
        let mut old = 0;
        for size in (10..=5_000).step_by(10) {
            match add(&stream_client, &url, streamed.request(old, size)).await {
                Ok((200, _)) => {
                    old = size;
                    acknowledged.send_replace(size);
                }
                Ok((status, body)) => panic!("{status} {body} at {size}"),
                Err(_) => return old,
            }
        }
        old
    });
    seen.wait_for(|s| *s >= 500).await.unwrap();
    let mut running = running;
    running.child.kill().unwrap(); // SIGKILL
    running.child.wait().unwrap();
    let last = stream.await.unwrap();
    assert!(last >= 500);

    let running = witness(&db, &log.key);
    let held: serde_json::Value = client
        .get(format!("{}/held", running.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let size = held[0]["size"].as_u64().unwrap();
    // Everything acknowledged is kept; at most the one in flight is more.
    assert!(
        size == last || size == last + 10,
        "held {size}, last acknowledged {last}"
    );
    assert_eq!(held[0]["note"], log.note(size));
    // A log that asks from before what is held learns the size held.
    let (status, body) = add(&client, &running.url, log.request(last - 100, last))
        .await
        .unwrap();
    assert_eq!((status, body), (409, format!("{size}\n")));
    // Rolling back is refused.
    let smaller = AddCheckpoint {
        old: size,
        proof: Vec::new(),
        checkpoint: log.note(size - 50),
    };
    let (status, _) = add(&client, &running.url, smaller.body()).await.unwrap();
    assert_eq!(status, 400);
    // It goes on from where it stands.
    let (status, _) = add(&client, &running.url, log.request(size, size + 10))
        .await
        .unwrap();
    assert_eq!(status, 200);
    // The same key, and no forks until a rewritten history is shown.
    assert_eq!(
        stdout(&succeed(
            rofr()
                .args(["witness", "key", "--name", "witness.test/w1", "--db"])
                .arg(&db),
        )),
        key_before
    );
    let forks = rofr()
        .args(["witness", "forks", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(forks.status.code(), Some(0));
    let rewritten = Log::new(5_000, Some(7));
    let (status, _) = add(
        &client,
        &running.url,
        rewritten.request(size + 10, size + 10),
    )
    .await
    .unwrap();
    assert_eq!(status, 409);
    let forks = rofr()
        .args(["witness", "forks", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(forks.status.code(), Some(3));
    let proofs: serde_json::Value = serde_json::from_slice(&forks.stdout).unwrap();
    assert_eq!(proofs[0]["kind"], "same_size_other_root");
    assert_eq!(proofs[0]["shown"], rewritten.note(size + 10));
}
