//! `rofr agent --aws` against a real EC2 API emulator (`fakecloud`, run as its own
//! process and never linked): it quotes from `DescribeCapacityBlockOfferings`, buys
//! with `PurchaseCapacityBlock`, and, killed right after a purchase and restarted,
//! confirms what it bought without buying again; the SkyPilot export of the award names
//! the reservation bought. Skipped, saying so, where fakecloud is not installed
//! (`FAKECLOUD` names it, else `fakecloud` on the PATH).

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{rofr, run, serve, skip, token, Server};

const DEAL: &str = r#"
[deal]
name = "aws-agent-test"

[sourcing]
quote_window = "1h"
confirm_window = "30d"

[[provider]]
id = "aws"
skus = ["H100"]
"#;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fakecloud() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FAKECLOUD") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("fakecloud"))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn agent(settings: &Path, server: &Server, token: &str, crash: bool) -> Child {
    let mut command = rofr();
    command
        .args(["agent", "--aws"])
        .arg(settings)
        .env("ROFR_SERVER", &server.url)
        .env("ROFR_TOKEN", token)
        .env("AWS_ACCESS_KEY_ID", "AKIDROFRTEST")
        .env("AWS_SECRET_ACCESS_KEY", "rofr-test-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if crash {
        command.env("ROFR_AWS_AGENT_CRASH_AFTER_PURCHASE", "1");
    }
    command.spawn().unwrap()
}

/// Every capacity reservation the emulator holds, with its `rofr-award` tag, asked
/// through the library's signed client.
fn reservations(endpoint: &str) -> Vec<(String, String)> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let settings = rofr_tools::aws::Settings::parse(
        "inline",
        &format!(
            "provider = \"aws\"\n[aws]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n\
             spending_limit = 0.0\nstate = \"unused\"\n[aws.instance_types]\n"
        ),
    )
    .unwrap();
    std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDROFRTEST");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "rofr-test-secret");
    let keys = rofr_tools::aws::Keys::load("env").unwrap();
    let ec2 = rofr_tools::aws::Ec2::new(&settings.aws, keys);
    runtime
        .block_on(ec2.all_reservations())
        .unwrap()
        .into_iter()
        .map(|r| {
            let tag = r
                .tags
                .get(rofr_tools::aws::AWARD_TAG)
                .cloned()
                .unwrap_or_default();
            (r.id, tag)
        })
        .collect()
}

#[test]
fn the_aws_agent_quotes_buys_and_never_buys_twice() {
    let Some(fakecloud) = fakecloud() else {
        skip(
            "fakecloud is not installed (`cargo install fakecloud --locked --debug`, about \
             12 minutes on 2 cores); set FAKECLOUD or put it on the PATH to run the AWS \
             agent test",
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _emulator = Killed(
        Command::new(&fakecloud)
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("fakecloud", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let endpoint = format!("http://127.0.0.1:{port}/");

    let database = dir.path().join("rofr.db");
    let deal = dir.path().join("deal.toml");
    std::fs::write(&deal, DEAL).unwrap();
    // Model time runs 3,600 times faster than real time, from now: the hour's quote
    // window closes in a second.
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let server = serve(
        &database,
        &[
            "--deal",
            deal.to_str().unwrap(),
            "--speed",
            "3600",
            "--clock-start",
            &now,
        ],
    );
    let buyer = token(&database, &["--party", "buyer"]);
    let aws = token(&database, &["--party", "provider", "--provider", "aws"]);

    let state = dir.path().join("agent-state.json");
    let settings = dir.path().join("aws.toml");
    std::fs::write(
        &settings,
        format!(
            "provider = \"aws\"\npoll_ms = 100\n[aws]\nregion = \"us-east-1\"\n\
             endpoint = \"{endpoint}\"\nspending_limit = 30000.0\nstate = {state:?}\n\
             [aws.instance_types]\nH100 = {{ type = \"p5.48xlarge\", gpus = 8, price_per_gpu_hour = 3.9 }}\n"
        ),
    )
    .unwrap();

    // 16 GPUs for 48 hours: two p5.48xlarge instances, $2,995.20 at $3.90.
    let submit = |id: &str, gpus: u32| {
        let mut need = common::need_json(id);
        need["gpus"] = serde_json::json!(gpus);
        need["hours"] = serde_json::json!(48);
        let file = dir.path().join(format!("{id}.json"));
        std::fs::write(&file, need.to_string()).unwrap();
        let (code, _, err) = run(&server, &buyer, &["need", "submit", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
    };
    let award_of = |id: &str| -> serde_json::Value {
        let (code, out, err) = run(&server, &buyer, &["need", "show", id, "--json"]);
        assert_eq!(code, 0, "{err}");
        let need: serde_json::Value = serde_json::from_str(&out).unwrap();
        need["awards"][0].clone()
    };

    submit("train-1", 16);
    // The first agent dies right after its purchase, before it records the reservation.
    let mut first = agent(&settings, &server, &aws, true);
    let status = {
        let start = Instant::now();
        loop {
            if let Some(status) = first.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the agent never bought"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(!status.success(), "it was to crash after buying");
    let award = award_of("train-1");
    assert_eq!(award["status"], "made", "{award}");
    assert_eq!(award["price_per_gpu_hour"], 3.9, "{award}");
    let bought = reservations(&endpoint);
    assert_eq!(bought.len(), 1, "{bought:?}");
    assert_eq!(bought[0].1, "train-1/1");

    // Restarted, it finds what it bought by its tag and confirms it: no second purchase.
    let second = Killed(agent(&settings, &server, &aws, false));
    wait_for("the confirmation", || {
        award_of("train-1")["status"] == "confirmed"
    });
    assert_eq!(award_of("train-1")["reservation"], bought[0].0);
    assert!(bought[0].0.starts_with("cr-"));

    // What the agent bought is what SkyPilot is told to launch into.
    let sky = dir.path().join("sky.yaml");
    let (code, _, err) = run(
        &server,
        &buyer,
        &[
            "export",
            "--format",
            "skypilot",
            "--need",
            "train-1",
            "--out",
            sky.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&sky).unwrap();
    eprintln!("{err}{text}");
    let listed = format!("- \"{}\"", bought[0].0);
    assert!(
        text.contains("specific_reservations:\n") && text.lines().any(|l| l.trim() == listed),
        "{text}"
    );
    common::check_export("skypilot", &sky, &[]);

    // $30,000 to spend: $2,995.20 went on train-1; 64 GPUs × 48 h × $3.90 = $11,980.80
    // fits; 128 GPUs ($23,961.60) would not, so that request is declined unquoted.
    submit("train-2", 64);
    wait_for("train-2 confirmed", || {
        award_of("train-2")["status"] == "confirmed"
    });
    submit("train-3", 128);
    let declined = || {
        let (_, out, _) = run(&server, &buyer, &["need", "events", "train-3", "--json"]);
        out
    };
    wait_for("train-3 declined", || declined().contains("rfq_declined"));
    assert!(
        declined().contains("\"reason\":\"other\""),
        "{}",
        declined()
    );
    assert!(!declined().contains("award_made"), "{}", declined());
    drop(second);
    let bought = reservations(&endpoint);
    assert_eq!(
        bought.len(),
        2,
        "one block each for train-1 and train-2: {bought:?}"
    );
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(state["purchases"].as_object().unwrap().len(), 2, "{state}");
}
