//! `rofr export`: confirmed awards for SkyPilot, dstack, Karpenter or FOCUS, read from
//! a running broker with a buyer's or auditor's token.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use rofr_tools::client::Client;
use rofr_tools::export::{self, Award, Billing, Clouds, Commitment, Selection};

use crate::exit;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// SkyPilot config (`~/.sky/config.yaml`) with the aws and gcp reservations.
    Skypilot,
    /// dstack fleet configurations, one per award.
    Dstack,
    /// A Karpenter `EC2NodeClass` patch selecting the EC2 capacity reservations.
    Karpenter,
    /// FOCUS 1.2 cost rows (CSV): usage by month and each commitment's burn-down.
    Focus,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum)]
    format: Format,
    /// Only this need's awards (repeat for more).
    #[arg(long = "need", value_name = "NEED")]
    needs: Vec<String>,
    /// Only the awards of needs submitted with this `launch`.
    #[arg(long)]
    launch: Option<String>,
    /// Only awards running at or after this date (2025-10-01) or RFC 3339 time.
    #[arg(long)]
    from: Option<String>,
    /// Only awards starting before this date or time.
    #[arg(long)]
    to: Option<String>,
    /// A provider's cloud, where its id does not name one: `oracle=oci` (repeatable).
    #[arg(long = "cloud", value_name = "PROVIDER=CLOUD")]
    clouds: Vec<String>,
    /// The `EC2NodeClass` the Karpenter patch is for.
    #[arg(long, default_value = "default")]
    node_class: String,
    /// Write here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The broker's URL.
    #[arg(long, env = "ROFR_SERVER", default_value = "http://127.0.0.1:7878")]
    server: String,
}

fn time(field: &str, text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            anyhow::anyhow!("--{field} {text:?}: write a date (2025-10-01) or an RFC 3339 time")
        })
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let selection = Selection {
        needs: args.needs.iter().cloned().collect(),
        launch: args.launch.clone(),
        from: args.from.as_deref().map(|t| time("from", t)).transpose()?,
        to: args.to.as_deref().map(|t| time("to", t)).transpose()?,
    };
    if let (Some(from), Some(to)) = (selection.from, selection.to) {
        anyhow::ensure!(to > from, "--to must be after --from");
    }
    let clouds = Clouds::parse(&args.clouds).map_err(|e| anyhow::anyhow!(e))?;
    let token = std::env::var("ROFR_TOKEN").context(
        "set ROFR_TOKEN to the buyer's or the auditor's token (`rofr demo --keep` prints them)",
    )?;
    let client = Client::new(&args.server, &token);
    let runtime = tokio::runtime::Runtime::new()?;
    let (awards, commitments, deal) = runtime.block_on(fetch(
        &client,
        &selection,
        matches!(args.format, Format::Focus),
    ))?;
    let out = match args.format {
        Format::Skypilot => export::skypilot(&awards, &clouds),
        Format::Dstack => export::dstack(&awards, &clouds),
        Format::Karpenter => export::karpenter(&awards, &clouds, &args.node_class),
        Format::Focus => export::focus(
            &awards,
            &commitments,
            &Billing {
                account_id: deal.clone(),
                account_name: deal,
                provider_names: BTreeMap::new(),
            },
        ),
    };
    match &args.out {
        Some(path) => crate::report::write_whole(path, |file| {
            use std::io::Write;
            Ok(file.write_all(out.text.as_bytes())?)
        })?,
        None => print!("{}", out.text),
    }
    eprintln!(
        "rofr export: {} confirmed award{} written{}",
        awards.len() - out.left_out.len(),
        if awards.len() - out.left_out.len() == 1 {
            ""
        } else {
            "s"
        },
        args.out
            .as_ref()
            .map(|p| format!(" to {}", p.display()))
            .unwrap_or_default()
    );
    for line in export::left_out_lines(&out.left_out) {
        eprintln!("  left out {line}");
    }
    Ok(exit::OK)
}

async fn fetch(
    client: &Client,
    selection: &Selection,
    with_commitments: bool,
) -> anyhow::Result<(Vec<Award>, Vec<Commitment>, String)> {
    let failed = |e: rofr_tools::client::ClientError| anyhow::anyhow!("{e}");
    let deal = client.get("/v1/deal").await.map_err(failed)?;
    let deal = deal["name"].as_str().unwrap_or("deal").to_owned();
    let ids: Vec<String> = if selection.needs.is_empty() {
        client
            .all_pages("/v1/needs", "needs")
            .await
            .map_err(failed)?
            .into_iter()
            .filter(|n| n["awarded"].as_u64().unwrap_or(0) > 0)
            .filter_map(|n| n["id"].as_str().map(str::to_owned))
            .collect()
    } else {
        selection.needs.iter().cloned().collect()
    };
    let mut awards = Vec::new();
    for id in ids {
        let need = client
            .get(&format!("/v1/needs/{id}"))
            .await
            .map_err(|e| anyhow::anyhow!("need {id}: {e}"))?;
        let of_need = Award::of_need(&need).map_err(|e| anyhow::anyhow!(e))?;
        awards.extend(of_need.into_iter().filter(|a| selection.keeps(a)));
    }
    let commitments = if with_commitments {
        let summary = client.get("/v1/summary").await.map_err(failed)?;
        Commitment::of_summary(&summary).map_err(|e| anyhow::anyhow!(e))?
    } else {
        Vec::new()
    };
    Ok((awards, commitments, deal))
}
