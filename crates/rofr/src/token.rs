//! `rofr token create|list|revoke`: bearer tokens for the parties. Only their hashes
//! are stored; a token's id is the start of its hash.

use rofr_engine::deal::parse_deal;
use rofr_engine::types::ProviderId;
use rofr_server::broker::token_id;
use rofr_server::{Broker, Party};
use rofr_store::Location;

use crate::exit;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a token and print it once.
    Create(CreateArgs),
    /// List the tokens: id, party, provider, label and when each was made (never the
    /// tokens themselves, which are not stored).
    List(ListArgs),
    /// Revoke a token by its id: a running broker refuses it within its
    /// --token-recheck time (5 s by default).
    Revoke(RevokeArgs),
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// The broker's database: a SQLite file, or a postgres:// URL.
    #[arg(long, env = "ROFR_DATABASE", default_value = "rofr.db")]
    database: Location,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The token's id as `rofr token list` shows it (at least 8 of its hex digits).
    id: String,
    /// The broker's database: a SQLite file, or a postgres:// URL.
    #[arg(long, env = "ROFR_DATABASE", default_value = "rofr.db")]
    database: Location,
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
    match command {
        Command::Create(args) => create(args),
        Command::List(args) => list(args),
        Command::Revoke(args) => revoke(args),
    }
}

/// Refuses a database that `rofr serve` has not made yet.
fn existing(database: &Location) -> anyhow::Result<()> {
    if !database.exists() {
        anyhow::bail!(
            "{database} does not exist: start `rofr serve --database {database} --deal DEAL` once first"
        );
    }
    Ok(())
}

fn list(args: ListArgs) -> anyhow::Result<u8> {
    existing(&args.database)?;
    let rows: Vec<serde_json::Value> = Broker::tokens(&args.database)?
        .iter()
        .map(|t| {
            serde_json::json!({
                "id": token_id(t),
                "party": t.row.party,
                "provider": t.row.provider,
                "label": t.row.label,
                "created_at": t.created_at,
            })
        })
        .collect();
    crate::client::print_table(
        &rows,
        &["id", "party", "provider", "label", "created_at"],
        args.json,
    );
    Ok(exit::OK)
}

fn revoke(args: RevokeArgs) -> anyhow::Result<u8> {
    existing(&args.database)?;
    let token = Broker::revoke_token(&args.database, &args.id)?;
    eprintln!(
        "rofr: token {} ({}{}, label `{}`) revoked; a running broker refuses it within its --token-recheck time",
        token_id(&token),
        token.row.party,
        token
            .row
            .provider
            .as_deref()
            .map(|p| format!(" {p}"))
            .unwrap_or_default(),
        token.row.label
    );
    Ok(exit::OK)
}

fn create(args: CreateArgs) -> anyhow::Result<u8> {
    existing(&args.database)?;
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
