//! The `rofr` binary: argument parsing and wiring only. Every rule lives in the
//! library crates; this file turns their results into text, JSON and exit codes.

mod check;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// rofr: contract-aware sourcing of GPU compute across clouds.
///
/// Offers each need to the holder of a right of first refusal first, sources what it
/// declines from other providers under caps and restrictions, and records every step.
#[derive(Parser)]
#[command(name = "rofr", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a deal file and lint its clauses for conflicts.
    ///
    /// Exit status: 0 when the deal is usable (warnings allowed), 1 when it has errors.
    Check(check::Args),
}

/// Exit codes shared by every command (PRODUCT.md §6).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => check::run(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}
