//! `rofr agent`: one provider answering over HTTP from a capacity model file.

use std::path::PathBuf;

use anyhow::Context;
use rofr_tools::agent::{Agent, CapacityModel};
use rofr_tools::client::Client;

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// The capacity model (TOML): inventory, prices and behaviour.
    #[arg(long)]
    model: PathBuf,
    /// The broker's URL.
    #[arg(long, env = "ROFR_SERVER", default_value = "http://127.0.0.1:7878")]
    server: String,
    /// The provider's bearer token.
    #[arg(long, env = "ROFR_TOKEN", hide_env_values = true)]
    token: String,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.model)
        .with_context(|| format!("cannot read the capacity model {}", args.model.display()))?;
    let model = CapacityModel::parse(&args.model.display().to_string(), &text)
        .map_err(|e| anyhow::anyhow!(e))?;
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
