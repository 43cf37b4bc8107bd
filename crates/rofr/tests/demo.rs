//! `rofr demo`'s holder runs a witness: every need's evidence bundle carries its
//! cosignature, and verifies with the log's key and the witness's.

mod common;

use common::{check_export, rofr, stdout};
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

/// After the demo, as a new user: export its period, run `rofr report`, and find the
/// broker's summary in the report, in Chromium with no network too; a changed byte or a
/// changed figure is refused, naming it; a provider's export holds only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_period_reports_what_the_broker_summarizes() {
    let dir = tempfile::tempdir().unwrap();
    let running = run(DemoOptions {
        needs: 40,
        speed: 864_000.0,
        seed: 3,
        listen: "127.0.0.1:0".into(),
        database: Some(dir.path().join("demo.db")),
        progress: false,
    })
    .await
    .unwrap();
    let token_of = |label: &str| {
        running
            .tokens
            .iter()
            .find(|(l, _)| l == label)
            .unwrap()
            .1
            .clone()
    };
    let auditor = token_of("auditor");
    // The broker runs on after the demo, as under `--keep`: wait until every need is
    // done, so the summary and the export see the same log.
    let summary_now = || async {
        let mut s: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v1/summary", running.url))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        s.as_object_mut().unwrap().remove("now");
        s
    };
    let mut summary = summary_now().await;
    for _ in 0..120 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let next = summary_now().await;
        let done = next["by_status"]
            .as_object()
            .unwrap()
            .keys()
            .all(|k| ["completed", "expired", "cancelled"].contains(&k.as_str()));
        if done && next == summary {
            break;
        }
        summary = next;
    }
    // The demo wrote its own report of its period.
    assert!(running.report_dir.join("report.html").exists());
    // The demo's period, to a day well after the broker's model time, which runs on.
    let (from, to) = (running.report.from.clone(), "2030-01-01".to_owned());
    let export = dir.path().join("export.jsonl");
    let exported = rofr()
        .args([
            "ledger",
            "export",
            "--from",
            &from[..10],
            "--to",
            &to[..10],
            "--out",
        ])
        .arg(&export)
        .env("ROFR_SERVER", &running.url)
        .env("ROFR_TOKEN", &auditor)
        .output()
        .unwrap();
    assert!(exported.status.success(), "{:?}", exported);
    let out = dir.path().join("report");
    let keys = [
        "--key",
        running.verifier_key.as_str(),
        "--witness",
        running.witness_key.as_str(),
    ];
    let made = rofr()
        .arg("report")
        .arg(&export)
        .arg("--out")
        .arg(&out)
        .args(keys)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stdout(&made));
    assert!(stdout(&made).contains("cosigned by witness.azure.demo/rofr"));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    // The broker's summary (over the whole log, which the period covers).
    assert_eq!(summary, summary_now().await, "the log moved on");
    assert_eq!(
        report["needs"]["total"]["value"],
        summary["needs"].as_f64().unwrap()
    );
    for (status, n) in summary["by_status"].as_object().unwrap() {
        assert_eq!(
            report["needs"]["by_status"][status]["value"],
            n.as_f64().unwrap(),
            "{status}"
        );
    }
    assert_eq!(
        report["holder"]["lapses"]["value"],
        summary["lapses"].as_f64().unwrap()
    );
    assert_eq!(
        report["holder"]["reoffers"]["value"],
        summary["reoffers"].as_f64().unwrap()
    );
    assert_eq!(report["concentration"]["hhi"], summary["hhi"]);
    assert_eq!(report["concentration"]["timeline"], summary["timeline"]);
    assert_eq!(
        report["needs"]["median_hours_to_award"]["value"],
        summary["median_hours_to_award"]
    );
    for (shown, want) in report["concentration"]["providers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(summary["providers"].as_array().unwrap())
    {
        assert_eq!(shown["provider"], want["provider"]);
        assert_eq!(shown["gpu_hours"]["value"], want["gpu_hours"]);
        assert_eq!(shown["share"], want["share"]);
        assert_eq!(shown["cap"], want["cap"]);
    }
    // Every figure names entries of the export.
    assert!(!report["first_refusal"]["in_scope"]["entries"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        report["first_refusal"]["i1_broken"]["value"], 0.0,
        "{}",
        report["first_refusal"]
    );
    let verify = |report: &std::path::Path, export: &std::path::Path| {
        rofr()
            .args(["report", "verify"])
            .arg(report)
            .arg(export)
            .args(keys)
            .output()
            .unwrap()
    };
    let verified = verify(&out.join("report.json"), &export);
    assert!(verified.status.success(), "{}", stdout(&verified));
    // One figure changed: named.
    let mut lied = report.clone();
    lied["holder"]["lapses"]["value"] = serde_json::json!(1_000_000);
    let lied_file = dir.path().join("lied.json");
    std::fs::write(&lied_file, lied.to_string()).unwrap();
    let refused = verify(&lied_file, &export);
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        stdout(&refused).contains("figure `holder.lapses.value` differs"),
        "{}",
        stdout(&refused)
    );
    // One entry's bytes changed: `rofr report` and `rofr report verify` name it, and no
    // report is written.
    let text = std::fs::read_to_string(&export).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let at = lines
        .iter()
        .position(|l| l.contains("\"type\":\"award_made\""))
        .unwrap();
    let index = serde_json::from_str::<serde_json::Value>(&lines[at]).unwrap()["index"]
        .as_u64()
        .unwrap();
    lines[at] = lines[at].replacen("\"gpus\":", "\"gpus\":1", 1);
    let changed = dir.path().join("changed.jsonl");
    std::fs::write(&changed, lines.join("\n") + "\n").unwrap();
    let nowhere = dir.path().join("not-written");
    let refused = rofr()
        .arg("report")
        .arg(&changed)
        .arg("--out")
        .arg(&nowhere)
        .args(keys)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", stdout(&refused));
    assert!(
        stdout(&refused).contains(&format!(":{} (entry {index})", at + 1)),
        "{}",
        stdout(&refused)
    );
    assert!(!nowhere.exists());
    let refused = verify(&out.join("report.json"), &changed);
    assert_eq!(refused.status.code(), Some(3));
    assert!(stdout(&refused).contains(&format!("(entry {index})")));
    // The entry and its leaf hash changed together: the root no longer follows.
    let mut line: serde_json::Value = serde_json::from_str(&lines[at]).unwrap();
    let data = serde_json::to_string(&line["entry"]).unwrap();
    use base64::Engine as _;
    line["leaf"] = base64::engine::general_purpose::STANDARD
        .encode(rofr_ledger::leaf_hash(data.as_bytes()))
        .into();
    lines[at] = serde_json::to_string(&line).unwrap();
    std::fs::write(&changed, lines.join("\n") + "\n").unwrap();
    let refused = verify(&out.join("report.json"), &changed);
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        stdout(&refused).contains("do not rebuild the checkpoint's root"),
        "{}",
        stdout(&refused)
    );
    // A provider's export: its own requests for quotes, quotes and reservations only.
    let oracle = dir.path().join("oracle.jsonl");
    let exported = rofr()
        .args([
            "ledger",
            "export",
            "--from",
            &from[..10],
            "--to",
            &to[..10],
            "--out",
        ])
        .arg(&oracle)
        .env("ROFR_SERVER", &running.url)
        .env("ROFR_TOKEN", token_of("oracle"))
        .output()
        .unwrap();
    assert!(exported.status.success());
    let text = std::fs::read_to_string(&oracle).unwrap();
    for line in text.lines().skip(1) {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(provider) = line["entry"]["provider"].as_str() {
            assert_eq!(provider, "oracle", "{line}");
        }
        assert_ne!(line["entry"]["type"], "deal_adopted");
    }
    let made = rofr()
        .arg("report")
        .arg(&oracle)
        .arg("--out")
        .arg(dir.path().join("oracle-report"))
        .args(["--key", &running.verifier_key])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", stdout(&made));
    // The independent reader in tools/ accepts both exports (the provider's proof has
    // hashes for what it leaves out) and refuses the changed one, naming its line.
    if common::has_python() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/verify-export.py");
        let check = |file: &std::path::Path, witness: bool| {
            let mut command = std::process::Command::new("python3");
            command.arg(script).arg(file).arg(&running.verifier_key);
            if witness {
                command.args(["--witness", &running.witness_key]);
            }
            command.output().unwrap()
        };
        assert!(
            text.contains("\"proof\":[\""),
            "the provider's export has proof hashes"
        );
        for (file, witness) in [(&export, true), (&oracle, false)] {
            let checked = check(file, witness);
            assert!(checked.status.success(), "{}", stdout(&checked));
            assert!(stdout(&checked).starts_with("cosigned by") || !witness);
        }
        let refused = check(&changed, false);
        assert_eq!(refused.status.code(), Some(1));
        assert!(
            stdout(&refused).contains("NOT VERIFIED"),
            "{}",
            stdout(&refused)
        );
    }
    // Another provider's view is not there to ask for.
    let other = rofr()
        .args([
            "ledger",
            "export",
            "--from",
            &from[..10],
            "--to",
            &to[..10],
            "--provider",
            "azure",
        ])
        .env("ROFR_SERVER", &running.url)
        .env("ROFR_TOKEN", token_of("oracle"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&other.stderr).contains("404"));
    // In Chromium with the network off: the same figures, a screenshot per section.
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let tools = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/browser"));
    if !std::path::Path::new(&chromium).exists()
        || !tools.join("node_modules/playwright-core").exists()
    {
        common::skip(&format!(
            "the report in a browser needs {chromium} and tools/browser/node_modules"
        ));
        return;
    }
    let summary_file = dir.path().join("summary.json");
    std::fs::write(&summary_file, summary.to_string()).unwrap();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../report-screenshots");
    let browsed = std::process::Command::new("node")
        .arg(tools.join("report.mjs"))
        .env("REPORT", out.join("report.html"))
        .env("SUMMARY", &summary_file)
        .env("SHOTS", &shots)
        .env("CHROMIUM", &chromium)
        .output()
        .unwrap();
    assert!(
        browsed.status.success() && stdout(&browsed).contains("checks passed"),
        "{}\n{}",
        stdout(&browsed),
        String::from_utf8_lossy(&browsed.stderr)
    );
    for section in [
        "checkpoint",
        "first-refusal",
        "holder",
        "cost",
        "rounds",
        "concentration",
        "approvals",
        "deal",
    ] {
        assert!(
            shots.join(format!("report-{section}.png")).exists(),
            "{section}"
        );
    }
}

