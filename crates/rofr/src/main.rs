//! The `rofr` binary: argument parsing and wiring only. Every rule lives in the
//! library crates; this file turns their results into text, JSON and exit codes.

mod agent;
mod allocator;
mod bench;
mod bench_solve;
mod check;
mod client;
mod demo;
mod export;
mod ledger;
mod report;
mod serve;
mod simulate;
mod token;
mod witness;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the simulator and the broker's writer allocate and free small objects by
/// the million, and it does that faster than the system allocator (ARCHITECTURE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Run the whole system once: broker, four provider agents, a stream of needs.
    Demo(demo::Args),
    /// The verifiable ledger: verifier key, checkpoints, evidence bundles, audit.
    #[command(subcommand)]
    Ledger(ledger::Command),
    /// Verify an evidence bundle offline against a verifier key. Exit status 3 when the
    /// evidence fails, naming the entry.
    Verify(ledger::VerifyArgs),
    /// A period's conduct of the deal, from an export, offline: report.html and
    /// report.json. `rofr report verify` recomputes a report's figures. Exit status 3
    /// when the export or a figure does not verify, naming it.
    Report(report::Args),
    /// Benchmarks that print their figures.
    #[command(subcommand)]
    Bench(bench::Command),
    /// Validate a deal file and lint its clauses for conflicts.
    ///
    /// Exit status: 0 when the deal is usable (warnings allowed), 1 when it has errors.
    Check(check::Args),
    /// Run the broker: the HTTP API over a SQLite file or a PostgreSQL database (which
    /// several replicas may share).
    Serve(serve::Args),
    /// Allocate an instance (docs/allocation.md) and write the solution.
    ///
    /// `exact` searches for the least-cost allocation and proves it (over each pool's
    /// room for each unit, on a minimum-cost flow; where caps bind, with the caps priced
    /// into the flow, and a mixed-integer program finishing the proof where it fits in
    /// the time); `status` is `optimal` only when proven, `feasible` with a lower `bound`
    /// when the time limit cut the proof short. Without `--time-limit` the search runs
    /// until it has its proof, telling standard error where it stands every few seconds.
    /// `ordered` and `cheapest-first` are the baselines the optimizer must beat.
    Solve {
        /// The instance (JSON).
        instance: std::path::PathBuf,
        /// Write the solution here instead of standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        #[arg(long, value_parser = ["exact", "ordered", "cheapest-first"], default_value = "exact")]
        strategy: String,
        /// Stop the exact search after this many seconds and report the best found with
        /// its bound [default: 60].
        #[arg(long, value_name = "SECONDS")]
        time_limit: Option<f64>,
        /// What proves the allocation: `highs` (HiGHS in process, in a build with the
        /// `highs` feature), `search` (rofr's own search over rooms), or `auto` (HiGHS
        /// where built in, else the search).
        #[arg(long, value_parser = ["auto", "highs", "search"], default_value = "auto")]
        solver: String,
    },
    /// Rehearse a scenario's demand against provider capacity under several sourcing
    /// strategies, with the live broker's engine; write a JSON result and an HTML report.
    Simulate(simulate::Args),
    /// Bring a database's schema up to date (the broker also does this at start).
    Migrate {
        /// A SQLite file, or a postgres:// URL.
        #[arg(long, env = "ROFR_DATABASE", default_value = "rofr.db")]
        database: rofr_store::Location,
    },
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(token::Command),
    /// A C2SP witness for the ledger: cosigns checkpoints consistent with the ones it
    /// cosigned before, and keeps proof of any fork.
    #[command(subcommand)]
    Witness(witness::Command),
    /// Answer offers and requests for quotes as one provider, from a capacity model.
    Agent(agent::Args),
    /// Submit, list, show and cancel needs (buyer; auditors may read).
    Need {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        command: client::NeedCommand,
    },
    /// List and answer offers (provider).
    Offer {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        command: client::OfferCommand,
    },
    /// List requests for quotes (provider).
    Rfq {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        command: client::RfqCommand,
    },
    /// Quote on a request for quotes (provider).
    Quote {
        #[command(flatten)]
        connection: client::Connection,
        #[command(flatten)]
        args: client::QuoteArgs,
    },
    /// Amend the deal, or list its versions (buyer; versions also for the auditor).
    Deal {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        command: client::DealCommand,
    },
    /// Approve, reject, confirm or fail awards.
    Award {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        command: client::AwardCommand,
    },
    /// Register a webhook (provider) or follow deliveries (buyer).
    Webhook {
        #[command(flatten)]
        connection: client::Connection,
        #[command(subcommand)]
        command: client::WebhookCommand,
    },
    /// Write confirmed awards for SkyPilot, dstack, Karpenter or FOCUS (buyer, auditor).
    Export(export::Args),
    /// Read the event log (buyer, auditor).
    Events {
        #[command(flatten)]
        connection: client::Connection,
        #[command(flatten)]
        args: client::EventsArgs,
    },
}

/// Exit codes shared by every command (docs/cli.md).
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const VERIFICATION_FAILED: u8 = 3;
}

/// `rofr solve`'s time limit where none is given.
const DEFAULT_SOLVE_SECONDS: f64 = 60.0;

