//! `rofr check DEAL [--against OLD]`: parse and lint a deal file, and list what it
//! changes from the version in force.

use std::path::PathBuf;

use anyhow::Context;
use rofr_engine::deal::{changes, parse_deal, Change};
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
    /// The version in force: also list every key DEAL adds, removes or writes
    /// differently, and refuse DEAL as its amendment where it renames the deal.
    #[arg(long, value_name = "OLD")]
    against: Option<PathBuf>,
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
    let (mut findings, parsed) = match parse_deal(&file, &text) {
        Ok(deal) => (lint(&deal, today), true),
        Err(errors) => (errors, false),
    };
    let against = match &args.against {
        Some(old) if parsed => Some(compare(old, &file, &text, &mut findings)?),
        _ => None,
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
        let mut report = report;
        if let Some((old, changes)) = &against {
            report["against"] = old.as_str().into();
            report["changes"] = serde_json::to_value(changes)?;
        }
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&file, &findings, errors, warnings);
        if let Some((old, changes)) = &against {
            print_changes(old, changes);
        }
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

/// Reads the version in force, lists the changes from it, and adds a finding where the
/// new version cannot amend it. An old version that does not parse is an error.
fn compare(
    old: &std::path::Path,
    file: &str,
    text: &str,
    findings: &mut Vec<Diagnostic>,
) -> anyhow::Result<(String, Vec<Change>)> {
    let old_text = std::fs::read_to_string(old)
        .with_context(|| format!("cannot read the deal file {}", old.display()))?;
    let old_file = old.display().to_string();
    let listed = |errors: Vec<Diagnostic>| {
        let errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!(
            "the version in force, {old_file}, does not parse:\n{}",
            errors.join("\n")
        )
    };
    parse_deal(&old_file, &old_text).map_err(listed)?;
    // Both files parse as deals, so both are TOML.
    let changes = changes((&old_file, &old_text), (file, text)).map_err(listed)?;
    findings.extend(rofr_engine::deal::renamed(&old_file, &changes));
    Ok((old_file, changes))
}

fn print_changes(old: &str, changes: &[Change]) {
    if changes.is_empty() {
        println!("no changes against {old}");
        return;
    }
    println!("changes against {old}:");
    for change in changes {
        let what = match (&change.was, &change.now) {
            (None, Some(now)) => format!("added: {}", brief(now)),
            (Some(was), None) => format!("removed (was {})", brief(was)),
            (Some(was), Some(now)) => format!("{} → {}", brief(was), brief(now)),
            (None, None) => continue,
        };
        println!("  {}: {}: {what}", change.location, change.key);
    }
    let plural = if changes.len() == 1 { "" } else { "s" };
    println!("{} change{plural}", changes.len());
}

/// A value cut to about a line (`--json` gives it whole).
fn brief(value: &str) -> String {
    const MOST: usize = 72;
    match value.char_indices().nth(MOST) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}
