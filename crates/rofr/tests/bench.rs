//! `rofr bench broker` as a user runs it: one row per client count, and a count it
//! cannot use refused before any run.

mod common;

use common::rofr;

#[test]
fn each_client_count_gets_its_own_run() {
    let output = rofr()
        .args([
            "bench",
            "broker",
            "--needs",
            "40",
            "--clients",
            "2,4",
            "--mode",
            "in-process",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("in-process"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].contains("clients    2 "), "{}", rows[0]);
    assert!(rows[1].contains("clients    4 "), "{}", rows[1]);
    assert!(
        rows.iter().all(|r| r.contains("needs       40 ")),
        "{stdout}"
    );
    assert!(stdout.starts_with("rofr bench broker: 40 needs x 3 commands each, 2, 4 clients"));
}

#[test]
fn a_client_count_of_zero_is_refused_before_any_run() {
    let output = rofr()
        .args(["bench", "broker", "--needs", "40", "--clients", "4,0"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--clients: every count must be positive"),
        "{stderr}"
    );
}
