//! `rofr serve`: the broker on a SQLite file or a PostgreSQL database, serving the
//! HTTP API. Several replicas may serve one PostgreSQL database.

use std::path::PathBuf;

use anyhow::Context;
use rofr_engine::types::Timestamp;
use rofr_server::{Broker, Clock};
use rofr_store::Location;

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// A SQLite file (created if missing), or a postgres://USER@HOST:PORT/NAME URL of
    /// an existing PostgreSQL database, which several replicas may share.
    #[arg(long, env = "ROFR_DATABASE", default_value = "rofr.db")]
    database: Location,
    /// The ledger's signing key file, made on the first start. By default beside a
    /// SQLite file, or rofr-NAME.ledger-key in the working directory for PostgreSQL;
    /// replicas of one database must be given the same file.
    #[arg(long, env = "ROFR_LEDGER_KEY")]
    ledger_key: Option<PathBuf>,
    /// The deal file. Needed the first time; later the database holds the deal.
    #[arg(long)]
    deal: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// Run model time this many times faster than life (tests and rehearsals).
    #[arg(long, value_name = "FACTOR")]
    speed: Option<f64>,
    /// With --speed: the model time to start from (RFC 3339).
    #[arg(long, value_name = "TIME", requires = "speed")]
    clock_start: Option<String>,
    /// Sign a ledger checkpoint after this many new entries.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// Sign a ledger checkpoint at least this often while entries arrive (e.g. 10s, 5m).
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    checkpoint_interval: std::time::Duration,
    /// How long a token is trusted before it is looked up again: a token revoked with
    /// `rofr token revoke` is refused within this time (e.g. 0s, 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_recheck)]
    token_recheck: std::time::Duration,
    /// Let providers register webhooks at loopback, link-local and private addresses
    /// (a receiver on this machine or inside this network). Off by default: a webhook
    /// could otherwise reach services only the broker's host can see.
    #[arg(long, env = "ROFR_ALLOW_PRIVATE_WEBHOOKS")]
    allow_private_webhooks: bool,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    seconds_at_least(text, 1)
        .ok_or_else(|| format!("`{text}` is not a positive interval such as 10s or 5m"))
}

fn parse_recheck(text: &str) -> Result<std::time::Duration, String> {
    seconds_at_least(text, 0)
        .ok_or_else(|| format!("`{text}` is not an interval such as 0s, 5s or 1m"))
}

/// An exact interval such as `10s` or `5m` of at least `least` seconds.
fn seconds_at_least(text: &str, least: i64) -> Option<std::time::Duration> {
    match rofr_engine::duration::DealDuration::parse(text) {
        Ok(rofr_engine::duration::DealDuration::Exact { seconds }) if seconds >= least => {
            Some(std::time::Duration::from_secs(seconds as u64))
        }
        _ => None,
    }
}

pub fn clock(speed: Option<f64>, start: Option<&str>) -> anyhow::Result<Clock> {
    match speed {
        None => Ok(Clock::System),
        Some(speed) if speed.is_finite() && speed > 0.0 => {
            let origin = match start {
                Some(text) => {
                    Timestamp::parse(text).map_err(|e| anyhow::anyhow!("--clock-start: {e}"))?
                }
                None => Clock::System.now(),
            };
            Ok(Clock::scaled(origin, speed))
        }
        Some(speed) => anyhow::bail!("--speed must be a positive number, not {speed}"),
    }
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let clock = clock(args.speed, args.clock_start.as_deref())?;
    let deal = match &args.deal {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the deal file {}", path.display()))?;
            Some((path.display().to_string(), text))
        }
        None => None,
    };
    // The log is read whole before the broker answers: say so, and how long it took.
    eprintln!("rofr: opening {} and reading its event log", args.database);
    let started = std::time::Instant::now();
    let broker = Broker::open(
        &args.database,
        deal.as_ref().map(|(f, t)| (f.as_str(), t.as_str())),
        clock,
        args.ledger_key.as_deref(),
    )?;
    if broker.log_size() > 0 {
        eprintln!(
            "rofr: read {} log entries in {:.1} s",
            broker.log_size(),
            started.elapsed().as_secs_f64()
        );
    }
    broker.set_token_recheck(args.token_recheck);
    broker.allow_private_webhooks(args.allow_private_webhooks);
    broker.set_checkpoint_policy(rofr_server::ledger::CheckpointPolicy {
        every_entries: args.checkpoint_every,
        every: args.checkpoint_interval,
    });
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        println!(
            "rofr: serving deal \"{}\" from {} on http://{address}",
            broker.deal().name,
            args.database
        );
        tracing::info!(%address, "serving");
        rofr_server::serve(broker.clone(), listener, shutdown_signal()).await?;
        broker.shutdown();
        anyhow::Ok(())
    })?;
    Ok(exit::OK)
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
