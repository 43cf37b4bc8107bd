//! `rofr demo`'s holder runs a witness: every need's evidence bundle carries its
//! cosignature, and verifies with the log's key and the witness's.

mod common;

use common::{rofr, stdout};
use rofr_tools::demo::{run, DemoOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_bundle_carries_the_holders_cosignature() {
    let dir = tempfile::tempdir().unwrap();
    let running = run(DemoOptions {
        needs: 12,
        speed: 864_000.0,
        seed: 7,
        listen: "127.0.0.1:0".into(),
        database: Some(dir.path().join("demo.db")),
        progress: false,
    })
    .await
    .unwrap();
    let w = &running.witnessing;
    assert!(
        w.checkpoint_size > 0 && w.witnessed_size == w.checkpoint_size,
        "{w:?}"
    );
    let auditor = &running
        .tokens
        .iter()
        .find(|(l, _)| l == "auditor")
        .unwrap()
        .1;
    let log = rofr_ledger::VerifierKey::parse(&running.verifier_key).unwrap();
    let witness = rofr_ledger::CosignerKey::parse(&running.witness_key).unwrap();
    let client = reqwest::Client::new();
    for i in 0..12 {
        let bundle = client
            .get(format!("{}/v1/ledger/evidence/need-{i:05}", running.url))
            .bearer_auth(auditor)
            .send()
            .await
            .unwrap();
        assert_eq!(bundle.status(), 200, "need-{i:05}");
        let bundle = bundle.text().await.unwrap();
        let report = rofr_ledger::evidence::verify_witnessed(
            bundle.as_bytes(),
            &log,
            std::slice::from_ref(&witness),
        )
        .unwrap_or_else(|f| panic!("need-{i:05}: {f}"));
        assert!(report
            .lines
            .iter()
            .any(|l| l.contains("Cosigned by witness witness.azure.demo/rofr")));
    }
    // From the command line, as the demo tells a user: `rofr verify --witness`, and the
    // independent verifier in tools/.
    let bundle = client
        .get(format!("{}/v1/ledger/evidence/need-00000", running.url))
        .bearer_auth(auditor)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let file = dir.path().join("bundle.json");
    std::fs::write(&file, &bundle).unwrap();
    let verify = |witness: &str| {
        rofr()
            .arg("verify")
            .arg(&file)
            .args(["--key", &running.verifier_key, "--witness", witness])
            .output()
            .unwrap()
    };
    let verified = verify(&running.witness_key);
    assert!(verified.status.success(), "{}", stdout(&verified));
    assert!(stdout(&verified).contains("Cosigned by witness witness.azure.demo/rofr"));
    // Another witness's key is not satisfied by the holder's cosignature.
    let other = rofr_ledger::CosigningKey::from_seed("witness.other/w", &[5; 32]).unwrap();
    let refused = verify(&other.verifier_key());
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        stdout(&refused).contains("no cosignature by witness `witness.other/w`"),
        "{}",
        stdout(&refused)
    );
    if common::has_python() {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tools/verify-evidence.py"
        );
        let python = |witness: &str| {
            std::process::Command::new("python3")
                .arg(script)
                .arg(&file)
                .arg(&running.verifier_key)
                .args(["--witness", witness])
                .output()
                .unwrap()
        };
        let accepted = python(&running.witness_key);
        assert!(accepted.status.success(), "{}", stdout(&accepted));
        assert!(stdout(&accepted).starts_with("cosigned by witness.azure.demo/rofr at "));
        let refused = python(&other.verifier_key());
        assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    }
    let _ = running.stop.send(true);
    let _ = running.server.await;
    let _ = running.witness.await;
}
