//! `rofr agent`: one provider answering over HTTP from a capacity model file, or from
//! EC2 Capacity Blocks with `--aws`.

use std::path::PathBuf;

use anyhow::Context;
use rofr_tools::agent::{Agent, CapacityModel};
use rofr_tools::client::Client;

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// The capacity model (TOML): inventory, prices and behaviour.
    #[arg(long, required_unless_present = "aws", conflicts_with = "aws")]
    model: Option<PathBuf>,
    /// Answer from EC2 Capacity Blocks, with these settings (TOML): region, sku to
    /// instance type, credentials, spending limit, state file (docs/aws-agent.md).
    #[arg(long, value_name = "SETTINGS")]
    aws: Option<PathBuf>,
    /// The broker's URL.
    #[arg(long, env = "ROFR_SERVER", default_value = "http://127.0.0.1:7878")]
    server: String,
    /// The provider's bearer token.
    #[arg(long, env = "ROFR_TOKEN", hide_env_values = true)]
    token: String,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    if let Some(settings) = &args.aws {
        return run_aws(settings, &args.server, &args.token);
    }
    let path = args.model.as_ref().expect("clap requires --model or --aws");
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the capacity model {}", path.display()))?;
    let model =
        CapacityModel::parse(&path.display().to_string(), &text).map_err(|e| anyhow::anyhow!(e))?;
    let provider = model.provider.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    let stats = runtime.block_on(async {
        let client = Client::new(&args.server, &args.token);
        let offers = client
            .get("/v1/offers")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            offers.get("offers").is_some(),
            "the token does not belong to a provider"
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(Agent::new(model, client).run(stopped));
        println!(
            "rofr agent: answering as `{provider}` at {}; Ctrl-C to stop",
            args.server
        );
        crate::serve::shutdown_signal().await;
        let _ = stop.send(true);
        Ok(task.await?)
    })?;
    println!(
        "accepted {}, declined {}, silent {}, quoted {}, confirmed {}, failed {}, errors {}",
        stats.accepted,
        stats.declined,
        stats.silent,
        stats.quoted,
        stats.confirmed,
        stats.failed,
        stats.errors
    );
    Ok(exit::OK)
}

fn run_aws(path: &std::path::Path, server: &str, token: &str) -> anyhow::Result<u8> {
    use rofr_tools::aws::{AwsAgent, Keys, Settings};
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the AWS settings {}", path.display()))?;
    let settings =
        Settings::parse(&path.display().to_string(), &text).map_err(|e| anyhow::anyhow!(e))?;
    let keys = Keys::load(&settings.aws.credentials).map_err(|e| anyhow::anyhow!(e))?;
    let provider = settings.provider.clone();
    let (region, limit) = (settings.aws.region.clone(), settings.aws.spending_limit);
    let client = Client::new(server, token);
    let agent = AwsAgent::new(settings, keys, client.clone()).map_err(|e| anyhow::anyhow!(e))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let stats = runtime.block_on(async {
        let rfqs = client.get("/v1/rfqs").await.map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(
            rfqs.get("rfqs").is_some(),
            "the token does not belong to a provider"
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(agent.run(stopped));
        println!(
            "rofr agent: answering as `{provider}` at {server} from EC2 Capacity Blocks in {region}, spending at most ${limit:.2}; Ctrl-C to stop"
        );
        crate::serve::shutdown_signal().await;
        let _ = stop.send(true);
        Ok(task.await?)
    })?;
    println!(
        "quoted {}, declined {}, bought {}, confirmed {}, failed {}, errors {}",
        stats.quoted, stats.declined, stats.bought, stats.confirmed, stats.failed, stats.errors
    );
    Ok(exit::OK)
}
