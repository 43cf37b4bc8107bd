//! `rofr token create`: bearer tokens for the parties. Only their hashes are stored.

use rofr_engine::deal::parse_deal;
use rofr_engine::types::ProviderId;
use rofr_server::{Broker, Party};
use rofr_store::Location;

use crate::exit;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a token and print it once.
    Create(CreateArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PartyKind {
    Buyer,
    Auditor,
    Provider,
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// The broker's database: a SQLite file, or a postgres:// URL.
    #[arg(long, env = "ROFR_DATABASE", default_value = "rofr.db")]
    database: Location,
    /// Whom the token speaks for.
    #[arg(long, value_enum)]
    party: PartyKind,
    /// The provider id, for `--party provider`.
    #[arg(long, required_if_eq("party", "provider"))]
    provider: Option<String>,
    /// A note to tell tokens apart.
    #[arg(long, default_value = "")]
    label: String,
}

pub fn run(command: Command) -> anyhow::Result<u8> {
    let Command::Create(args) = command;
    if !args.database.exists() {
        anyhow::bail!(
            "{} does not exist: start `rofr serve --database {} --deal DEAL` once first",
            args.database,
            args.database
        );
    }
    let party = match (args.party, &args.provider) {
        (PartyKind::Buyer, None) => Party::Buyer,
        (PartyKind::Auditor, None) => Party::Auditor,
        (PartyKind::Provider, Some(id)) => {
            let id = ProviderId::parse(id).map_err(|e| anyhow::anyhow!("--provider: {e}"))?;
            let store = args.database.open()?;
            let text = store
                .meta("deal")?
                .ok_or_else(|| anyhow::anyhow!("{} holds no deal yet", args.database))?;
            let deal = parse_deal("deal.toml", &text)
                .map_err(|_| anyhow::anyhow!("the stored deal does not parse"))?;
            if deal.provider(&id).is_none() {
                let known: Vec<String> = deal.providers.iter().map(|p| p.id.to_string()).collect();
                anyhow::bail!(
                    "--provider: the deal names no provider `{id}` (it names {})",
                    known.join(", ")
                );
            }
            Party::Provider(id)
        }
        (_, Some(_)) => anyhow::bail!("--provider goes only with --party provider"),
        (PartyKind::Provider, None) => unreachable!("clap requires --provider"),
    };
    let label = if args.label.is_empty() {
        party.key()
    } else {
        args.label
    };
    let token = Broker::create_token(&args.database, &party, &label)?;
    println!("{token}");
    eprintln!(
        "rofr: token for {} created; it is shown only this once",
        party.key()
    );
    Ok(exit::OK)
}
