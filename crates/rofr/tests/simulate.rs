//! `rofr simulate` as a planner runs it: the example scenario, its two files, the
//! figures the HTML shows being the JSON's, and a broken scenario refused whole.

mod common;

use std::path::Path;

use common::{rofr, stdout};

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/scenarios/stargate-2025.toml")
}

fn simulate(dir: &Path, scenario: &Path, name: &str) -> std::process::Output {
    rofr()
        .args([
            "simulate",
            scenario.to_str().unwrap(),
            "--runs",
            "3",
            "--quiet",
        ])
        .arg("--json")
        .arg(dir.join(format!("{name}.json")))
        .arg("--html")
        .arg(dir.join(format!("{name}.html")))
        .output()
        .unwrap()
}

#[test]
fn the_example_scenario_writes_a_report_whose_figures_are_the_jsons() {
    let dir = tempfile::tempdir().unwrap();
    let output = simulate(dir.path(), &example(), "a");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    assert!(text.contains("7 strategies × 3 runs"), "{text}");
    assert!(
        text.contains("Amending the deal as scheduled (")
            && text.contains("from 2025-10-28) against keeping the right all year"),
        "the report sets the amended deal beside the right kept: {text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a.json")).unwrap()).unwrap();
    let html = std::fs::read_to_string(dir.path().join("a.html")).unwrap();
    assert!(!html.contains("<script"), "no scripts");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "nothing fetched"
    );
    assert_eq!(
        html.matches("<svg").count(),
        2 + 7 + 1,
        "delays, seven share charts, cost, unmet"
    );
    let strategies = json["strategies"].as_array().unwrap();
    let names: Vec<&str> = strategies
        .iter()
        .map(|s| s["strategy"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "exclusive",
            "first_offer",
            "last_look",
            "open_market",
            "capped",
            "ordered",
            "amended"
        ]
    );
    for s in strategies {
        let name = s["strategy"].as_str().unwrap();
        let delay = &s["launch_delay_days"];
        // The row of the figures table for this strategy.
        let start = html
            .find(&format!("<tr><td><code>{name}</code></td>"))
            .unwrap();
        let row = &html[start..start + html[start..].find("</tr>").unwrap()];
        for figure in ["mean", "p50", "p90"] {
            let value = format!("<td>{:.2}</td>", delay[figure].as_f64().unwrap());
            assert!(
                row.contains(&value),
                "{name} {figure}: {value} not in {row}"
            );
        }
        let hhi = format!("<td>{:.0}</td>", s["final_hhi"].as_f64().unwrap());
        assert!(row.contains(&hhi), "{name}: {hhi} not in {row}");
        // Conservation, as the JSON reports it.
        let (demand, awarded, unmet) = (
            s["demand_gpu_hours"].as_f64().unwrap(),
            s["awarded_gpu_hours"].as_f64().unwrap(),
            s["unmet_gpu_hours"].as_f64().unwrap(),
        );
        assert!(
            (awarded + unmet - demand).abs() <= 2.0,
            "{name}: {awarded} + {unmet} ≠ {demand}"
        );
    }
    let exclusive = &strategies[0];
    assert_eq!(
        exclusive["holder_share"], 1.0,
        "exclusive awards the holder only"
    );
    let first = &strategies[1];
    assert!(
        exclusive["launch_delay_days"]["mean"].as_f64() > first["launch_delay_days"]["mean"].as_f64(),
        "in the seed's 2025, exclusive sourcing delays launches more than first refusal with fallback"
    );
    // The same seed gives the same bytes.
    let again = simulate(dir.path(), &example(), "b");
    assert!(again.status.success());
    assert_eq!(
        std::fs::read(dir.path().join("a.json")).unwrap(),
        std::fs::read(dir.path().join("b.json")).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.path().join("a.html")).unwrap(),
        std::fs::read(dir.path().join("b.html")).unwrap()
    );
}

#[test]
fn a_broken_scenario_is_refused_naming_the_place_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(example()).unwrap().replace(
        "decline_probability = 0.05\nsilence_probability = 0.05",
        "decline_probability = 1.5\nsilence_probability = 0.05",
    );
    let scenario = dir.path().join("broken.toml");
    // The deal paths are relative to the scenario file; these are absolute.
    let deals = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/deals");
    let text = text
        .replace(
            "deal = \"../deals/stargate.toml\"",
            &format!("deal = \"{}\"", deals.join("stargate.toml").display()),
        )
        .replace(
            "deal = \"../deals/stargate-2025-10.toml\"",
            &format!(
                "deal = \"{}\"",
                deals.join("stargate-2025-10.toml").display()
            ),
        );
    std::fs::write(&scenario, text).unwrap();
    let output = simulate(dir.path(), &scenario, "out");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.toml:105:23"), "{stderr}");
    assert!(
        stderr.contains("provider[0].decline_probability"),
        "{stderr}"
    );
    assert!(!dir.path().join("out.json").exists() && !dir.path().join("out.html").exists());
    // A deal path that leads nowhere is named too.
    let missing = dir.path().join("missing.toml");
    std::fs::write(
        &missing,
        std::fs::read_to_string(example())
            .unwrap()
            .replace("../deals/stargate.toml", "nowhere.toml"),
    )
    .unwrap();
    let output = simulate(dir.path(), &missing, "out");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("missing.toml:12:8") && stderr.contains("nowhere.toml"),
        "{stderr}"
    );
}
