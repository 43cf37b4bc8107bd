//! `rofr bench`: benchmark commands that print their figures.

use anyhow::Context as _;
use rofr_tools::bench::{bench_broker, bench_ledger, BenchOptions};

use crate::exit;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Broker throughput in process and over HTTP, beside raw appends of the same
    /// events to the same kind of database.
    Broker {
        /// Needs per run; each is submitted, accepted by the holder and confirmed.
        #[arg(long, default_value_t = 100_000)]
        needs: usize,
        /// Concurrent clients, one run per count, e.g. 64,512. Throughput levels off
        /// once the broker has no time to spare; more clients then only queue (longer
        /// latency, larger commits), and the raw append of larger commits is cheaper
        /// per event.
        #[arg(long, value_delimiter = ',', default_value = "64,128,256,512", value_parser = clap::value_parser!(usize))]
        clients: Vec<usize>,
        /// Which runs to make.
        #[arg(long, value_parser = ["in-process", "http", "both"], default_value = "both")]
        mode: String,
        /// A PostgreSQL server (postgres://USER@HOST:PORT/DATABASE) on which each run
        /// makes, and afterwards drops, a fresh database; by default a fresh SQLite file.
        #[arg(long, value_name = "URL")]
        database: Option<String>,
        /// Broker replicas sharing the database, one run per count (PostgreSQL only),
        /// e.g. 1,2,3.
        #[arg(long, value_delimiter = ',', default_value = "1", value_parser = clap::value_parser!(usize))]
        replicas: Vec<usize>,
    },
    /// Witnessing and C2SP tiles: the broker's load over HTTP without a witness and with
    /// one (side by side), how long each checkpoint waits for its cosignature, then
    /// hash tiles and entry bundles served from the witnessed log.
    Tlog {
        /// Needs per load run; each is submitted, accepted by the holder and confirmed.
        #[arg(long, default_value_t = 20_000)]
        needs: usize,
        /// Concurrent clients of each load run.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Level-0 hash tile requests (a sixteenth as many level-1 tiles, a quarter as
        /// many entry bundles).
        #[arg(long, default_value_t = 4_000)]
        tile_requests: usize,
        /// Connections the tile requests share.
        #[arg(long, default_value_t = 8)]
        connections: usize,
    },
    /// Period reports: a log of NEEDS needs (each submitted, accepted by the holder and
    /// confirmed), its whole period exported, then `rofr report` and `rofr report
    /// verify` run on the export as separate processes, timed, with their peak memory.
    Report {
        /// Needs in the log, comma-separated for several runs (e.g. 25000,100000).
        #[arg(long, value_delimiter = ',', default_value = "100000", value_parser = clap::value_parser!(usize))]
        needs: Vec<usize>,
        /// Concurrent callers loading the log.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Keep each run's export and report in DIR/NEEDS/ instead of a temporary
        /// directory.
        #[arg(long, value_name = "DIR")]
        keep: Option<std::path::PathBuf>,
    },
    /// Ledger throughput: tree appends, proofs and a full audit of a stored log, beside
    /// the raw SHA-256 rate over the same bytes.
    Ledger {
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
    },
    /// The simulator: a three-year scenario with eight providers and about 50,000 needs
    /// per run, `runs` runs of one strategy spread over the cores.
    Simulate {
        /// Runs to make, spread over the cores.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        /// The strategy every run uses.
        #[arg(long, default_value = "first_offer", value_parser = ["exclusive", "first_offer", "last_look", "open_market", "capped", "ordered"])]
        strategy: String,
    },
    /// rofr's proofs beside HiGHS's (tools/check-allocation.py) on the same seeded
    /// instances with binding caps, then the search's target on 10,000 needs x 100
    /// pools beside both baselines.
    Solve {
        /// Time limit per instance and solver, in seconds.
        #[arg(long, default_value_t = 20.0)]
        time_limit: f64,
        /// Instance sizes, NEEDSxPOOLSxCAPS, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "10x5x2,20x6x2,50x10x3,100x10x3,200x20x5,400x30x6,1000x40x8", value_parser = crate::bench_solve::parse_size)]
        sizes: Vec<(usize, usize, usize)>,
        /// Seeds per size (42, 43, ...).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
        seeds: u64,
        /// Keep each instance (the format of docs/allocation.md) and each solution in DIR.
        #[arg(long, value_name = "DIR")]
        write_instances: Option<std::path::PathBuf>,
        /// The HiGHS side.
        #[arg(long, value_name = "FILE", default_value = "tools/check-allocation.py")]
        highs_script: std::path::PathBuf,
        /// Leave out the 10,000 x 100 target.
        #[arg(long)]
        no_target: bool,
        /// Runs of HiGHS and of rofr's default solver on each instance, in turn; the
        /// median of each side's runs is compared.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=99))]
        runs: u64,
    },
}

