//! The dashboard in a real browser: Debian's Chromium, driven by playwright-core from
//! `tools/browser/dashboard.mjs`, against a real `rofr serve`. Screenshots of each page
//! are written to `target/dashboard-screenshots/`.

mod common;

use std::path::Path;
use std::process::Command;

use common::{rofr, serve, stdout, succeed, token};

fn tools() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/browser"))
}

#[test]
fn the_dashboard_shows_the_api_figures_and_lets_a_provider_answer() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let node = Command::new("node").arg("--version").output();
    if !Path::new(&chromium).exists()
        || !node.is_ok_and(|o| o.status.success())
        || !tools().join("node_modules/playwright-core").exists()
    {
        common::skip(&format!(
            "needs {chromium}, node and tools/browser/node_modules"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("rofr.db");
    let deal = common::STARGATE;
    let server = serve(&database, &["--deal", deal]);
    let buyer = token(&database, &["--party", "buyer"]);
    let azure = token(&database, &["--party", "provider", "--provider", "azure"]);
    let oracle = token(&database, &["--party", "provider", "--provider", "oracle"]);
    for id in ["train-1", "train-2"] {
        let file = dir.path().join(format!("{id}.json"));
        std::fs::write(&file, common::need_json(id).to_string()).unwrap();
        succeed(
            rofr()
                .args(["need", "submit", file.to_str().unwrap()])
                .env("ROFR_SERVER", &server.url)
                .env("ROFR_TOKEN", &buyer),
        );
    }
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../dashboard-screenshots");
    let output = Command::new("node")
        .arg(tools().join("dashboard.mjs"))
        .env("ROFR_URL", &server.url)
        .env("SHOTS", &shots)
        .env("BUYER", &buyer)
        .env("AZURE", &azure)
        .env("ORACLE", &oracle)
        .env("NEED", "train-1")
        .env("OTHER_NEED", "train-2")
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout(&output).contains("checks passed"),
        "{}",
        stdout(&output)
    );
    for page in [
        "overview",
        "providers",
        "offers",
        "need",
        "ledger",
        "provider-offers",
        "other-provider",
    ] {
        assert!(
            shots.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
