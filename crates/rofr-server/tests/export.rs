//! Period exports from a witnessed broker, read back by `rofr_report`: the whole and a
//! provider's view (I6), an empty period, the API's refusals, and hostile bytes: any
//! changed byte of an entry, proof or end line, and any line dropped, doubled or moved,
//! is refused.

mod common;
use common::witnessed::{self, submit};

use proptest::prelude::*;
use rofr_engine::types::{ProviderId, Timestamp};
use rofr_ledger::{CosignerKey, VerifierKey};
use rofr_server::{Broker, Party};

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

async fn export(broker: &Broker, from: &str, to: &str, viewer: Option<&str>) -> Vec<u8> {
    let viewer = viewer.map(|p| ProviderId::parse(p).unwrap());
    broker
        .export(at(from), at(to), viewer.as_ref(), Vec::new())
        .await
        .unwrap()
        .0
}

fn keys(app: &witnessed::Witnessed) -> (VerifierKey, CosignerKey) {
    (
        VerifierKey::parse(&app.log_key).unwrap(),
        CosignerKey::parse(&app.witness_key).unwrap(),
    )
}

async fn exports_verify_and_obey_i6(dir: &std::path::Path, location: rofr_store::Location) {
    let app = witnessed::start_on(dir, location).await;
    submit(&app.url, &app.buyer, "n", 12).await;
    let (key, witness) = keys(&app);
    let whole = export(
        &app.broker,
        "2025-01-01T00:00:00Z",
        "2026-01-01T00:00:00Z",
        None,
    )
    .await;
    let report = rofr_report::make(
        whole.as_slice(),
        "whole",
        &key,
        std::slice::from_ref(&witness),
    )
    .unwrap();
    assert_eq!(report.figures.needs.total.value, 12.0);
    assert_eq!(report.checkpoint.cosigned_by[0].name, "witness.azure.test");
    // Every entry of the log, and so no proof hash.
    let size = app.broker.log_size();
    assert_eq!(report.export_entries, size);
    assert!(!String::from_utf8_lossy(&whole).contains("\"proof\":[\""));
    // The holder sees its offers and the needs, never a rival's requests or quotes; a
    // provider that holds no right sees no deal entry.
    let azure = export(
        &app.broker,
        "2025-01-01T00:00:00Z",
        "2026-01-01T00:00:00Z",
        Some("azure"),
    )
    .await;
    let report = rofr_report::make(azure.as_slice(), "azure", &key, &[]).unwrap();
    assert_eq!(report.shown_to.as_deref(), Some("azure"));
    assert_eq!(report.figures.first_refusal.in_scope.value, 12.0);
    for line in String::from_utf8(azure).unwrap().lines().skip(1) {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(p) = line["entry"]["provider"].as_str() {
            assert_eq!(p, "azure", "{line}");
        }
    }
    let oracle = export(
        &app.broker,
        "2025-01-01T00:00:00Z",
        "2026-01-01T00:00:00Z",
        Some("oracle"),
    )
    .await;
    let text = String::from_utf8(oracle.clone()).unwrap();
    assert!(!text.contains("deal_adopted") && !text.contains("need_submitted"));
    // Its entries are few and scattered: the proof has hashes.
    let report = rofr_report::make(oracle.as_slice(), "oracle", &key, &[]).unwrap();
    assert!(report
        .figures
        .not_verified
        .iter()
        .any(|l| l.contains("not shown to oracle")));
    // A period before anything happened: the deal's entry is not in it, and the proof
    // is the root alone.
    let empty = export(
        &app.broker,
        "2024-01-01T00:00:00Z",
        "2024-02-01T00:00:00Z",
        None,
    )
    .await;
    let report = rofr_report::make(empty.as_slice(), "empty", &key, &[]).unwrap();
    assert_eq!(report.export_entries, 0);
    assert_eq!(report.figures.needs.total.value, 0.0);
    // Over the API: the buyer's export is the same file; a provider asking for another's
    // view gets 404; a bad bound names its field.
    let client = reqwest::Client::new();
    let over_http = client
        .get(format!(
            "{}/v1/ledger/export?from=2025-01-01&to=2026-01-01",
            app.url
        ))
        .bearer_auth(&app.buyer)
        .send()
        .await
        .unwrap();
    assert_eq!(over_http.status(), 200);
    let over_http = over_http.bytes().await.unwrap();
    let report = rofr_report::make(&over_http[..], "http", &key, &[witness]).unwrap();
    assert_eq!(report.figures.needs.total.value, 12.0);
    let oracle_token = Broker::create_token(
        &app.location,
        &Party::Provider(ProviderId::parse("oracle").unwrap()),
        "t",
    )
    .unwrap();
    let other = client
        .get(format!(
            "{}/v1/ledger/export?from=2025-01-01&to=2026-01-01&provider=azure",
            app.url
        ))
        .bearer_auth(&oracle_token)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    for (query, field) in [
        ("from=2025-13-01&to=2026-01-01", "from"),
        ("from=2025-01-01&to=2024-01-01", "to"),
        (
            "from=2025-01-01&to=2026-01-01&provider=Not%20An%20Id",
            "provider",
        ),
    ] {
        let refused = client
            .get(format!("{}/v1/ledger/report?{query}", app.url))
            .bearer_auth(&app.buyer)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 422, "{query}");
        let body: serde_json::Value = refused.json().await.unwrap();
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let html = client
        .get(format!(
            "{}/v1/ledger/report?from=2025-01-01&to=2026-01-01",
            app.url
        ))
        .bearer_auth(&app.buyer)
        .send()
        .await
        .unwrap();
    assert_eq!(html.status(), 200);
    assert!(html
        .text()
        .await
        .unwrap()
        .contains("<section id=\"first-refusal\">"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_verify_and_show_each_provider_its_own() {
    let dir = tempfile::tempdir().unwrap();
    exports_verify_and_obey_i6(
        dir.path(),
        rofr_store::Location::Sqlite(dir.path().join("rofr.db")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_too() {
    let Some(scratch) = rofr_store::ScratchDatabase::for_test("rofr_export", "export") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    exports_verify_and_obey_i6(dir.path(), scratch.location()).await;
}

/// One honest export of a small log, made once for the property below.
fn sample() -> &'static (Vec<u8>, String) {
    static SAMPLE: std::sync::OnceLock<(Vec<u8>, String)> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(|| {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let app = witnessed::start(dir.path()).await;
            submit(&app.url, &app.buyer, "h", 6).await;
            // The holder declines some: requests for quotes go to the others, which the
            // holder's view leaves out, so its proof has hashes to break.
            let azure = Broker::create_token(
                &app.location,
                &Party::Provider(ProviderId::parse("azure").unwrap()),
                "t",
            )
            .unwrap();
            for i in [1, 3, 4] {
                let answer = reqwest::Client::new()
                    .post(format!("{}/v1/needs/h-{i}/decline", app.url))
                    .bearer_auth(&azure)
                    .json(&serde_json::json!({"reason": "no_capacity"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(answer.status(), 200);
            }
            let mut bytes = export(
                &app.broker,
                "2025-01-01T00:00:00Z",
                "2026-01-01T00:00:00Z",
                Some("azure"),
            )
            .await;
            bytes.extend(
                export(
                    &app.broker,
                    "2025-01-01T00:00:00Z",
                    "2026-01-01T00:00:00Z",
                    None,
                )
                .await,
            );
            (bytes, app.log_key.clone())
        })
    })
}

#[derive(Debug, Clone)]
enum Damage {
    Byte { line: usize, at: usize, to: u8 },
    Drop(usize),
    Double(usize),
    Swap(usize, usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(line, at, to)| Damage::Byte {
            line,
            at,
            to
        }),
        any::<usize>().prop_map(Damage::Drop),
        any::<usize>().prop_map(Damage::Double),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Damage::Swap(a, b)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Any damage below the header is refused: the entries and proof are the evidence.
    /// (The header's period and view are the reader's question, and the report states
    /// them; its checkpoint is signed.)
    #[test]
    fn a_damaged_export_is_refused(which in 0usize..2, damage in damage()) {
        let (bytes, log_key) = sample();
        let key = VerifierKey::parse(log_key).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        // The two exports, one after the other: pick one.
        let lines: Vec<&str> = text.lines().collect();
        let second = lines.iter().skip(1).position(|l| l.starts_with("{\"format\"")).unwrap() + 1;
        let mut lines: Vec<String> = if which == 0 { &lines[..second] } else { &lines[second..] }
            .iter().map(|l| l.to_string()).collect();
        let honest = lines.join("\n") + "\n";
        prop_assert!(rofr_report::make(honest.as_bytes(), "x", &key, &[]).is_ok());
        let body = 1..lines.len();
        let pick = |n: usize| body.start + n % body.len();
        match damage {
            Damage::Byte { line, at, to } => {
                let line = pick(line);
                let mut b = lines[line].clone().into_bytes();
                let at = at % b.len();
                prop_assume!(b[at] != to && to != b'\n');
                b[at] = to;
                lines[line] = String::from_utf8_lossy(&b).into_owned();
                prop_assume!(lines[line].as_bytes() != honest.lines().nth(line).unwrap().as_bytes());
            }
            Damage::Drop(n) => { lines.remove(pick(n)); }
            Damage::Double(n) => { let l = lines[pick(n)].clone(); lines.insert(pick(n), l); }
            Damage::Swap(a, b) => {
                let (a, b) = (pick(a), pick(b));
                prop_assume!(lines[a] != lines[b]);
                lines.swap(a, b);
            }
        }
        let damaged = lines.join("\n") + "\n";
        let result = rofr_report::make(damaged.as_bytes(), "x", &key, &[]);
        prop_assert!(result.is_err(), "accepted: {:?}", damage);
    }
}