pub fn run(command: Command) -> anyhow::Result<u8> {
    let (needs, clients, mode, database, replicas) = match command {
        Command::Broker {
            needs,
            clients,
            mode,
            database,
            replicas,
        } => (needs, clients, mode, database, replicas),
        Command::Simulate { runs, strategy } => return simulate(runs, &strategy),
        Command::Solve {
            time_limit,
            sizes,
            seeds,
            write_instances,
            highs_script,
            no_target,
            runs,
        } => {
            anyhow::ensure!(
                time_limit.is_finite() && time_limit > 0.0,
                "--time-limit must be a positive number of seconds"
            );
            return crate::bench_solve::run(crate::bench_solve::Options {
                sizes,
                seeds,
                time_limit,
                write_instances,
                highs_script,
                target: !no_target,
                runs: runs as usize,
            });
        }
        Command::Tlog {
            needs,
            clients,
            tile_requests,
            connections,
        } => {
            anyhow::ensure!(
                needs > 0 && clients > 0,
                "--needs and --clients must be positive"
            );
            println!(
                "rofr bench tlog: {needs} needs x 3 commands, {clients} clients over HTTP, a fresh SQLite file per run; then {tile_requests} tile requests over {connections} connections"
            );
            let report = tokio::runtime::Runtime::new()?
                .block_on(rofr_tools::bench_tlog::bench_tlog(
                    rofr_tools::bench_tlog::TlogOptions {
                        needs,
                        clients,
                        tile_requests,
                        connections,
                    },
                ))
                .map_err(|e| anyhow::anyhow!(e))?;
            println!("{}", report.render());
            return Ok(exit::OK);
        }
        Command::Report {
            needs,
            clients,
            keep,
        } => {
            anyhow::ensure!(
                needs.iter().all(|&n| n > 0) && clients > 0,
                "--needs and --clients must be positive"
            );
            println!(
                "rofr bench report: each run a fresh SQLite log, its whole period exported to a file, then `rofr report` and `rofr report verify` as child processes"
            );
            println!(
                "{:>8} {:>9} {:>9} {:>7} {:>8} {:>9} {:>10} {:>8} {:>10} {:>8}",
                "needs",
                "entries",
                "MB",
                "hashes",
                "load s",
                "export s",
                "report s",
                "peak MB",
                "verify s",
                "peak MB"
            );
            for n in needs {
                let exported = tokio::runtime::Runtime::new()?
                    .block_on(rofr_tools::bench_report::export_of(n, clients))
                    .map_err(|e| anyhow::anyhow!(e))?;
                let mut export = exported.export.clone();
                let mut out = exported.dir.path().join("report");
                if let Some(keep) = &keep {
                    let dir = keep.join(n.to_string());
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("cannot make {}", dir.display()))?;
                    export = dir.join("export.jsonl");
                    std::fs::copy(&exported.export, &export)
                        .with_context(|| format!("cannot write {}", export.display()))?;
                    out = dir.join("report");
                }
                let key = exported.verifier_key.clone();
                let (report_s, report_mb) = child_run(&[
                    "report".as_ref(),
                    export.as_os_str(),
                    "--out".as_ref(),
                    out.as_os_str(),
                    "--key".as_ref(),
                    key.as_ref(),
                ])?;
                let json = out.join("report.json");
                let (verify_s, verify_mb) = child_run(&[
                    "report".as_ref(),
                    "verify".as_ref(),
                    json.as_os_str(),
                    export.as_os_str(),
                    "--key".as_ref(),
                    key.as_ref(),
                ])?;
                println!(
                    "{:>8} {:>9} {:>9.1} {:>7} {:>8.1} {:>9.2} {:>10.2} {:>8.0} {:>10.2} {:>8.0}",
                    n,
                    exported.stats.entries,
                    exported.bytes as f64 / 1e6,
                    exported.stats.proof_hashes,
                    exported.load_seconds,
                    exported.export_seconds,
                    report_s,
                    report_mb,
                    verify_s,
                    verify_mb
                );
            }
            return Ok(exit::OK);
        }
        Command::Ledger { entries } => {
            anyhow::ensure!(entries > 0, "--entries must be positive");
            println!("rofr bench ledger: {entries} synthetic entries of about 300 bytes");
            let report = bench_ledger(entries).map_err(|e| anyhow::anyhow!(e))?;
            println!("{}", report.render());
            return Ok(exit::OK);
        }
    };
    anyhow::ensure!(needs > 0, "--needs must be positive");
    anyhow::ensure!(
        !clients.is_empty() && clients.iter().all(|&c| c > 0),
        "--clients: every count must be positive"
    );
    if let Some(url) = &database {
        match url.parse::<rofr_store::Location>() {
            Ok(rofr_store::Location::Postgres(_)) => {}
            Ok(_) => {
                anyhow::bail!("--database: give a postgres:// URL (the SQLite runs need none)")
            }
            Err(e) => anyhow::bail!("--database: {e}"),
        }
    }
    anyhow::ensure!(
        replicas.iter().all(|&r| r > 0),
        "--replicas: every count must be positive"
    );
    anyhow::ensure!(
        database.is_some() || replicas.iter().all(|&r| r == 1),
        "--replicas: replicas share a PostgreSQL database; give one with --database"
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let store = match &database {
        Some(_) => "a fresh PostgreSQL database",
        None => "a fresh SQLite file",
    };
    let counts = clients
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "rofr bench broker: {needs} needs x 3 commands each, {counts} clients, {store} per run"
    );
    for &count in &replicas {
        for http in [false, true] {
            if (http && mode == "in-process") || (!http && mode == "http") {
                continue;
            }
            for &clients in &clients {
                let report = runtime
                    .block_on(bench_broker(BenchOptions {
                        needs,
                        clients,
                        http,
                        postgres: database.clone(),
                        replicas: count,
                    }))
                    .map_err(|e| anyhow::anyhow!(e))?;
                println!("{}", report.render());
            }
        }
    }
    Ok(exit::OK)
}

