//! The command-line client against a real `rofr serve`: a need's life driven by the
//! buyer's and the holder's commands, as a user would type them.

mod common;

use std::path::Path;

use common::{rofr, run, serve, token, Server};

/// `rofr serve` of the stargate example deal on `database`, with `extra` arguments.
fn serve_stargate(database: &Path, extra: &[&str]) -> Server {
    let deal = common::STARGATE;
    let mut args = vec!["--deal", deal];
    args.extend_from_slice(extra);
    serve(database, &args)
}

#[test]
fn a_need_goes_from_submission_to_confirmed_award_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("rofr.db");
    let server = serve_stargate(&database, &[]);
    let buyer = token(&database, &["--party", "buyer"]);
    let azure = token(&database, &["--party", "provider", "--provider", "azure"]);
    let unknown = rofr()
        .args([
            "token",
            "create",
            "--party",
            "provider",
            "--provider",
            "aws",
        ])
        .arg("--database")
        .arg(&database)
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no provider `aws`"));

    let need = common::need_json("train-1");
    let file = dir.path().join("need.json");
    std::fs::write(&file, need.to_string()).unwrap();

    let (code, out, err) = run(&server, &buyer, &["need", "submit", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("need_submitted")
            && out.contains("offer_sent")
            && out.contains("provider=azure"),
        "{out}"
    );

    let (code, out, _) = run(&server, &azure, &["offer", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.lines().nth(1).is_some_and(|l| l.starts_with("train-1")),
        "{out}"
    );

    let (code, out, err) = run(&server, &azure, &["offer", "accept", "train-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("award_made"), "{out}");

    let (code, out, err) = run(
        &server,
        &azure,
        &["award", "confirm", "train-1", "1", "--reservation", "az-77"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("award_confirmed") && out.contains("need_fulfilled"),
        "{out}"
    );

    let (code, out, _) = run(&server, &buyer, &["need", "list", "--json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["status"], "active");

    let (code, out, err) = run(
        &server,
        &azure,
        &["award", "list", "--status", "confirmed", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let awards: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(awards[0]["need"], "train-1", "{out}");
    assert_eq!(awards[0]["reservation"], "az-77", "{out}");
    let (code, _, err) = run(&server, &azure, &["award", "list", "--status", "lost"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown award status `lost`"), "{err}");

    let migrated = rofr()
        .arg("migrate")
        .arg("--database")
        .arg(&database)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("(0 migrations applied now)"));

    // A provider command with the buyer's token is refused with the server's reason.
    let (code, _, err) = run(&server, &buyer, &["rfq", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("403 forbidden"), "{err}");

    // Started again, the broker says how much of the log it read before it serves.
    let (_, events, _) = run(&server, &buyer, &["events", "--json", "--limit", "1000"]);
    let entries = serde_json::from_str::<serde_json::Value>(&events).unwrap()["events"]
        .as_array()
        .unwrap()
        .len();
    drop(server);
    let mut again = rofr()
        .args(["serve", "--listen", "127.0.0.1:0", "--database"])
        .arg(&database)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(again.stdout.take().unwrap()),
        &mut banner,
    )
    .unwrap();
    assert!(banner.starts_with("rofr: serving"), "{banner}");
    again.kill().unwrap();
    let output = again.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("reading its event log")
            && said.contains(&format!("read {entries} log entries in ")),
        "{said}"
    );
}

#[test]
fn tokens_are_listed_by_id_and_a_revoked_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("rofr.db");
    let server = serve_stargate(&database, &["--token-recheck", "0s"]);
    let buyer = token(&database, &["--party", "buyer", "--label", "lab"]);
    let azure = token(&database, &["--party", "provider", "--provider", "azure"]);
    let (code, _, err) = run(&server, &azure, &["offer", "list"]);
    assert_eq!(code, 0, "{err}");

    let listed = common::succeed(
        rofr()
            .args(["token", "list", "--json", "--database"])
            .arg(&database),
    );
    let text = common::stdout(&listed);
    assert!(!text.contains(&azure) && !text.contains(&buyer), "{text}");
    let rows: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{text}");
    let azure_row = rows.iter().find(|r| r["provider"] == "azure").unwrap();
    assert_eq!(azure_row["party"], "provider");
    let lab = rows.iter().find(|r| r["label"] == "lab").unwrap();
    assert_eq!(lab["party"], "buyer");
    let id = azure_row["id"].as_str().unwrap();
    assert_eq!(id.len(), 12);

    let revoke = |id: &str| {
        rofr()
            .args(["token", "revoke", id, "--database"])
            .arg(&database)
            .output()
            .unwrap()
    };
    for (bad, says) in [
        ("abc", "is not a token id"),
        ("zzzzzzzzzz", "is not a token id"),
        ("0000000000000", "no token has the id"),
    ] {
        let output = revoke(bad);
        assert_eq!(output.status.code(), Some(1), "{bad}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains(says),
            "{bad}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = revoke(id);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("revoked"));

    // The server looks tokens up again at once (--token-recheck 0s): the revoked one
    // is refused, the other still works.
    let (code, _, err) = run(&server, &azure, &["offer", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = run(&server, &buyer, &["need", "list"]);
    assert_eq!(code, 0, "{err}");
    let listed = common::succeed(rofr().args(["token", "list", "--database"]).arg(&database));
    let table = common::stdout(&listed);
    assert!(!table.contains(id) && table.contains("lab"), "{table}");
}

/// `rofr need list | head -1`: the reader goes away, and the command ends quietly as
/// other Unix tools do (killed by SIGPIPE, nothing on stderr).
#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_a_listing_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("rofr.db");
    let server = serve_stargate(&database, &[]);
    let buyer = token(&database, &["--party", "buyer"]);
    let file = dir.path().join("need.json");
    std::fs::write(&file, common::need_json("train-1").to_string()).unwrap();
    assert_eq!(
        run(&server, &buyer, &["need", "submit", file.to_str().unwrap()]).0,
        0
    );
    let mut child = rofr()
        .args(["need", "list"])
        .env("ROFR_SERVER", &server.url)
        .env("ROFR_TOKEN", &buyer)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the first line is written.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    assert!(
        output.status.success() || output.status.signal() == Some(libc::SIGPIPE),
        "{:?}",
        output.status
    );
}
