//! `rofr ledger` and `rofr verify`: the verifiable ledger from the command line.

use std::path::PathBuf;

use anyhow::Context;
use rofr_ledger::{SigningKey, VerifierKey};
use rofr_store::Location;
use rofr_tools::client::Client;

use crate::exit;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the verifier key of a broker's database (read from its key file).
    Key {
        /// A SQLite file, or a postgres:// URL.
        #[arg(long, env = "ROFR_DATABASE", default_value = "rofr.db")]
        database: Location,
        /// The signing key's file, if not where `rofr serve` keeps it by default.
        #[arg(long, env = "ROFR_LEDGER_KEY")]
        ledger_key: Option<PathBuf>,
        /// Print `ORIGIN=KEY`, the log as `rofr witness serve --log` takes it.
        #[arg(long)]
        for_witness: bool,
    },
    /// Ask the broker to sign a checkpoint of everything committed now; prints it.
    Checkpoint {
        #[arg(long, env = "ROFR_SERVER", default_value = "http://127.0.0.1:7878")]
        server: String,
    },
    /// Print the inclusion proof of entry INDEX in the tree of SIZE entries.
    Inclusion {
        #[arg(long)]
        index: u64,
        #[arg(long)]
        size: u64,
        #[arg(long, env = "ROFR_SERVER", default_value = "http://127.0.0.1:7878")]
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the consistency proof between the trees of FROM and TO entries.
    Consistency {
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        #[arg(long, env = "ROFR_SERVER", default_value = "http://127.0.0.1:7878")]
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// Write the evidence bundle of one need.
    Evidence {
        need: String,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, env = "ROFR_SERVER", default_value = "http://127.0.0.1:7878")]
        server: String,
    },
    /// Write a period's export: every entry of the needs active in [FROM, TO) and the
    /// deal's entries, under one multi-leaf proof against a cosigned checkpoint
    /// (docs/export.md). Read it with `rofr report`.
    Export {
        /// The period's start: a date (YYYY-MM-DD, its midnight UTC) or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// The period's end, not included.
        #[arg(long)]
        to: String,
        /// The export as this provider may see it (a provider's token gets its own).
        #[arg(long)]
        provider: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, env = "ROFR_SERVER", default_value = "http://127.0.0.1:7878")]
        server: String,
    },
    /// Recompute the whole tree from a database and check every stored checkpoint.
    ///
    /// Exit status 3 names the first entry altered, removed or reordered.
    Audit {
        /// A SQLite file, or a postgres:// URL.
        #[arg(long, env = "ROFR_DATABASE", default_value = "rofr.db")]
        database: Location,
        /// The signing key's file, if not where `rofr serve` keeps it by default.
        #[arg(long, env = "ROFR_LEDGER_KEY")]
        ledger_key: Option<PathBuf>,
        /// The verifier key (text, or a file holding it); by default the one derived
        /// from the database's key file.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The evidence bundle (JSON), as written by `rofr ledger evidence`.
    bundle: PathBuf,
    /// The verifier key you trust: its text, or a file holding it.
    #[arg(long)]
    key: String,
    /// A witness whose cosignature on the checkpoint you require: its verifier key's
    /// text, or a file holding it. Repeat for several.
    #[arg(long = "witness", value_name = "KEY")]
    witnesses: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn read_key(text_or_file: &str) -> anyhow::Result<VerifierKey> {
    let text = match std::fs::read_to_string(text_or_file) {
        Ok(contents) => contents,
        Err(_) => text_or_file.to_owned(),
    };
    VerifierKey::parse(text.trim()).map_err(|e| anyhow::anyhow!("--key: {e}"))
}

fn database_key(database: &Location, key: Option<PathBuf>) -> anyhow::Result<SigningKey> {
    let path = key.unwrap_or_else(|| rofr_server::ledger::key_path(database));
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the ledger key {} (it is made on the broker's first start)",
            path.display()
        )
    })?;
    SigningKey::from_private_text(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn token() -> anyhow::Result<String> {
    std::env::var("ROFR_TOKEN").context("set ROFR_TOKEN to a buyer, auditor or provider token")
}

pub fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Key {
            database,
            ledger_key,
            for_witness,
        } => {
            let key = database_key(&database, ledger_key)?.verifier_key();
            if for_witness {
                let origin = database.open()?.meta("ledger_origin")?.with_context(|| {
                    format!("{database} has no ledger origin yet: start the broker on it once")
                })?;
                println!("{origin}={key}");
            } else {
                println!("{key}");
            }
            Ok(exit::OK)
        }
        Command::Checkpoint { server } => {
            let client = Client::new(&server, &token()?);
            let note = tokio::runtime::Runtime::new()?
                .block_on(client.post_text("/v1/ledger/checkpoint"))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print!("{note}");
            Ok(exit::OK)
        }
        Command::Inclusion {
            index,
            size,
            server,
            json,
        } => proof(
            &server,
            &format!("/v1/ledger/inclusion?index={index}&size={size}"),
            json,
        ),
        Command::Consistency {
            from,
            to,
            server,
            json,
        } => proof(
            &server,
            &format!("/v1/ledger/consistency?from={from}&to={to}"),
            json,
        ),
        Command::Evidence { need, out, server } => {
            let client = Client::new(&server, &token()?);
            let bundle = tokio::runtime::Runtime::new()?
                .block_on(client.get(&format!("/v1/ledger/evidence/{need}")))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let text = serde_json::to_string_pretty(&bundle)? + "\n";
            match out {
                Some(path) => {
                    std::fs::write(&path, text)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!(
                        "rofr: evidence of need {need} written to {}",
                        path.display()
                    );
                }
                None => print!("{text}"),
            }
            Ok(exit::OK)
        }
        Command::Export {
            from,
            to,
            provider,
            out,
            server,
        } => {
            for (field, text) in [("--from", &from), ("--to", &to)] {
                rofr_report::parse_bound(field, text).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let mut query: Vec<(&str, &str)> = vec![("from", &from), ("to", &to)];
            if let Some(p) = &provider {
                query.push(("provider", p));
            }
            let path = format!(
                "/v1/ledger/export?{}",
                serde_urlencoded::to_string(&query).expect("a query encodes")
            );
            let client = Client::new(&server, &token()?);
            let runtime = tokio::runtime::Runtime::new()?;
            match out {
                Some(file) => {
                    // Written beside the file and renamed: a failed export leaves nothing.
                    let partial = file.with_extension("partial");
                    let mut writer = std::io::BufWriter::new(
                        std::fs::File::create(&partial)
                            .with_context(|| format!("cannot write {}", partial.display()))?,
                    );
                    let result = runtime.block_on(client.download(&path, &mut writer));
                    drop(writer);
                    match result {
                        Ok(bytes) => {
                            std::fs::rename(&partial, &file)
                                .with_context(|| format!("cannot write {}", file.display()))?;
                            eprintln!(
                                "rofr: export of {from} to {to} written to {} ({bytes} bytes)",
                                file.display()
                            );
                        }
                        Err(e) => {
                            let _ = std::fs::remove_file(&partial);
                            anyhow::bail!("{e}");
                        }
                    }
                }
                None => {
                    let mut stdout = std::io::stdout();
                    runtime
                        .block_on(client.download(&path, &mut stdout))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
            }
            Ok(exit::OK)
        }
        Command::Audit {
            database,
            ledger_key,
            key,
        } => {
            let key = match key {
                Some(k) => read_key(&k)?,
                None => VerifierKey::parse(&database_key(&database, ledger_key)?.verifier_key())
                    .expect("own key parses"),
            };
            let audit = rofr_server::ledger::audit(&database, &key)?;
            match audit.problem {
                None => {
                    println!(
                        "audit ok: {} entries recomputed, {} signed checkpoints match the log and are consistent with each other",
                        audit.entries, audit.checkpoints
                    );
                    Ok(exit::OK)
                }
                Some(problem) => {
                    println!("audit FAILED: {problem}");
                    Ok(exit::VERIFICATION_FAILED)
                }
            }
        }
    }
}

/// Prints a proof's hashes, one base64 hash a line (or the JSON answer).
fn proof(server: &str, path: &str, json: bool) -> anyhow::Result<u8> {
    let client = Client::new(server, &token()?);
    let answer = tokio::runtime::Runtime::new()?
        .block_on(client.get(path))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!("{answer}");
    } else {
        for hash in answer["proof"].as_array().into_iter().flatten() {
            println!("{}", hash.as_str().unwrap_or_default());
        }
    }
    Ok(exit::OK)
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let key = read_key(&args.key)?;
    let witnesses = args
        .witnesses
        .iter()
        .map(|w| {
            let text = std::fs::read_to_string(w).unwrap_or_else(|_| w.clone());
            rofr_ledger::CosignerKey::parse(text.trim())
                .map_err(|e| anyhow::anyhow!("--witness `{}`: {e}", text.trim()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bundle = std::fs::read(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    match rofr_ledger::evidence::verify_witnessed(&bundle, &key, &witnesses) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"verified": true, "need": report.need, "story": report.lines})
                );
            } else {
                println!("VERIFIED: evidence for need {}", report.need);
                for line in &report.lines {
                    println!("  {line}");
                }
            }
            Ok(exit::OK)
        }
        Err(failure) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"verified": false, "entry": failure.entry, "reason": failure.reason})
                );
            } else {
                println!("NOT VERIFIED: {failure}");
            }
            Ok(exit::VERIFICATION_FAILED)
        }
    }
}
