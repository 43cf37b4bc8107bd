//! Helpers shared by the binary's end-to-end tests: a real `rofr serve` on a free port,
//! and running `rofr` commands against it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

/// A running `rofr serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example deal most tests serve.
pub const STARGATE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/deals/stargate.toml"
);

/// Says why a test cannot run here; under CI, where .ci/run installs everything,
/// that is a failure.
pub fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{why}, and CI must run this test"
    );
    eprintln!("SKIPPED: {why} (.ci/run installs it)");
}

/// Says why a test cannot run part of itself anywhere `.ci/run` could set it up: what
/// it needs is on no package registry this project may install from.
pub fn skip_uninstallable(why: &str) {
    eprintln!("SKIPPED: {why}; no package registry carries it, so CI skips this too");
}

pub fn rofr() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rofr"))
}

/// Runs `command` and asserts that it succeeded, showing what it printed where not.
pub fn succeed(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Sends `request` and reads its JSON answer.
pub async fn get_json(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Starts `rofr serve` on a free loopback port with `extra` arguments; the URL is read
/// from its first line of output.
pub fn serve(database: impl AsRef<std::ffi::OsStr>, extra: &[&str]) -> Server {
    spawn_with_url(
        rofr()
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(database)
            .args(extra),
    )
}

/// Starts a `rofr` server command whose first line of output names its URL.
pub fn spawn_with_url(command: &mut Command) -> Server {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in `{line}`"))
        .to_owned();
    Server { child, url }
}

/// Creates a token with `rofr token create` and returns it.
pub fn token(database: impl AsRef<std::ffi::OsStr>, party: &[&str]) -> String {
    let output = succeed(
        rofr()
            .args(["token", "create", "--database"])
            .arg(database)
            .args(party),
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Runs `rofr ARGS` against the server with a token; returns (exit code, stdout, stderr).
pub fn run(server: &Server, token: &str, args: &[&str]) -> (i32, String, String) {
    let output = rofr()
        .args(args)
        .env("ROFR_SERVER", &server.url)
        .env("ROFR_TOKEN", token)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs the checker; `None` where its validator is not installed (said on the way).
pub fn check_export(
    format: &str,
    file: &std::path::Path,
    env: &[(&str, String)],
) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/check-export.py");
    // The Python with the validators: `ROFR_EXPORT_PYTHON` (as .ci/run sets), else python3.
    let python = std::env::var("ROFR_EXPORT_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut command = std::process::Command::new(python);
    command.arg(script).arg(format).arg(file);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Some(said),
        Some(2) => {
            skip(&format!("{format} export not validated: {said}"));
            None
        }
        _ => panic!("{format} export fails its validator:\n{said}"),
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A need starting in a week, as JSON, with RFC 3339 times from the real clock.
pub fn need_json(id: &str) -> serde_json::Value {
    let now = chrono::Utc::now();
    let at = |days: i64| {
        (now + chrono::Duration::days(days))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    serde_json::json!({
        "id": id, "sku": "H100", "gpus": 64, "hours": 72, "workload": "training",
        "earliest_start": at(7), "latest_start": at(21), "max_price_per_gpu_hour": 8.0, "decide_by": at(14)
    })
}

/// Every entry of the log, paged through `/v1/events`: `{"index", "event"}` each.
/// The events among a log's entries (as `/v1/events` lists them): every entry but the
/// one adopting the deal, which a new log begins with.
pub fn events_in(entries: &[serde_json::Value]) -> Vec<rofr_engine::Event> {
    entries
        .iter()
        .filter(|e| e["event"]["type"] != "deal_adopted")
        .map(|e| serde_json::from_value(e["event"].clone()).unwrap())
        .collect()
}

pub async fn all_events(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let mut path = format!("{url}/v1/events?limit=1000");
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        let page = get_json(client.get(path).bearer_auth(token)).await;
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => return events,
        }
    }
}

/// Whether python3 with `cryptography` is here to run the independent verifier.
pub fn has_python() -> bool {
    let python = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status();
    if !python.is_ok_and(|s| s.success()) {
        skip("python3 with the `cryptography` package is not installed");
        return false;
    }
    true
}
