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
