//! The ledger as a user and an auditor meet it: a real broker, an evidence bundle that
//! verifies offline, and a database tampered with in every way the audit must catch.

mod common;

use rofr_store::Location;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{rofr, serve, stdout};

fn run(args: &[&str], token: Option<&str>, server: Option<&str>) -> Output {
    let mut command = rofr();
    command.args(args);
    if let Some(t) = token {
        command.env("ROFR_TOKEN", t);
    }
    if let Some(s) = server {
        command.env("ROFR_SERVER", s);
    }
    command.output().unwrap()
}

fn token(database: &Path, party: &[&str]) -> String {
    common::token(database, party)
}

fn need_file(dir: &Path) -> PathBuf {
    let path = dir.join("need.json");
    std::fs::write(&path, common::need_json("train-7").to_string()).unwrap();
    path
}

/// Makes a database whose log tells a full first-refusal story: the holder declines,
/// Oracle is awarded, a checkpoint covers it all. Returns (database, bundle, key).
fn story(dir: &Path) -> (PathBuf, PathBuf, String) {
    let database = dir.join("rofr.db");
    let deal = common::STARGATE;
    let server = serve(&database, &["--deal", deal]);
    let url = Some(server.url.as_str());

    let buyer = token(&database, &["--party", "buyer"]);
    let azure = token(&database, &["--party", "provider", "--provider", "azure"]);
    let oracle = token(&database, &["--party", "provider", "--provider", "oracle"]);
    let coreweave = token(
        &database,
        &["--party", "provider", "--provider", "coreweave"],
    );
    let auditor = token(&database, &["--party", "auditor"]);
    let need = need_file(dir);
    for (args, who) in [
        (vec!["need", "submit", need.to_str().unwrap()], &buyer),
        (
            vec!["offer", "decline", "train-7", "--reason", "no_capacity"],
            &azure,
        ),
        (
            vec!["quote", "train-7", "--gpus", "64", "--price", "5.9"],
            &oracle,
        ),
        (
            vec!["offer", "decline", "train-7", "--reason", "no_capacity"],
            &coreweave,
        ),
    ] {
        let output = run(&args, Some(who), url);
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Proofs from the command line: the inclusion proof of entry 1 in the tree of 4.
    let proof = run(
        &["ledger", "inclusion", "--index", "1", "--size", "4"],
        Some(&auditor),
        url,
    );
    assert!(
        proof.status.success(),
        "{}",
        String::from_utf8_lossy(&proof.stderr)
    );
    assert_eq!(
        stdout(&proof).lines().count(),
        2,
        "a leaf in a tree of 4 has a path of 2"
    );
    let consistency = run(
        &["ledger", "consistency", "--from", "2", "--to", "4"],
        Some(&auditor),
        url,
    );
    assert!(consistency.status.success());
    assert_eq!(
        stdout(&consistency).lines().count(),
        1,
        "the tree of 2 is the left half of the tree of 4"
    );
    let bundle = dir.join("bundle.json");
    let output = run(
        &[
            "ledger",
            "evidence",
            "train-7",
            "--out",
            bundle.to_str().unwrap(),
        ],
        Some(&auditor),
        url,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Each provider's own view of the need, as it would fetch it.
    for (name, who) in [
        ("azure", &azure),
        ("oracle", &oracle),
        ("coreweave", &coreweave),
    ] {
        let out = dir.join(format!("bundle-{name}.json"));
        let output = run(
            &[
                "ledger",
                "evidence",
                "train-7",
                "--out",
                out.to_str().unwrap(),
            ],
            Some(who),
            url,
        );
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // A provider the need never concerned is not shown its evidence.
    let lambda = run(
        &["ledger", "evidence", "train-7"],
        Some(&token(
            &database,
            &["--party", "provider", "--provider", "softbank-stargate"],
        )),
        url,
    );
    assert_eq!(lambda.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&lambda.stderr).contains("404"));
    drop(server);

    let key = stdout(&run(
        &["ledger", "key", "--database", database.to_str().unwrap()],
        None,
        None,
    ))
    .trim()
    .to_owned();
    // Fold the WAL into the main file, so that copies of the file are whole.
    rusqlite::Connection::open(&database)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    (database, bundle, key)
}

fn verify(bundle: &Path, key: &str) -> Output {
    run(
        &["verify", bundle.to_str().unwrap(), "--key", key],
        None,
        None,
    )
}

fn audit(database: &Path) -> Output {
    run(
        &["ledger", "audit", "--database", database.to_str().unwrap()],
        None,
        None,
    )
}

/// A copy of the database (and its key file) with `sql` applied.
fn tampered(database: &Path, name: &str, sql: &str) -> PathBuf {
    let copy = database.with_file_name(format!("{name}.db"));
    std::fs::copy(database, &copy).unwrap();
    std::fs::copy(
        rofr_server::ledger::key_path(&Location::Sqlite(database.to_owned())),
        rofr_server::ledger::key_path(&Location::Sqlite(copy.clone())),
    )
    .unwrap();
    rusqlite::Connection::open(&copy)
        .unwrap()
        .execute_batch(sql)
        .unwrap();
    copy
}

#[test]
fn the_ledger_proves_the_story_and_catches_every_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let (database, bundle, key) = story(dir.path());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(rofr_server::ledger::key_path(&Location::Sqlite(
            database.clone(),
        )))
        .unwrap()
        .permissions()
        .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "the signing key is readable only by its owner"
        );
    }

    let verified = verify(&bundle, &key);
    let text = stdout(&verified);
    assert_eq!(verified.status.code(), Some(0), "{text}");
    assert!(
        text.contains("VERIFIED: evidence for need train-7"),
        "{text}"
    );
    assert!(text.contains("azure refused 64 GPUs"), "{text}");
    assert!(
        text.contains("awarded 64 GPUs to oracle at $5.9/GPU-h; covered by the holder's refusals"),
        "{text}"
    );

    // One byte changed in one entry's data: the entry is named.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let entry = &mut json["entries"][2];
    let index = entry["index"].as_u64().unwrap();
    let mut data = B64.decode(entry["data"].as_str().unwrap()).unwrap();
    let at = data.iter().position(|b| *b == b'6').unwrap();
    data[at] = b'9';
    entry["data"] = serde_json::Value::String(B64.encode(&data));
    let forged = dir.path().join("forged.json");
    std::fs::write(&forged, json.to_string()).unwrap();
    let refused = verify(&forged, &key);
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        stdout(&refused).contains(&format!("entry {index}:")),
        "{}",
        stdout(&refused)
    );

    // Another key does not accept the checkpoint.
    let stranger = "stranger+aabbccdd+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    let other_key = rofr_ledger::SigningKey::from_seed("someone", &[7; 32])
        .unwrap()
        .verifier_key();
    assert_eq!(verify(&bundle, &other_key).status.code(), Some(3));
    assert_eq!(
        verify(&bundle, stranger).status.code(),
        Some(1),
        "a malformed key is a usage error"
    );

    let clean = audit(&database);
    assert_eq!(clean.status.code(), Some(0), "{}", stdout(&clean));
    assert!(stdout(&clean).starts_with("audit ok"), "{}", stdout(&clean));

    let cases = [
        ("edited", "UPDATE events SET data = CAST(replace(CAST(data AS TEXT), '64', '65') AS BLOB) WHERE idx = 2;", "entry 2 was altered"),
        ("deleted", "DELETE FROM events WHERE idx = 3;", "entry 3 is missing"),
        (
            "swapped",
            "UPDATE events SET data = (SELECT data FROM events WHERE idx = 2) WHERE idx = 1;",
            "entry 1 was altered",
        ),
        (
            "rehashed",
            "UPDATE events SET data = CAST(replace(CAST(data AS TEXT), '64', '65') AS BLOB), leaf_hash = NULL WHERE idx = 2;",
            "between 0 and",
        ),
        ("truncated", "DELETE FROM events WHERE idx = (SELECT MAX(idx) FROM events);", "is missing"),
        (
            "forged",
            "UPDATE checkpoints SET note = replace(note, 'rofr.local/', 'rofr.forged/');",
            "does not verify",
        ),
    ];
    for (name, sql, expected) in cases {
        let copy = tampered(&database, name, sql);
        let output = audit(&copy);
        assert_eq!(output.status.code(), Some(3), "{name}: {}", stdout(&output));
        assert!(
            stdout(&output).contains(expected),
            "{name}: {}",
            stdout(&output)
        );
    }
}

