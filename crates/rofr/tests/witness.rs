//! `rofr witness` as its operator runs it: killed with SIGKILL while a log streams
//! checkpoints at it, restarted, it holds at least every checkpoint it cosigned, and
//! refuses to roll back; its key and its fork proofs from the command line.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use common::{rofr, stdout, succeed};
use rofr_ledger::witness::AddCheckpoint;
use rofr_ledger::{Checkpoint, MerkleTree, SigningKey};

const ORIGIN: &str = "example.test/log";

struct Running {
    child: Child,
    url: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn witness(db: &Path, log: &SigningKey) -> Running {
    let mut child = rofr()
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
        .arg(format!("{ORIGIN}={}", log.verifier_key()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in `{line}`"))
        .to_owned();
    Running { child, url }
}

struct Log {
    key: SigningKey,
    tree: MerkleTree,
}

impl Log {
    fn note(&self, size: u64) -> String {
        let body = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: self.tree.root(size).unwrap(),
        }
        .body();
        self.key.sign(&body).unwrap()
    }

    fn request(&self, old: u64, size: u64) -> String {
        AddCheckpoint {
            old,
            proof: if old == 0 || old >= size {
                Vec::new()
            } else {
                self.tree.consistency_proof(old, size).unwrap()
            },
            checkpoint: self.note(size),
        }
        .body()
    }
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
    let key = SigningKey::from_seed("example.test/log", &[3; 32]).unwrap();
    let mut tree = MerkleTree::new();
    for i in 0..5_000u32 {
        tree.append(&i.to_be_bytes());
    }
    let log = std::sync::Arc::new(Log { key, tree });
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
    let mut other = MerkleTree::new();
    for i in 0..5_000u32 {
        other.append(&(i + u32::from(i == 7)).to_be_bytes());
    }
    let rewritten = Log {
        key: SigningKey::from_seed("example.test/log", &[3; 32]).unwrap(),
        tree: other,
    };
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
