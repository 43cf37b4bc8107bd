//! `rofr check` as a user runs it: the real binary on the example deals.

use std::process::{Command, Output};

fn rofr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rofr"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_stargate_deal_passes_with_the_windsurf_conflict_named() {
    let output = rofr(&[
        "check",
        "examples/deals/stargate.toml",
        "--today",
        "2026-01-01",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("restriction-denies-holder"), "{text}");
    assert!(
        text.contains("first_refusal[0] \"azure-rofr\" at examples/deals/stargate.toml:"),
        "{text}"
    );
    assert!(
        text.contains("placement_restriction[0] \"windsurf-ip\" at examples/deals/stargate.toml:"),
        "{text}"
    );
}

#[test]
fn the_broken_deal_fails_with_file_line_and_column() {
    let output = rofr(&["check", "examples/deals/broken.toml"]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("examples/deals/broken.toml:11:11 (key `first_refusal[0].variant`)"),
        "{text}"
    );
    assert!(
        text.contains("examples/deals/broken.toml:12:10 (key `first_refusal[0].window`)"),
        "{text}"
    );
}

#[test]
fn json_findings_carry_codes_locations_and_clauses() {
    let output = rofr(&[
        "check",
        "examples/deals/stargate.toml",
        "--json",
        "--today",
        "2026-01-01",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("valid JSON");
    assert_eq!(report["ok"], true);
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "restriction-denies-holder")
        .expect("the windsurf finding");
    assert_eq!(finding["clauses"].as_array().unwrap().len(), 2);
    assert!(finding["location"]["line"].as_u64().unwrap() > 0);
}

#[test]
fn every_example_but_the_broken_one_is_usable() {
    for name in ["stargate", "last-look", "negotiate"] {
        let output = rofr(&["check", &format!("examples/deals/{name}.toml")]);
        assert_eq!(output.status.code(), Some(0), "{name}: {}", stdout(&output));
    }
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let output = rofr(&["check", "examples/deals/nope.toml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("examples/deals/nope.toml"));
}

#[test]
fn a_usage_mistake_exits_with_two() {
    let output = rofr(&["check"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn an_amendment_lists_what_it_changes_from_the_version_in_force() {
    let args = [
        "check",
        "examples/deals/stargate-2025-10.toml",
        "--against",
        "examples/deals/stargate.toml",
        "--today",
        "2026-01-01",
    ];
    let output = rofr(&args);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("examples/deals/stargate.toml:45:1: first_refusal[\"azure-rofr\"]: removed"),
        "a removal points where the old version wrote it: {text}"
    );
    assert!(text.contains("2 changes"), "{text}");

    let json = rofr(&[&args[..], &["--json"]].concat());
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["against"], "examples/deals/stargate.toml");
    let keys: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["deal.description", "first_refusal[\"azure-rofr\"]"]);
    assert!(report["changes"][1]["now"].is_null());

    // Against itself, nothing changes.
    let same = rofr(&[
        "check",
        args[1],
        "--against",
        args[1],
        "--today",
        "2026-01-01",
    ]);
    assert!(
        stdout(&same).contains("no changes against"),
        "{}",
        stdout(&same)
    );
}

#[test]
fn an_amendment_that_renames_the_deal_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("renamed.toml");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/deals/stargate.toml"
    ))
    .unwrap()
    .replace("name = \"stargate\"", "name = \"other\"");
    std::fs::write(&renamed, text).unwrap();
    let renamed = renamed.display().to_string();
    let output = rofr(&[
        "check",
        &renamed,
        "--against",
        "examples/deals/stargate.toml",
    ]);
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("error[renamed-deal]"), "{text}");
    assert!(
        text.contains(&format!("{renamed}:8:8 (key `deal.name`)")),
        "{text}"
    );

    let missing = rofr(&["check", &renamed, "--against", "no-such.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    let error = String::from_utf8_lossy(&missing.stderr);
    assert!(error.contains("no-such.toml"), "{error}");
}