/// The entries of a bundle file, decoded: (type, provider, the leaf's text).
fn entries_of(bundle: &Path) -> Vec<(String, Option<String>, String)> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle).unwrap()).unwrap();
    json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            let text =
                String::from_utf8(B64.decode(entry["data"].as_str().unwrap()).unwrap()).unwrap();
            let event: serde_json::Value = serde_json::from_str(&text).unwrap();
            let kind = event["type"].as_str().unwrap().to_owned();
            let provider = event["provider"].as_str().map(str::to_owned);
            (kind, provider, text)
        })
        .collect()
}

/// Each provider's bundle holds what it may see (I6): its own entries; the holder's
/// also the need and the terms of the award to a rival, which let it check its right.
/// None shows a rival's request for quotes or quote, and every one still verifies.
#[test]
fn a_providers_evidence_shows_only_what_is_its_own_and_still_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let (_, whole, key) = story(dir.path());
    // The need's entries; the deal's entry is no need's.
    let of_need = |entries: &[(String, Option<String>, String)]| {
        entries
            .iter()
            .filter(|(kind, _, _)| kind != "deal_adopted")
            .count()
    };
    let all = entries_of(&whole);
    let bundle = |name: &str| dir.path().join(format!("bundle-{name}.json"));

    for (name, holder) in [("azure", true), ("oracle", false), ("coreweave", false)] {
        let shown = entries_of(&bundle(name));
        for (kind, provider, text) in &shown {
            let own = provider.as_deref() == Some(name);
            let holders_right =
                holder && (kind == "need_submitted" || kind == "award_made" || provider.is_none());
            assert!(own || holders_right, "{name} was shown {text}");
            assert!(
                !matches!(
                    kind.as_str(),
                    "rfq_sent" | "quote_received" | "rfq_declined" | "award_confirmed"
                ) || own,
                "{name} was shown a rival's {text}"
            );
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle(name)).unwrap()).unwrap();
        let withheld = json["shown_to"]["withheld"].as_u64().unwrap();
        assert_eq!(withheld as usize, of_need(&all) - of_need(&shown), "{name}");
        assert_eq!(
            shown.iter().any(|(kind, _, _)| kind == "deal_adopted"),
            holder,
            "{name}: the holder, a party to the deal, is shown its terms; a rival is not"
        );
        assert_eq!(json["shown_to"]["provider"], name);
        if !holder {
            assert!(
                json["holder"].is_null(),
                "{name} is not told who holds the right"
            );
            assert!(!shown.iter().any(|(_, _, t)| t.contains("azure")), "{name}");
        }

        let verified = verify(&bundle(name), &key);
        let text = stdout(&verified);
        assert_eq!(verified.status.code(), Some(0), "{name}: {text}");
        assert!(
            text.contains(&format!(
                "{withheld} entries of the need are not shown to this party"
            )) || text.contains(&format!(
                "{withheld} of its entries are not shown to this party"
            )),
            "{name}: {text}"
        );
        if holder {
            // The holder checks its right from its own bundle.
            assert!(text.contains("covered by the holder's refusals"), "{text}");
        }
    }
    let oracle = entries_of(&bundle("oracle"));
    assert!(oracle.iter().any(|(kind, _, _)| kind == "quote_received"));
    assert!(oracle.iter().any(|(kind, _, _)| kind == "award_made"));
    let coreweave = entries_of(&bundle("coreweave"));
    assert!(!coreweave.iter().any(|(_, _, text)| text.contains("oracle")));

    // A partial bundle with a rival's entry slipped in does not verify.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle("coreweave")).unwrap()).unwrap();
    json["shown_to"]["provider"] = serde_json::json!("oracle");
    let forged = dir.path().join("forged-view.json");
    std::fs::write(&forged, json.to_string()).unwrap();
    assert_eq!(verify(&forged, &key).status.code(), Some(3));
}