fn simulate(runs: u32, strategy: &str) -> anyhow::Result<u8> {
    let strategy = rofr_sim::Strategy::parse(strategy).map_err(|e| anyhow::anyhow!(e.0))?;
    crate::allocator::keep_freed_memory();
    let scenario = rofr_sim::bench::scenario(runs, strategy);
    let drawn = rofr_sim::run::draw(&scenario, 0).needs.len();
    println!(
        "rofr bench simulate: {} to {}, {} providers, {drawn} needs drawn in run 0, {runs} runs of `{}` on {} threads",
        &scenario.start.to_string()[..10],
        &scenario.end.to_string()[..10],
        scenario.providers.len(),
        strategy.as_str(),
        rayon::current_num_threads()
    );
    let started = std::time::Instant::now();
    let outcome = rofr_sim::simulate(&scenario, &|| {});
    let seconds = started.elapsed().as_secs_f64();
    let runs_done = outcome.results.iter().flatten();
    let (needs, events) = runs_done.fold((0u64, 0u64), |(n, e), r| {
        (n + u64::from(r.needs), e + r.events)
    });
    println!(
        "{runs} runs in {seconds:.2} s: {needs} needs ({:.0} needs/s simulated), {events} engine events ({:.0}/s), {:.2} s per run per thread",
        needs as f64 / seconds,
        events as f64 / seconds,
        seconds * rayon::current_num_threads() as f64 / f64::from(runs)
    );
    Ok(exit::OK)
}

/// Runs this binary with `args` as a child process: its wall time in seconds and its
/// peak resident memory in MB (the kernel's high-water mark for it alone).
fn child_run(args: &[&std::ffi::OsStr]) -> anyhow::Result<(f64, f64)> {
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 fills it for the child waited on.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(waited == pid, "waiting for `rofr {:?}` failed", args);
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "`rofr {:?}` failed",
        args
    );
    // Reaped above; `child` only keeps its handles.
    let _ = child.try_wait();
    Ok((seconds, usage.ru_maxrss as f64 / 1024.0))
}
