//! `rofr check DEAL`: parse and lint a deal file.

use std::path::PathBuf;

use anyhow::Context;
use rofr_engine::deal::parse_deal;
use rofr_engine::diagnostic::{Diagnostic, Severity};
use rofr_engine::lint::{has_errors, lint};
use rofr_engine::types::Timestamp;

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// The deal file (TOML).
    deal: PathBuf,
    /// Print the findings as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Judge expired terms as of this date (YYYY-MM-DD) instead of today.
    #[arg(long, value_name = "DATE")]
    today: Option<chrono::NaiveDate>,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let text = std::fs::read_to_string(&args.deal)
        .with_context(|| format!("cannot read the deal file {}", args.deal.display()))?;
    let file = args.deal.display().to_string();
    let today = match args.today {
        Some(date) => {
            Timestamp::from_datetime(date.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        }
        None => Timestamp::from_datetime(chrono::Utc::now()),
    };
    let (findings, parsed) = match parse_deal(&file, &text) {
        Ok(deal) => (lint(&deal, today), true),
        Err(errors) => (errors, false),
    };
    let errors = findings
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    if args.json {
        let report = serde_json::json!({
            "file": file,
            "parsed": parsed,
            "ok": !has_errors(&findings),
            "errors": errors,
            "warnings": warnings,
            "findings": findings,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&file, &findings, errors, warnings);
    }
    Ok(if has_errors(&findings) {
        exit::ERROR
    } else {
        exit::OK
    })
}

fn print_text(file: &str, findings: &[Diagnostic], errors: usize, warnings: usize) {
    for finding in findings {
        println!("{finding}");
    }
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let verdict = if errors > 0 { "not usable" } else { "ok" };
    println!(
        "{file}: {verdict} ({}, {})",
        plural(errors, "error"),
        plural(warnings, "warning")
    );
}
