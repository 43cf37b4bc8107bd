//! `rofr report`: a period's conduct of the deal, read offline from an export and the
//! keys you trust; `rofr report verify` recomputes a report's figures.

use std::path::{Path, PathBuf};

use std::io::Write as _;

use anyhow::Context;
use rofr_ledger::CosignerKey;

use crate::exit;
use crate::ledger::read_key;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The export, as `rofr ledger export` wrote it.
    #[arg(required = true)]
    export: Option<PathBuf>,
    /// Write report.html and report.json into this directory (made if missing).
    #[arg(long, required = true)]
    out: Option<PathBuf>,
    #[command(flatten)]
    keys: Keys,
}

#[derive(clap::Args)]
struct Keys {
    /// The log's verifier key you trust (`rofr ledger key`): its text, or a file.
    #[arg(long, required = true)]
    key: Option<String>,
    /// A witness whose cosignature on the checkpoint you require: its verifier key's
    /// text, or a file holding it. Repeat for several.
    #[arg(long = "witness")]
    witnesses: Vec<String>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Recompute every figure of a report's JSON from the export; exit status 3 names
    /// the first figure that differs, or the entry that does not verify.
    Verify {
        /// report.json, as `rofr report` wrote it.
        report: PathBuf,
        /// The export it was made from.
        export: PathBuf,
        #[command(flatten)]
        keys: Keys,
    },
}

fn keys(keys: &Keys) -> anyhow::Result<(rofr_ledger::VerifierKey, Vec<CosignerKey>)> {
    let key = read_key(keys.key.as_deref().context("--key is required")?)?;
    let witnesses = keys
        .witnesses
        .iter()
        .map(|w| {
            let text = std::fs::read_to_string(w).unwrap_or_else(|_| w.clone());
            CosignerKey::parse(text.trim())
                .map_err(|e| anyhow::anyhow!("--witness `{}`: {e}", text.trim()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((key, witnesses))
}

fn open(path: &Path) -> anyhow::Result<std::io::BufReader<std::fs::File>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(std::io::BufReader::with_capacity(1 << 20, file))
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    match args.command {
        Some(Command::Verify {
            report,
            export,
            keys: k,
        }) => {
            let (key, witnesses) = keys(&k)?;
            let stated = std::fs::read(&report)
                .with_context(|| format!("cannot read {}", report.display()))?;
            let name = export.display().to_string();
            match rofr_report::verify(&stated, open(&export)?, &name, &key, &witnesses) {
                Ok(report) => {
                    println!(
                        "VERIFIED: every figure of the report for {} to {} follows from the {} entries of the export, proved against the checkpoint of {} entries signed by {}{}.",
                        report.from,
                        report.to,
                        report.export_entries,
                        report.checkpoint.size,
                        report.checkpoint.signed_by,
                        cosigners(&report)
                    );
                    Ok(exit::OK)
                }
                Err(failure) => {
                    println!("NOT VERIFIED: {failure}");
                    Ok(exit::VERIFICATION_FAILED)
                }
            }
        }
        None => {
            let export = args.export.context("the export to read is required")?;
            let out = args.out.context("--out DIR is required")?;
            let (key, witnesses) = keys(&args.keys)?;
            let name = export.display().to_string();
            let report = match rofr_report::make(open(&export)?, &name, &key, &witnesses) {
                Ok(report) => report,
                Err(failure) => {
                    println!("NOT VERIFIED: {failure}");
                    println!("Nothing was written.");
                    return Ok(exit::VERIFICATION_FAILED);
                }
            };
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot make {}", out.display()))?;
            write_whole(
                &out.join("report.json"),
                |file: &mut std::io::BufWriter<std::fs::File>| {
                    serde_json::to_writer_pretty(&mut *file, &report)?;
                    Ok(file.write_all(b"\n")?)
                },
            )?;
            let html = rofr_report::html::render(&report);
            write_whole(&out.join("report.html"), |file| {
                Ok(file.write_all(html.as_bytes())?)
            })?;
            let f = &report.figures;
            println!(
                "Report for {} to {}: {} needs, {} in a first-refusal scope ({} offered to the holder first; I1 kept {}, broken {}), checkpoint of {} entries{}.",
                report.from,
                report.to,
                f.needs.total.value,
                f.first_refusal.in_scope.value,
                f.first_refusal.offered_first.value,
                f.first_refusal.i1_kept.value,
                f.first_refusal.i1_broken.value,
                report.checkpoint.size,
                cosigners(&report)
            );
            println!(
                "Wrote {} and {}",
                out.join("report.html").display(),
                out.join("report.json").display()
            );
            Ok(exit::OK)
        }
    }
}

fn cosigners(report: &rofr_report::Report) -> String {
    let names: Vec<&str> = report
        .checkpoint
        .cosigned_by
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(", cosigned by {}", names.join(", "))
    }
}

/// Writes beside the file and renames, so a reader never sees half a report.
pub(crate) fn write_whole(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?,
    );
    write(&mut file).with_context(|| format!("cannot write {}", partial.display()))?;
    file.into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("cannot write {}", path.display()))
}
