//! `rofr solve` as a user runs it.

mod common;

use common::{rofr, stdout};

const EXAMPLE: &str = r#"{
  "needs": [ { "id": "n1", "gpus": 64, "hours": 720, "unit": 8, "shortfall_penalty": 50.0, "pools": ["oci-a"] } ],
  "pools": [ { "id": "oci-a", "provider": "oci", "gpus": 512, "price_per_gpu_hour": 3.9 } ],
  "caps": [ { "provider": "oci", "max_share": 0.4 } ],
  "base_gpu_hours": { "oci": 100000, "azure": 800000 }
}"#;

#[test]
fn the_product_example_is_solved_to_the_product_solution() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("instance.json");
    std::fs::write(&file, EXAMPLE).unwrap();
    for strategy in ["exact", "ordered", "cheapest-first"] {
        let output =
            common::succeed(rofr().args(["solve", file.to_str().unwrap(), "--strategy", strategy]));
        let solution: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        assert_eq!(solution["cost"], 179712.0, "{strategy}");
        assert_eq!(solution["status"], "optimal", "{strategy}");
        assert_eq!(solution["bound"], 179712.0, "{strategy}");
        assert_eq!(solution["allocations"][0]["gpus"], 64, "{strategy}");
        let said = String::from_utf8_lossy(&output.stderr);
        if strategy == "exact" {
            assert!(
                said.contains("rofr solve: optimal at 179712.00, proven in "),
                "{said}"
            );
        }
    }
}

/// Without `--time-limit` the proof is held to a default, and standard error says so;
/// `--solver highs` in a build without HiGHS says how to get one and writes nothing.
#[test]
fn the_default_limit_and_a_missing_solver_are_said() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("instance.json");
    std::fs::write(&file, EXAMPLE).unwrap();
    let output =
        common::succeed(rofr().args(["solve", file.to_str().unwrap(), "--solver", "search"]));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("rofr solve: proving with the search over rooms within 60 s (the default; --time-limit changes it)"),
        "{said}"
    );
    let out = dir.path().join("solution.json");
    let output = rofr()
        .args([
            "solve",
            file.to_str().unwrap(),
            "--solver",
            "highs",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    if cfg!(feature = "highs") {
        assert!(output.status.success());
        let solution: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        assert_eq!(solution["cost"], 179712.0);
        assert_eq!(solution["status"], "optimal");
    } else {
        assert_eq!(output.status.code(), Some(1));
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains("--solver highs: this rofr was built without HiGHS; build it with `cargo build --release --features highs`"), "{said}");
        assert!(!out.exists());
    }
}

#[test]
fn an_invalid_instance_is_refused_naming_the_json_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("instance.json");
    std::fs::write(
        &file,
        EXAMPLE.replace(r#""pools": ["oci-a"]"#, r#""pools": ["cw-b"]"#),
    )
    .unwrap();
    let output = rofr()
        .args(["solve", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("$.needs[0].pools[0]: no pool `cw-b`"));
}

/// HiGHS, an independent MIP solver given the same instances, finds nothing cheaper
/// than what `rofr solve` reports `optimal`, and nothing dearer than any answer.
#[test]
fn an_independent_solver_finds_no_cheaper_allocation() {
    if !highspy_installed() {
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/check-allocation.py"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut optimal = 0;
    for seed in 1..=6u64 {
        let instance = rofr_tools::bench::generate_instance(seed, 40, 16, 2);
        let file = dir.path().join(format!("instance-{seed}.json"));
        std::fs::write(&file, serde_json::to_string(&instance).unwrap()).unwrap();
        for strategy in ["exact", "ordered", "cheapest-first"] {
            let out = dir.path().join(format!("solution-{seed}-{strategy}.json"));
            let solved = rofr()
                .args([
                    "solve",
                    file.to_str().unwrap(),
                    "--strategy",
                    strategy,
                    "--time-limit",
                    "20",
                    "--out",
                ])
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                solved.status.success(),
                "{}",
                String::from_utf8_lossy(&solved.stderr)
            );
            let solution: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
            if strategy == "exact" && solution["status"] == "optimal" {
                optimal += 1;
            }
            let checked = std::process::Command::new("python3")
                .arg(script)
                .arg(&file)
                .arg(&out)
                .output()
                .unwrap();
            assert!(
                checked.status.success(),
                "seed {seed} {strategy}: {}",
                stdout(&checked)
            );
        }
    }
    assert_eq!(optimal, 6, "only {optimal} of 6 instances proven optimal");
}

/// However short the time, an answer called optimal costs what the optimum does: a
/// search stopped part way says `feasible`.
#[test]
fn an_answer_cut_short_by_the_time_limit_is_never_called_optimal_wrongly() {
    use std::time::Duration;
    for seed in 1..=3u64 {
        let instance = rofr_tools::bench::generate_instance(seed, 40, 16, 2);
        let optimum = rofr_solver::exact(&instance, None).unwrap();
        assert_eq!(optimum.status, rofr_solver::Status::Optimal, "seed {seed}");
        for micros in [100, 300, 1_000, 3_000, 10_000, 30_000] {
            let solved =
                rofr_solver::exact(&instance, Some(Duration::from_micros(micros))).unwrap();
            rofr_solver::check(&instance, &solved.allocations).unwrap();
            assert!(
                solved.bound <= optimum.cost + 1e-6,
                "seed {seed}, {micros} µs"
            );
            if solved.status == rofr_solver::Status::Optimal {
                assert!(
                    (solved.cost - optimum.cost).abs() <= 1e-9 * optimum.cost,
                    "seed {seed}, {micros} µs: optimal at {} against {}",
                    solved.cost,
                    optimum.cost
                );
            } else {
                assert_eq!(
                    solved.status,
                    rofr_solver::Status::Feasible,
                    "seed {seed}, {micros} µs"
                );
            }
        }
    }
}

/// `rofr bench solve` puts HiGHS beside rofr on the same instance, which it keeps:
/// both prove the small one, at the same cost.
#[test]
fn the_solve_bench_puts_highs_beside_rofr() {
    if !highspy_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/check-allocation.py"
    );
    let output = common::succeed(rofr().args([
        "bench",
        "solve",
        "--sizes",
        "10x5x2",
        "--seeds",
        "1",
        "--no-target",
        "--time-limit",
        "10",
        "--highs-script",
        script,
        "--write-instances",
        dir.path().to_str().unwrap(),
    ]));
    let text = stdout(&output);
    let row = text
        .lines()
        .find(|l| l.starts_with("10x5x2-s42"))
        .unwrap_or_else(|| panic!("no row: {text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "optimal", "HiGHS: {row}");
    assert!(row.matches("optimal").count() >= 2, "{row}");
    // The cost rofr found less HiGHS's.
    assert!(row.contains(" 0.00 ") || row.contains(" -0.00 "), "{row}");
    let instance = dir.path().join("10x5x2-s42.json");
    assert!(rofr_solver_reads(&instance), "the instance is kept");
    assert!(dir.path().join("10x5x2-s42.search.solution.json").exists());
}

fn rofr_solver_reads(path: &std::path::Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["needs"].as_array().is_some_and(|n| n.len() == 10)
}

/// Whether python3 has HiGHS (`highspy`); says it skips where not.
fn highspy_installed() -> bool {
    let highs = std::process::Command::new("python3")
        .args(["-c", "import highspy"])
        .status();
    let installed = highs.is_ok_and(|s| s.success());
    if !installed {
        common::skip("python3 with the `highspy` package is not installed");
    }
    installed
}
