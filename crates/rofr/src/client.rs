//! The command-line client: one subcommand per API operation. The server comes from
//! `--server` or `ROFR_SERVER`, the token from `ROFR_TOKEN`.

use std::path::PathBuf;

use anyhow::Context;
use rofr_tools::client::Client;
use serde_json::{json, Value};

use crate::exit;

#[derive(clap::Args)]
pub struct Connection {
    /// The broker's URL.
    #[arg(
        long,
        global = true,
        env = "ROFR_SERVER",
        default_value = "http://127.0.0.1:7878"
    )]
    server: String,
    /// Print the server's JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum NeedCommand {
    /// Submit a need from a JSON file (`-` for standard input).
    Submit {
        file: PathBuf,
        /// Retries with the same key never submit twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List needs, optionally of one status.
    List {
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one need with its offers, requests for quotes and awards.
    Show { need: String },
    /// Show one need's events as recorded.
    Events { need: String },
    /// Cancel a need before anything is awarded.
    Cancel {
        need: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(clap::Subcommand)]
pub enum DealCommand {
    /// Make a deal file the deal's next version. Shows what changes from the version
    /// in force and what becomes of the needs open now, then writes it as one ledger
    /// entry (unless `--dry-run`).
    Amend {
        file: PathBuf,
        /// When the new version comes into force: `now` (the moment the broker writes
        /// it), or an RFC 3339 time such as 2025-10-28T00:00:00Z, no earlier than now.
        #[arg(long)]
        effective: String,
        /// What becomes of the needs open at the effective time: `keep` the terms they
        /// started under, or `move` to the new version.
        #[arg(long, default_value = "keep", value_parser = ["keep", "move"])]
        open_needs: String,
        /// Show what the amendment would do; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Retries with the same key never amend twice.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List the deal's versions with their hashes and effective times.
    Versions,
}

#[derive(clap::Subcommand)]
pub enum OfferCommand {
    /// List the offers waiting for this provider's answer.
    List,
    /// Take an offer, all of it or `--gpus` of it.
    Accept {
        need: String,
        #[arg(long)]
        offer: Option<u32>,
        #[arg(long)]
        gpus: Option<u32>,
        /// The agreed price, under a `negotiate` right.
        #[arg(long)]
        price: Option<f64>,
    },
    /// Decline an offer, a match offer or a request for quotes.
    Decline {
        need: String,
        #[arg(long)]
        offer: Option<u32>,
        #[arg(long, value_parser = ["no_capacity", "price", "timing", "other"])]
        reason: String,
    },
    /// Match the third-party terms of a match offer.
    Match {
        need: String,
        #[arg(long)]
        offer: Option<u32>,
        #[arg(long)]
        gpus: Option<u32>,
    },
}

#[derive(clap::Subcommand)]
pub enum RfqCommand {
    /// List the requests for quotes waiting for this provider.
    List,
}

#[derive(clap::Subcommand)]
pub enum AwardCommand {
    /// List this provider's awards, in the order their needs were submitted.
    List {
        /// Only awards with one of these statuses, separated by commas:
        /// pending_approval, made, confirmed, completed, rejected, failed
        #[arg(long)]
        status: Option<String>,
    },
    /// Approve an award waiting for sign-off (buyer).
    Approve { need: String, award: u32 },
    /// Reject an award waiting for sign-off (buyer).
    Reject {
        need: String,
        award: u32,
        #[arg(long)]
        reason: String,
    },
    /// Confirm an award with the reservation id (provider).
    Confirm {
        need: String,
        award: u32,
        #[arg(long)]
        reservation: String,
    },
    /// Report that an award cannot be delivered (provider).
    Fail {
        need: String,
        award: u32,
        #[arg(long)]
        reason: String,
    },
}

#[derive(clap::Subcommand)]
pub enum WebhookCommand {
    /// Register this provider's webhook URL; prints the signing secret once.
    Set { url: String },
    /// List webhook deliveries and their state (buyer).
    Deliveries {
        /// pending, delivered or failed.
        #[arg(long)]
        status: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct QuoteArgs {
    need: String,
    #[arg(long)]
    gpus: u32,
    /// Dollars per GPU-hour.
    #[arg(long)]
    price: f64,
}

#[derive(clap::Args)]
pub struct EventsArgs {
    /// Start after this log index.
    #[arg(long)]
    after: Option<u64>,
    #[arg(long, default_value_t = 100)]
    limit: u32,
}

fn client(connection: &Connection) -> anyhow::Result<Client> {
    let token = std::env::var("ROFR_TOKEN").context(
        "set ROFR_TOKEN to a token from `rofr token create` (or printed by `rofr demo --keep`)",
    )?;
    Ok(Client::new(&connection.server, &token))
}

fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Runtime::new()?.block_on(future)
}

async fn call(
    client: &Client,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> anyhow::Result<Value> {
    let answer = match body {
        Some(body) => client.post_with_key(path, &body, key).await,
        None => client.get(path).await,
    };
    answer.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Every item of a paged list (`field` of each page).
async fn every(client: &Client, path: &str, field: &str) -> anyhow::Result<Vec<Value>> {
    client
        .all_pages(path, field)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Prints a write's events one a line, or the raw answer with `--json`.
fn print_events(answer: &Value, json: bool) {
    if json {
        println!("{answer}");
        return;
    }
    for entry in answer["events"].as_array().into_iter().flatten() {
        let e = &entry["event"];
        let mut line = format!(
            "#{:<6} {:<20}",
            entry["index"],
            e["type"].as_str().unwrap_or("")
        );
        for field in [
            "provider",
            "gpus",
            "price_per_gpu_hour",
            "reason",
            "deadline",
            // The deal's entries.
            "deal",
            "version",
            "effective",
            "open_needs",
            "holder",
        ] {
            if let Some(value) = e.get(field) {
                line.push_str(&format!(
                    " {field}={}",
                    value
                        .as_str()
                        .map(str::to_owned)
                        .unwrap_or(value.to_string())
                ));
            }
        }
        println!("{line}");
    }
}

pub(crate) fn print_table(rows: &[Value], columns: &[&str], json: bool) {
    if json {
        println!("{}", Value::Array(rows.to_vec()));
        return;
    }
    let cell = |row: &Value, c: &str| match &row[c] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let widths: Vec<usize> = columns
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!(
        "{}",
        line(columns.iter().map(|c| c.to_uppercase()).collect())
    );
    for row in rows {
        println!("{}", line(columns.iter().map(|c| cell(row, c)).collect()));
    }
}

pub fn need(connection: Connection, command: NeedCommand) -> anyhow::Result<u8> {
    let client = client(&connection)?;
    block_on(async {
        match command {
            NeedCommand::Submit {
                file,
                idempotency_key,
            } => {
                let text = if file.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())?
                } else {
                    std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?
                };
                let body: Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                let answer =
                    call(&client, "/v1/needs", Some(body), idempotency_key.as_deref()).await?;
                print_events(&answer, connection.json);
            }
            NeedCommand::List { status } => {
                let path = match status {
                    Some(s) => format!("/v1/needs?status={s}"),
                    None => "/v1/needs".into(),
                };
                let rows = every(&client, &path, "needs").await?;
                print_table(
                    &rows,
                    &[
                        "id",
                        "status",
                        "sku",
                        "gpus",
                        "awarded",
                        "holder",
                        "next_deadline",
                    ],
                    connection.json,
                );
            }
            NeedCommand::Show { need } => {
                let answer = call(&client, &format!("/v1/needs/{need}"), None, None).await?;
                println!(
                    "{}",
                    if connection.json {
                        answer.to_string()
                    } else {
                        serde_json::to_string_pretty(&answer)?
                    }
                );
            }
            NeedCommand::Events { need } => {
                let answer = call(&client, &format!("/v1/needs/{need}/events"), None, None).await?;
                print_events(&answer, connection.json);
            }
            NeedCommand::Cancel { need, reason } => {
                let answer = call(
                    &client,
                    &format!("/v1/needs/{need}/cancel"),
                    Some(json!({"reason": reason})),
                    None,
                )
                .await?;
                print_events(&answer, connection.json);
            }
        }
        Ok(exit::OK)
    })
}

pub fn deal(connection: Connection, command: DealCommand) -> anyhow::Result<u8> {
    let client = client(&connection)?;
    block_on(async {
        match command {
            DealCommand::Amend {
                file,
                effective,
                open_needs,
                dry_run,
                idempotency_key,
            } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read the deal file {}", file.display()))?;
                let mut body = json!({
                    "file": file.display().to_string(),
                    "text": text,
                    "effective": effective,
                    "open_needs": open_needs,
                    "dry_run": true,
                });
                let plan = call(&client, "/v1/deal/amendments", Some(body.clone()), None).await?;
                if dry_run {
                    if connection.json {
                        println!("{plan}");
                    } else {
                        print_plan(&plan);
                    }
                    return Ok(exit::OK);
                }
                if !connection.json {
                    print_plan(&plan);
                }
                body["dry_run"] = json!(false);
                let answer = call(
                    &client,
                    "/v1/deal/amendments",
                    Some(body),
                    idempotency_key.as_deref(),
                )
                .await?;
                print_events(&answer, connection.json);
            }
            DealCommand::Versions => {
                let answer = call(&client, "/v1/deal", None, None).await?;
                let rows = answer["versions"].as_array().cloned().unwrap_or_default();
                print_table(
                    &rows,
                    &[
                        "version",
                        "file",
                        "sha256",
                        "effective",
                        "open_needs",
                        "in_force",
                        "index",
                    ],
                    connection.json,
                );
            }
        }
        Ok(exit::OK)
    })
}

/// What an amendment would do, as `POST /v1/deal/amendments` with `dry_run` says.
fn print_plan(plan: &Value) {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    println!(
        "version {} amends version {} ({}):",
        plan["version"],
        plan["against"],
        text(&plan["against_file"])
    );
    let changes = plan["changes"].as_array().cloned().unwrap_or_default();
    for change in &changes {
        let location = &change["location"];
        let what = match (change["was"].as_str(), change["now"].as_str()) {
            (None, Some(now)) => format!("added: {now}"),
            (Some(was), None) => format!("removed (was {was})"),
            (Some(was), Some(now)) => format!("{was} → {now}"),
            _ => continue,
        };
        println!(
            "  {}:{}:{}: {}: {what}",
            text(&location["file"]),
            location["line"],
            location["column"],
            text(&change["key"])
        );
    }
    if changes.is_empty() {
        println!("  no changes");
    }
    for warning in plan["warnings"].as_array().into_iter().flatten() {
        println!("  warning: {}", text(&warning["message"]));
    }
    println!("open needs: {}", text(&plan["impact"]["summary"]));
}

pub fn offer(connection: Connection, command: OfferCommand) -> anyhow::Result<u8> {
    let client = client(&connection)?;
    block_on(async {
        let (path, body) = match command {
            OfferCommand::List => {
                let rows = every(&client, "/v1/offers", "offers").await?;
                print_table(
                    &rows,
                    &[
                        "need",
                        "offer",
                        "kind",
                        "gpus",
                        "price_per_gpu_hour",
                        "deadline",
                        "sku",
                        "hours",
                    ],
                    connection.json,
                );
                return Ok(exit::OK);
            }
            OfferCommand::Accept {
                need,
                offer,
                gpus,
                price,
            } => (
                format!("/v1/needs/{need}/accept"),
                json!({"offer": offer, "gpus": gpus, "price": price}),
            ),
            OfferCommand::Decline {
                need,
                offer,
                reason,
            } => (
                format!("/v1/needs/{need}/decline"),
                json!({"offer": offer, "reason": reason}),
            ),
            OfferCommand::Match { need, offer, gpus } => (
                format!("/v1/needs/{need}/match"),
                json!({"offer": offer, "gpus": gpus}),
            ),
        };
        let answer = call(&client, &path, Some(body), None).await?;
        print_events(&answer, connection.json);
        Ok(exit::OK)
    })
}

pub fn rfq(connection: Connection, command: RfqCommand) -> anyhow::Result<u8> {
    let RfqCommand::List = command;
    let client = client(&connection)?;
    block_on(async {
        let answer = call(&client, "/v1/rfqs", None, None).await?;
        let rows = answer["rfqs"].as_array().cloned().unwrap_or_default();
        print_table(
            &rows,
            &[
                "need",
                "round",
                "gpus",
                "deadline",
                "sku",
                "hours",
                "earliest_start",
            ],
            connection.json,
        );
        Ok(exit::OK)
    })
}

pub fn quote(connection: Connection, args: QuoteArgs) -> anyhow::Result<u8> {
    let client = client(&connection)?;
    block_on(async {
        let body = json!({"gpus": args.gpus, "price": args.price});
        let answer = call(
            &client,
            &format!("/v1/needs/{}/quote", args.need),
            Some(body),
            None,
        )
        .await?;
        print_events(&answer, connection.json);
        Ok(exit::OK)
    })
}

pub fn award(connection: Connection, command: AwardCommand) -> anyhow::Result<u8> {
    let client = client(&connection)?;
    block_on(async {
        let (path, body) = match command {
            AwardCommand::List { status } => {
                let mut path = "/v1/awards".to_owned();
                if let Some(status) = status {
                    path.push_str(&format!("?status={status}"));
                }
                let rows = every(&client, &path, "awards").await?;
                print_table(
                    &rows,
                    &[
                        "need",
                        "award",
                        "status",
                        "gpus",
                        "price_per_gpu_hour",
                        "confirm_by",
                        "reservation",
                    ],
                    connection.json,
                );
                return Ok(exit::OK);
            }
            AwardCommand::Approve { need, award } => (
                format!("/v1/needs/{need}/awards/{award}/approve"),
                json!({}),
            ),
            AwardCommand::Reject {
                need,
                award,
                reason,
            } => (
                format!("/v1/needs/{need}/awards/{award}/reject"),
                json!({"reason": reason}),
            ),
            AwardCommand::Confirm {
                need,
                award,
                reservation,
            } => (
                format!("/v1/needs/{need}/awards/{award}/confirm"),
                json!({"reservation": reservation}),
            ),
            AwardCommand::Fail {
                need,
                award,
                reason,
            } => (
                format!("/v1/needs/{need}/awards/{award}/fail"),
                json!({"reason": reason}),
            ),
        };
        let answer = call(&client, &path, Some(body), None).await?;
        print_events(&answer, connection.json);
        Ok(exit::OK)
    })
}

pub fn events(connection: Connection, args: EventsArgs) -> anyhow::Result<u8> {
    let client = client(&connection)?;
    block_on(async {
        let mut path = format!("/v1/events?limit={}", args.limit);
        if let Some(after) = args.after {
            path.push_str(&format!("&after={after}"));
        }
        let answer = call(&client, &path, None, None).await?;
        print_events(&answer, connection.json);
        Ok(exit::OK)
    })
}

pub fn webhook(connection: Connection, command: WebhookCommand) -> anyhow::Result<u8> {
    let client = client(&connection)?;
    block_on(async {
        match command {
            WebhookCommand::Set { url } => {
                let answer = client
                    .put("/v1/webhook", &json!({"url": url}))
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                if connection.json {
                    println!("{answer}");
                } else {
                    println!("webhook: {}", answer["url"].as_str().unwrap_or_default());
                    println!(
                        "secret:  {}  (shown once; verify Rofr-Signature with it)",
                        answer["secret"].as_str().unwrap_or_default()
                    );
                }
            }
            WebhookCommand::Deliveries { status } => {
                let path = match status {
                    Some(s) => format!("/v1/webhook/deliveries?status={s}"),
                    None => "/v1/webhook/deliveries".into(),
                };
                let answer = call(&client, &path, None, None).await?;
                let rows = answer["deliveries"].as_array().cloned().unwrap_or_default();
                print_table(
                    &rows,
                    &[
                        "id",
                        "provider",
                        "event_index",
                        "status",
                        "attempts",
                        "last_error",
                    ],
                    connection.json,
                );
            }
        }
        Ok(exit::OK)
    })
}