/// As a new user would after `rofr demo --keep`: the confirmed awards exported for
/// SkyPilot and as FOCUS rows pass SkyPilot's and the FOCUS validator's own checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demos_awards_export_for_skypilot_and_focus() {
    let dir = tempfile::tempdir().unwrap();
    let running = run(DemoOptions {
        needs: 12,
        speed: 864_000.0,
        seed: 5,
        listen: "127.0.0.1:0".into(),
        database: Some(dir.path().join("demo.db")),
        progress: false,
    })
    .await
    .unwrap();
    let buyer = &running.tokens.iter().find(|(l, _)| l == "buyer").unwrap().1;
    for (format, wanted) in [
        ("skypilot", "SkyPilot config"),
        ("focus", "pass focus-validator"),
    ] {
        let file = dir.path().join(format!("demo.{format}"));
        let out = rofr()
            .args(["export", "--format", format, "--out"])
            .arg(&file)
            .env("ROFR_SERVER", &running.url)
            .env("ROFR_TOKEN", buyer)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(said.contains("confirmed award"), "{said}");
        if let Some(ok) = check_export(format, &file, &[]) {
            assert!(ok.contains(wanted), "{ok}");
        }
    }
    // The FOCUS file holds a usage row for every confirmed award the demo made.
    let focus = std::fs::read_to_string(dir.path().join("demo.focus")).unwrap();
    assert!(
        focus.lines().count() > 1 && focus.contains(",Usage,"),
        "{focus}"
    );
    let _ = running.stop.send(true);
}
