//! `rofr witness`: run a C2SP witness, print its key, or show the forks it holds.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rofr_server::witness::Witness;

use crate::exit;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Serve `POST /add-checkpoint` (C2SP tlog-witness) for the logs given.
    ///
    /// Each `--log` is `ORIGIN=KEY`: the checkpoint origin line and the log's verifier
    /// key (`rofr ledger key` prints both). The witness cosigns a checkpoint only where a
    /// consistency proof shows it extends the last one it cosigned for that origin, kept
    /// in its own SQLite file.
    Serve {
        #[command(flatten)]
        file: File,
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: String,
        /// A log to cosign for, `ORIGIN=KEY`; repeat for several.
        #[arg(long = "log", value_name = "ORIGIN=KEY", required = true)]
        logs: Vec<String>,
    },
    /// Print the witness's verifier key (made on first use), for the deal's
    /// `[[witness]] key`.
    Key {
        #[command(flatten)]
        file: File,
    },
    /// Print the fork proofs the witness holds, as JSON: each pair of signed checkpoints
    /// the log showed it that are not one history. Exit status 3 when there are any.
    Forks {
        #[command(flatten)]
        file: File,
    },
}

#[derive(clap::Args)]
pub struct File {
    /// The witness's SQLite file (its key and the checkpoints it cosigned).
    #[arg(long, default_value = "rofr-witness.db")]
    db: PathBuf,
    /// The key's name when the file is new, e.g. `witness.azure.example/rofr`.
    #[arg(long)]
    name: Option<String>,
}

fn open(file: &File) -> anyhow::Result<Witness> {
    Witness::open(&file.db, file.name.as_deref()).map_err(anyhow::Error::msg)
}

/// Reads `ORIGIN=KEY`.
pub fn parse_log(text: &str) -> anyhow::Result<(String, rofr_ledger::VerifierKey)> {
    let (origin, key) = text.split_once('=').with_context(|| {
        format!("--log `{text}`: write ORIGIN=KEY, as `rofr ledger key` prints them")
    })?;
    if origin.is_empty() || origin.contains('\n') {
        anyhow::bail!("--log `{text}`: the origin is empty");
    }
    let key = rofr_ledger::VerifierKey::parse(key)
        .with_context(|| format!("--log `{text}`: the log's verifier key"))?;
    Ok((origin.to_owned(), key))
}

pub fn run(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Key { file } => {
            println!("{}", open(&file)?.verifier_key());
            Ok(exit::OK)
        }
        Command::Forks { file } => {
            let forks = open(&file)?.forks().map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&forks)?);
            if forks.is_empty() {
                Ok(exit::OK)
            } else {
                eprintln!(
                    "rofr: {} fork proof{} held in {}",
                    forks.len(),
                    if forks.len() == 1 { "" } else { "s" },
                    file.db.display()
                );
                Ok(exit::VERIFICATION_FAILED)
            }
        }
        Command::Serve { file, listen, logs } => {
            let mut witness = open(&file)?;
            for log in &logs {
                let (origin, key) = parse_log(log)?;
                witness.trust(&origin, key);
            }
            let witness = Arc::new(witness);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(&listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                println!(
                    "rofr: witness {} on http://{} for {} log{}",
                    witness.verifier_key(),
                    listener.local_addr()?,
                    logs.len(),
                    if logs.len() == 1 { "" } else { "s" }
                );
                rofr_server::witness::serve(witness, listener, crate::serve::shutdown_signal())
                    .await?;
                anyhow::Ok(())
            })?;
            Ok(exit::OK)
        }
    }
}