fn solve(
    path: &std::path::Path,
    out: Option<&std::path::Path>,
    strategy: &str,
    time_limit: Option<f64>,
    solver: &str,
) -> anyhow::Result<u8> {
    let (time_limit, by_default) = match time_limit {
        Some(s) => (s, false),
        None => (DEFAULT_SOLVE_SECONDS, true),
    };
    use anyhow::Context;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let instance = rofr_solver::Instance::parse(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    anyhow::ensure!(
        time_limit.is_finite() && time_limit > 0.0,
        "--time-limit must be a positive number of seconds, not {time_limit}"
    );
    let highs = match solver {
        "highs" if !rofr_solver::WITH_HIGHS => anyhow::bail!(
            "--solver highs: this rofr was built without HiGHS; build it with `cargo build --release --features highs` (needs cmake and libclang), or use --solver search"
        ),
        "highs" => true,
        "auto" => rofr_solver::WITH_HIGHS,
        _ => false,
    };
    let started = std::time::Instant::now();
    let solution = match strategy {
        "ordered" => rofr_solver::baseline(&instance, rofr_solver::Strategy::Ordered),
        "cheapest-first" => rofr_solver::baseline(&instance, rofr_solver::Strategy::CheapestFirst),
        _ => {
            let by = if highs { "HiGHS" } else { "the search over rooms" };
            if by_default {
                eprintln!(
                    "rofr solve: proving with {by} within {DEFAULT_SOLVE_SECONDS} s (the default; --time-limit changes it), then the best found and its bound"
                );
            } else {
                eprintln!("rofr solve: proving with {by} within {time_limit} s");
            }
            let solved = rofr_solver::solve(
                &instance,
                &rofr_solver::Settings {
                    limits: instance.share_limits(),
                    time_limit: Some(std::time::Duration::from_secs_f64(time_limit)),
                    highs,
                    progress: Some(rofr_solver::Reporter(std::sync::Arc::new(|p| {
                        eprintln!("rofr solve: {}", searching(p));
                    }))),
                    ..Default::default()
                },
            );
            if let Ok(s) = &solved {
                eprintln!("rofr solve: {}", outcome(s, started.elapsed()));
            }
            solved
        }
    }
    .map_err(|e| anyhow::anyhow!("{strategy}: {e}"))?;
    let text = serde_json::to_string_pretty(&solution)? + "\n";
    match out {
        Some(file) => std::fs::write(file, text)
            .with_context(|| format!("cannot write {}", file.display()))?,
        None => print!("{text}"),
    }
    Ok(exit::OK)
}

/// A search's progress, for standard error.
fn searching(p: &rofr_solver::Progress) -> String {
    let best = match p.best {
        Some(best) => format!(
            "best so far {best:.2}, {:.4}% above the bound {:.2}",
            (best - p.bound) / best.abs().max(1.0) * 100.0,
            p.bound
        ),
        None => format!("nothing found yet; bound {:.2}", p.bound),
    };
    format!("searching: {best}, {} nodes", p.nodes)
}

/// How a search ended, for standard error.
fn outcome(s: &rofr_solver::Solution, took: std::time::Duration) -> String {
    let seconds = took.as_secs_f64();
    match s.status {
        rofr_solver::Status::Optimal => {
            format!("optimal at {:.2}, proven in {seconds:.2} s", s.cost)
        }
        rofr_solver::Status::Feasible => format!(
            "feasible at {:.2}, {:.4}% above the bound {:.2}, not proven optimal in {seconds:.2} s",
            s.cost,
            (s.cost - s.bound) / s.cost.abs().max(1.0) * 100.0,
            s.bound
        ),
        other => format!("{other} after {seconds:.2} s"),
    }
}

fn migrate(database: &rofr_store::Location) -> anyhow::Result<u8> {
    // Each migration runs in its own transaction; on PostgreSQL, brokers starting
    // together wait for each other's migrations.
    let (before, after) = database.migrate()?;
    println!(
        "{database}: schema version {after} ({} migration{} applied now)",
        after - before,
        if after - before == 1 { "" } else { "s" }
    );
    Ok(exit::OK)
}

/// A command whose reader goes away (`rofr need list | head -1`) ends as other Unix
/// tools do: killed by SIGPIPE, without a word. Rust ignores the signal, so that a
/// closed pipe would make `println!` panic. The long-running commands keep ignoring
/// it; their sockets do not raise it in any case.
fn end_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: resets one signal's disposition to its default, before the command
    // starts any thread or installs any handler of its own.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ROFR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if !matches!(
        cli.command,
        Command::Demo(_)
            | Command::Serve(_)
            | Command::Agent(_)
            | Command::Bench(_)
            | Command::Witness(_)
    ) {
        end_quietly_on_a_closed_pipe();
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Check(args) => check::run(args),
        Command::Bench(command) => bench::run(command),
        Command::Ledger(command) => ledger::run(command),
        Command::Verify(args) => ledger::verify(args),
        Command::Report(args) => report::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Token(command) => token::run(command),
        Command::Witness(command) => witness::run(command),
        Command::Migrate { database } => migrate(&database),
        Command::Solve {
            instance,
            out,
            strategy,
            time_limit,
            solver,
        } => solve(&instance, out.as_deref(), &strategy, time_limit, &solver),
        Command::Agent(args) => agent::run(args),
        Command::Export(args) => export::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Need {
            connection,
            command,
        } => client::need(connection, command),
        Command::Offer {
            connection,
            command,
        } => client::offer(connection, command),
        Command::Rfq {
            connection,
            command,
        } => client::rfq(connection, command),
        Command::Quote { connection, args } => client::quote(connection, args),
        Command::Award {
            connection,
            command,
        } => client::award(connection, command),
        Command::Events { connection, args } => client::events(connection, args),
        Command::Deal {
            connection,
            command,
        } => client::deal(connection, command),
        Command::Webhook {
            connection,
            command,
        } => client::webhook(connection, command),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit::ERROR)
        }
    }
}
