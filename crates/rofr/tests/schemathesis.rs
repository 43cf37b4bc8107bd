//! Schemathesis (PyPI) against a live `rofr serve`, as the buyer, a provider and the
//! auditor: every request it generates from `/openapi.json` must get an answer the
//! document allows, schema-violating requests a 4xx, and never a 5xx. Its settings
//! and the few rules a schema cannot state are in `tools/schemathesis/`.

mod common;

use std::process::Command;

use common::{serve, token};

/// Seconds each party's run may take.
const SECONDS_PER_PARTY: u32 = 60;

#[test]
fn schemathesis_finds_nothing_wrong_for_any_party() {
    let st = Command::new("st").arg("--version").output();
    if !st.is_ok_and(|o| o.status.success()) {
        common::skip("schemathesis (`st`) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("rofr.db");
    let deal = common::STARGATE;
    let server = serve(
        &database,
        &[
            "--deal",
            deal,
            "--speed",
            "1",
            "--clock-start",
            "2025-02-03T00:00:00Z",
            "--allow-private-webhooks",
        ],
    );
    let buyer = token(&database, &["--party", "buyer"]);
    let auditor = token(&database, &["--party", "auditor"]);
    let azure = token(&database, &["--party", "provider", "--provider", "azure"]);
    // Needs the provider's run can answer: offered to azure, the holder.
    for id in ["seed-1", "seed-2"] {
        let need = serde_json::json!({
            "id": id, "sku": "H100", "gpus": 64, "hours": 72, "workload": "training",
            "earliest_start": "2025-02-10T00:00:00Z", "latest_start": "2025-03-01T00:00:00Z",
            "decide_by": "2025-02-20T00:00:00Z", "max_price_per_gpu_hour": 8.0
        });
        let file = dir.path().join(format!("{id}.json"));
        std::fs::write(&file, need.to_string()).unwrap();
        common::succeed(
            common::rofr()
                .args(["need", "submit"])
                .arg(&file)
                .env("ROFR_SERVER", &server.url)
                .env("ROFR_TOKEN", &buyer),
        );
    }
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/schemathesis/schemathesis.toml"
    ))
    .unwrap();
    let mut failed = Vec::new();
    for (party, token, parameters) in [
        ("buyer", &buyer, ""),
        // The provider's answers go to a need offered to it.
        (
            "provider azure",
            &azure,
            "\n[parameters]\n\"path.id\" = \"seed-1\"\n",
        ),
        ("auditor", &auditor, ""),
    ] {
        let config = dir.path().join("schemathesis.toml");
        std::fs::write(&config, format!("{base}{parameters}")).unwrap();
        let output = Command::new("st")
            .arg("--config-file")
            .arg(&config)
            .arg("run")
            .arg(format!("{}/openapi.json", server.url))
            .arg("--header")
            .arg(format!("Authorization: Bearer {token}"))
            .args(["--max-time", &SECONDS_PER_PARTY.to_string()])
            .args(["--workers", "1", "--no-color", "--seed", "7"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let summary = text.lines().rev().take(30).collect::<Vec<_>>();
        eprintln!(
            "schemathesis as the {party}:\n{}",
            summary.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        if !output.status.success() {
            failed.push(format!("as the {party}:\n{text}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    // The runs reached the write paths: needs beyond the two seeds were submitted from
    // the document's examples.
    let listed = common::succeed(
        common::rofr()
            .args(["need", "list", "--json"])
            .env("ROFR_SERVER", &server.url)
            .env("ROFR_TOKEN", &buyer),
    );
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let needs = listed.as_array().expect("a list of needs").len();
    eprintln!("{needs} needs in the broker after the runs");
    assert!(needs > 2, "schemathesis submitted no need: {listed}");
    // Whatever it wrote reads back: killed, the broker's log passes the audit.
    drop(server);
    common::succeed(
        common::rofr()
            .args(["ledger", "audit", "--database"])
            .arg(&database),
    );
}
