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
        let output = rofr()
            .args(["solve", file.to_str().unwrap(), "--strategy", strategy])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{strategy}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let solution: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
        assert_eq!(solution["cost"], 179712.0, "{strategy}");
        assert_eq!(solution["status"], "optimal", "{strategy}");
        assert_eq!(solution["bound"], 179712.0, "{strategy}");
        assert_eq!(solution["allocations"][0]["gpus"], 64, "{strategy}");
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
