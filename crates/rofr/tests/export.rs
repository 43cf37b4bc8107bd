//! `rofr export` against a real broker: confirmed awards out as SkyPilot, dstack,
//! Karpenter and FOCUS files, each checked by that tool's own validator through
//! `tools/check-export.py` (skipped, saying which, where a validator is missing).

mod common;

use std::path::Path;

use common::{check_export, run, serve, token, Server};

const DEAL: &str = r#"
[deal]
name = "export-test"

[[provider]]
id = "aws"
name = "Amazon Web Services"
skus = ["H100"]

[[provider]]
id = "azure"
skus = ["H100"]

[[first_refusal]]
holder = "aws"
variant = "first_offer"
window = "2d"
partial = true
term = { from = 2025-01-01, until = 2040-01-01 }

[first_refusal.scope]
skus = ["H100"]
tags = ["aws"]

[[first_refusal]]
holder = "azure"
variant = "first_offer"
window = "2d"
partial = true
term = { from = 2025-01-01, until = 2040-01-01 }

[first_refusal.scope]
skus = ["H100"]
tags = ["azure"]

[[commitment]]
name = "aws-2026"
provider = "aws"
min_gpu_hours = 100000
period = { from = 2025-01-01, until = 2040-01-01 }
"#;

/// A need placed with `provider`, the holder of needs tagged with its id, which takes
/// the offer and confirms the award with `reservation`.
fn place(
    dir: &Path,
    server: &Server,
    buyer: &str,
    provider: (&str, &str),
    id: &str,
    reservation: &str,
) {
    let (name, provider_token) = provider;
    let mut need = common::need_json(id);
    need["launch"] = serde_json::json!("llm-9");
    need["tags"] = serde_json::json!([name]);
    let file = dir.join(format!("{id}.json"));
    std::fs::write(&file, need.to_string()).unwrap();
    let (code, _, err) = run(server, buyer, &["need", "submit", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(server, provider_token, &["offer", "accept", id]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(
        server,
        provider_token,
        &["award", "confirm", id, "1", "--reservation", reservation],
    );
    assert_eq!(code, 0, "{err}");
}

#[test]
fn confirmed_awards_pass_each_tools_own_validator() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("rofr.db");
    let deal = dir.path().join("deal.toml");
    std::fs::write(&deal, DEAL).unwrap();
    let server = serve(&database, &["--deal", deal.to_str().unwrap()]);
    let buyer = token(&database, &["--party", "buyer"]);
    let aws = token(&database, &["--party", "provider", "--provider", "aws"]);
    let azure = token(&database, &["--party", "provider", "--provider", "azure"]);
    place(
        dir.path(),
        &server,
        &buyer,
        ("aws", &aws),
        "train-1",
        "cr-0abc123def4567890",
    );
    place(
        dir.path(),
        &server,
        &buyer,
        ("azure", &azure),
        "serve-2",
        "az-77",
    );

    let export = |format: &str, extra: &[&str]| {
        let file = dir.path().join(format!("out.{format}"));
        let mut args = vec![
            "export",
            "--format",
            format,
            "--out",
            file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (code, _, err) = run(&server, &buyer, &args);
        assert_eq!(code, 0, "{err}");
        (file, err)
    };

    let (sky, said) = export("skypilot", &[]);
    assert!(said.contains("1 confirmed award written"), "{said}");
    assert!(
        said.contains("left out 1 award with azure (az-77)"),
        "{said}"
    );
    let text = std::fs::read_to_string(&sky).unwrap();
    assert!(text.contains("- \"cr-0abc123def4567890\""), "{text}");
    if let Some(ok) = check_export("skypilot", &sky, &[]) {
        assert!(ok.contains("'aws': 1"), "{ok}");
    }

    let (fleets, _) = export("dstack", &[]);
    if let Some(ok) = check_export("dstack", &fleets, &[]) {
        assert!(ok.contains("2 dstack fleet"), "{ok}");
    }

    let (patch, _) = export("karpenter", &["--node-class", "gpu"]);
    let text = std::fs::read_to_string(&patch).unwrap();
    assert!(
        text.contains("id: \"cr-0abc123def4567890\"") && !text.contains("\"az-77\""),
        "{text}"
    );
    match std::env::var("KARPENTER_CRD") {
        Ok(crd) => {
            let ok = check_export("karpenter", &patch, &[("KARPENTER_CRD", crd)]).unwrap();
            assert!(ok.contains("1 capacity reservation terms"), "{ok}");
        }
        Err(_) => common::skip_uninstallable(
            "Karpenter patch not validated: set KARPENTER_CRD to the EC2NodeClass CRD \
             (karpenter.k8s.aws_ec2nodeclasses.yaml of a Karpenter release)",
        ),
    }

    let (focus, _) = export("focus", &["--launch", "llm-9"]);
    let text = std::fs::read_to_string(&focus).unwrap();
    // Two usage rows (one need each, within a month or split at its end) and the
    // commitment's unused remainder.
    assert!(
        text.contains("cr-0abc123def4567890") && text.contains("az-77"),
        "{text}"
    );
    assert!(text.contains(",Unused,"), "{text}");
    if let Some(ok) = check_export("focus", &focus, &[]) {
        assert!(ok.contains("pass focus-validator"), "{ok}");
    }

    // Filters: one need, a launch no need has, a period before everything.
    let (_, said) = export("skypilot", &["--need", "serve-2"]);
    assert!(
        said.contains("0 confirmed awards written") && said.contains("az-77"),
        "{said}"
    );
    let (_, said) = export("focus", &["--launch", "other"]);
    assert!(said.contains("0 confirmed awards"), "{said}");
    let (_, said) = export("dstack", &["--to", "2000-01-01"]);
    assert!(said.contains("0 confirmed awards"), "{said}");

    // Bad input is refused, naming the flag, and nothing is written.
    let nothing = dir.path().join("nothing.yaml");
    for (args, wanted) in [
        (vec!["--cloud", "oracle"], "PROVIDER=CLOUD"),
        (vec!["--cloud", "oracle=moon"], "unknown cloud `moon`"),
        (vec!["--from", "yesterday"], "--from \"yesterday\""),
        (
            vec!["--from", "2026-01-02", "--to", "2026-01-01"],
            "--to must be after --from",
        ),
    ] {
        let mut all = vec![
            "export",
            "--format",
            "skypilot",
            "--out",
            nothing.to_str().unwrap(),
        ];
        all.extend_from_slice(&args);
        let (code, _, err) = run(&server, &buyer, &all);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains(wanted), "{args:?}: {err}");
        assert!(!nothing.exists());
    }
    // A provider's token is refused by the broker: it may not read every need.
    let (code, _, err) = run(&server, &aws, &["export", "--format", "focus"]);
    assert_eq!(code, 1, "{err}");
}
