//! `rofr simulate SCENARIO`: rehearse demand against provider capacity under several
//! sourcing strategies; write the JSON result and a self-contained HTML report.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rofr_engine::deal::parse_deal;
use rofr_sim::scenario::{deal_reference, parse_scenario_with};

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// The scenario file (TOML).
    scenario: PathBuf,
    /// Where to write the JSON result [default: SCENARIO's name with .json, here].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where to write the HTML report [default: SCENARIO's name with .html, here].
    #[arg(long)]
    html: Option<PathBuf>,
    /// Runs per strategy, in place of the scenario's `runs`.
    #[arg(long)]
    runs: Option<u32>,
    /// Seed, in place of the scenario's `seed`.
    #[arg(long)]
    seed: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let file = args.scenario.display().to_string();
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read the scenario file {file}"))?;
    let reference = match deal_reference(&file, &text) {
        Ok(reference) => reference,
        Err(errors) => return Ok(report_errors(&file, &errors)),
    };
    let deal_file = reference.path.display().to_string();
    let deal_text = match std::fs::read_to_string(&reference.path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!(
                "{}: error: cannot read the deal file {deal_file}: {error} [scenario.deal]",
                reference.location
            );
            return Ok(exit::ERROR);
        }
    };
    let deal = match parse_deal(&deal_file, &deal_text) {
        Ok(deal) => Arc::new(deal),
        Err(errors) => return Ok(report_errors(&deal_file, &errors)),
    };
    // An amendment's deal file is named relative to the scenario, as its deal is.
    let dir = args
        .scenario
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let mut load = |name: &str| {
        let path = dir.join(name);
        let shown = path.display().to_string();
        std::fs::read_to_string(&path)
            .map(|text| (shown.clone(), text))
            .map_err(|e| format!("cannot read the deal file {shown}: {e}"))
    };
    let mut scenario = match parse_scenario_with(&file, &text, deal, &mut load) {
        Ok(scenario) => scenario,
        Err(errors) => return Ok(report_errors(&file, &errors)),
    };
    for warning in &scenario.warnings {
        eprintln!("{warning}");
    }
    if let Some(runs) = args.runs {
        anyhow::ensure!(runs >= 1, "--runs must be at least 1");
        scenario.runs = runs;
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    let stem = args
        .scenario
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "simulation".into());
    let json_path = args
        .json
        .unwrap_or_else(|| PathBuf::from(format!("{stem}.json")));
    let html_path = args
        .html
        .unwrap_or_else(|| PathBuf::from(format!("{stem}.html")));
    let total = u64::from(scenario.runs) * scenario.strategies.len() as u64;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total).with_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} simulating [{bar:40}] {pos}/{len} runs · {elapsed} · eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        )
    };
    let started = std::time::Instant::now();
    crate::allocator::keep_freed_memory();
    let outcome = rofr_sim::simulate(&scenario, &|| bar.inc(1));
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let report = rofr_sim::Report::new(&scenario, &outcome);
    let json = serde_json::to_string_pretty(&report)? + "\n";
    write(&json_path, json.as_bytes())?;
    let alert = scenario.deal.caps.iter().find_map(|c| c.hhi_alert);
    write(
        &html_path,
        rofr_sim::html::render_html(&report, alert).as_bytes(),
    )?;
    let needs: u64 = outcome
        .results
        .iter()
        .flatten()
        .map(|r| u64::from(r.needs))
        .sum();
    println!(
        "{}: {} strategies × {} runs, {needs} needs simulated in {:.1} s",
        report.scenario,
        scenario.strategies.len(),
        scenario.runs,
        elapsed.as_secs_f64()
    );
    println!(
        "{:<12} {:>10} {:>8} {:>8} {:>16} {:>12} {:>8} {:>8}",
        "strategy", "delay mean", "p50", "p90", "unmet GPU-h", "cost", "holder", "HHI"
    );
    for s in &report.strategies {
        println!(
            "{:<12} {:>10.2} {:>8.2} {:>8.2} {:>16} {:>12} {:>7.1}% {:>8.0}",
            s.strategy,
            s.launch_delay_days.mean,
            s.launch_delay_days.p50,
            s.launch_delay_days.p90,
            rofr_sim::report::thousands(s.unmet_gpu_hours),
            rofr_sim::report::dollars(s.total_cost),
            s.holder_share * 100.0,
            s.final_hhi
        );
    }
    println!();
    for line in &report.summary {
        println!("- {}", line.replace('`', ""));
    }
    println!();
    println!("wrote {} and {}", json_path.display(), html_path.display());
    Ok(exit::OK)
}

fn report_errors(file: &str, errors: &[rofr_engine::diagnostic::Diagnostic]) -> u8 {
    for error in errors {
        eprintln!("{error}");
    }
    eprintln!(
        "{file}: not usable ({} error{})",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    exit::ERROR
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let temporary = dir.join(format!(
        ".{}.partial",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