/// Runs the independent verifier on `bundle`.
fn python_verify(bundle: &Path, key: &str) -> Output {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/verify-evidence.py"
    );
    Command::new("python3")
        .arg(script)
        .arg(bundle)
        .arg(key)
        .output()
        .unwrap()
}

/// The independent verifier in `tools/` (Python, written from the RFC and C2SP specs)
/// accepts the bundle as written, and refuses it changed.
#[test]
fn an_independent_verifier_accepts_the_bundle_byte_for_byte() {
    if !common::has_python() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, bundle, key) = story(dir.path());
    let accepted = python_verify(&bundle, &key);
    assert!(accepted.status.success(), "{}", stdout(&accepted));
    assert!(
        stdout(&accepted).starts_with("ok: "),
        "{}",
        stdout(&accepted)
    );
    let partial = python_verify(&dir.path().join("bundle-oracle.json"), &key);
    assert!(partial.status.success(), "{}", stdout(&partial));

    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let mut hash = B64
        .decode(json["entries"][1]["proof"][0].as_str().unwrap())
        .unwrap();
    hash[0] ^= 1;
    json["entries"][1]["proof"][0] = serde_json::Value::String(B64.encode(hash));
    let changed = dir.path().join("changed.json");
    std::fs::write(&changed, json.to_string()).unwrap();
    let refused = python_verify(&changed, &key);
    assert!(!refused.status.success(), "{}", stdout(&refused));
}

/// A whole bundle carries the deal's entry: `rofr verify` names the version, its hash
/// and the clause first refusal was judged under, and the independent verifier checks
/// the deal's bytes. A one-byte change to the deal's entry fails, naming the entry.
#[test]
fn evidence_names_the_terms_that_governed_the_need() {
    let dir = tempfile::tempdir().unwrap();
    let (_, bundle, key) = story(dir.path());
    let verified = verify(&bundle, &key);
    let text = stdout(&verified);
    assert_eq!(verified.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Governed by deal \"stargate\" version 1 (#0, "),
        "{text}"
    );
    assert!(
        text.contains("first_refusal[0] \"azure-rofr\" at ")
            && text.contains("azure holds a first_offer right; window 3d; partial acceptance allowed; re-offer threshold 5%; third-party window 45d; offer prices "),
        "{text}"
    );
    assert!(
        text.contains("First refusal is judged under these terms."),
        "{text}"
    );

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    assert_eq!(json["entries"][0]["index"], 0);
    let mut changed = json.clone();
    let mut data = B64
        .decode(changed["entries"][0]["data"].as_str().unwrap())
        .unwrap();
    let at = data.windows(3).position(|w| w == b"72h").unwrap();
    data[at + 1] = b'3';
    changed["entries"][0]["data"] = serde_json::Value::String(B64.encode(&data));
    let forged = dir.path().join("forged-deal.json");
    std::fs::write(&forged, changed.to_string()).unwrap();
    let refused = verify(&forged, &key);
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        stdout(&refused).contains("entry 0:"),
        "{}",
        stdout(&refused)
    );

    // Without the deal's entry the story still verifies, and says what it rests on.
    let mut without = json.clone();
    without["entries"].as_array_mut().unwrap().remove(0);
    let bare = dir.path().join("without-deal.json");
    std::fs::write(&bare, without.to_string()).unwrap();
    let verified = verify(&bare, &key);
    assert_eq!(verified.status.code(), Some(0), "{}", stdout(&verified));
    assert!(
        stdout(&verified).contains("the bundle holds no entry of it"),
        "{}",
        stdout(&verified)
    );

    if !common::has_python() {
        return;
    }
    let accepted = python_verify(&bundle, &key);
    assert!(accepted.status.success(), "{}", stdout(&accepted));
    assert!(
        stdout(&accepted).contains("deal stargate version 1: "),
        "{}",
        stdout(&accepted)
    );
    let refused = python_verify(&forged, &key);
    assert!(!refused.status.success());
    assert!(
        stdout(&refused).starts_with("entry 0:"),
        "{}",
        stdout(&refused)
    );
}
