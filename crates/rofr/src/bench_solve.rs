//! `rofr bench solve`: rofr's proofs beside HiGHS's on the same seeded instances in the
//! same run, then the large instance's target for the search.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::exit;

pub struct Options {
    pub sizes: Vec<(usize, usize, usize)>,
    pub seeds: u64,
    pub time_limit: f64,
    pub write_instances: Option<PathBuf>,
    pub highs_script: PathBuf,
    pub target: bool,
    /// Runs of HiGHS and of rofr's default solver per instance, taken in turn; each
    /// side's median run is the one compared.
    pub runs: usize,
}

/// Parses `NEEDSxPOOLSxCAPS`.
pub fn parse_size(text: &str) -> Result<(usize, usize, usize), String> {
    let parts: Vec<&str> = text.split('x').collect();
    let numbers: Option<Vec<usize>> = parts.iter().map(|p| p.parse().ok()).collect();
    match numbers.as_deref() {
        Some(&[needs, pools, caps]) if needs > 0 && pools > 0 => Ok((needs, pools, caps)),
        _ => Err(format!(
            "`{text}` is not NEEDSxPOOLSxCAPS with positive needs and pools, e.g. 400x30x6"
        )),
    }
}

/// One side's answer to an instance.
struct Answer {
    status: String,
    cost: Option<f64>,
    bound: Option<f64>,
    /// The whole process, start to exit.
    seconds: f64,
    /// The solver's own run, where it says.
    solve_seconds: Option<f64>,
}

impl Answer {
    fn proven(&self) -> bool {
        self.status == "optimal"
    }

    fn gap(&self) -> Option<f64> {
        Some(((self.cost? - self.bound?) / self.cost?.abs().max(1.0)).max(0.0) * 100.0)
    }

    fn cell(&self) -> String {
        let gap = (self.gap())
            .filter(|_| !self.proven())
            .map_or(String::new(), |g| format!(" gap {g:.4}%"));
        let inner = self
            .solve_seconds
            .map_or(String::new(), |s| format!(" ({s:.2})"));
        format!("{:<9} {:>6.2}{inner} s{gap}", self.status, self.seconds)
    }
}

/// Of several runs of one side, the median by time (the later of the middle two where
/// their number is even): its status, cost and times.
fn median(mut runs: Vec<Answer>) -> Answer {
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    runs.swap_remove(runs.len() / 2)
}

/// `rofr solve` on `path` as a child process, timed from spawn to exit.
fn rofr_solve(path: &Path, solver: &str, limit: f64) -> anyhow::Result<Answer> {
    let out = path.with_extension(format!("{solver}.solution.json"));
    let started = Instant::now();
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("solve")
        .arg(path)
        .args([
            "--solver",
            solver,
            "--time-limit",
            &limit.to_string(),
            "--out",
        ])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    let seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "`rofr solve {}` failed", path.display());
    let solution: serde_json::Value = serde_json::from_slice(&std::fs::read(&out)?)?;
    Ok(Answer {
        status: solution["status"].as_str().unwrap_or("?").to_owned(),
        cost: solution["cost"].as_f64(),
        bound: solution["bound"].as_f64(),
        seconds,
        solve_seconds: None,
    })
}

/// `tools/check-allocation.py` on `path` (HiGHS from Python), timed from spawn to exit.
fn highs_solve(script: &Path, path: &Path, limit: f64) -> Result<Answer, String> {
    let started = Instant::now();
    let output = std::process::Command::new("python3")
        .arg(script)
        .arg(path)
        .args(["--time-limit", &limit.to_string()])
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr)
            .lines()
            .last()
            .unwrap_or("failed")
            .to_owned());
    }
    // HiGHS prints its banner first; the answer is the last line.
    let text = String::from_utf8_lossy(&output.stdout);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let answer: serde_json::Value =
        serde_json::from_str(last).map_err(|e| format!("not JSON ({e}): {last}"))?;
    Ok(Answer {
        status: answer["status"].as_str().unwrap_or("?").to_owned(),
        cost: answer["cost"].as_f64(),
        bound: answer["bound"].as_f64(),
        seconds,
        solve_seconds: answer["solve_seconds"].as_f64(),
    })
}

pub fn run(options: Options) -> anyhow::Result<u8> {
    let kept;
    let dir = match &options.write_instances {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot make {}", dir.display()))?;
            dir.clone()
        }
        None => {
            kept = tempfile::tempdir()?;
            kept.path().to_owned()
        }
    };
    let limit = options.time_limit;
    let rofr_solver = if rofr_solver::WITH_HIGHS {
        "highs"
    } else {
        "search"
    };
    println!(
        "rofr bench solve: seeded instances with binding caps, each solved by HiGHS (python3 {}), rofr's search, and rofr's default solver ({rofr_solver}), each a separate process with a {limit} s limit; HiGHS and rofr's default {} times each in turn, their median runs shown and compared, the search once; times from spawn to exit, HiGHS's own run in brackets",
        options.highs_script.display(),
        options.runs
    );
    println!(
        "{:<16} {:<38} {:<30} {:<30} {:>16} {:>10}  verdict",
        "instance", "HiGHS", "rofr search", "rofr highs", "cost", "- HiGHS\'s"
    );
    let (mut highs_total, mut highs_own, mut rofr_total, mut missed) = (0.0, 0.0, 0.0, 0usize);
    for &(needs, pools, caps) in &options.sizes {
        // The size's instances that HiGHS proved: (HiGHS's total, rofr's, proved by both).
        let (mut size_highs, mut size_rofr, mut both) = (0.0, 0.0, true);
        for seed in 42..42 + options.seeds {
            let name = format!("{needs}x{pools}x{caps}-s{seed}");
            let path = dir.join(format!("{name}.json"));
            let instance = rofr_tools::bench::generate_capped(seed, needs, pools, caps);
            std::fs::write(&path, serde_json::to_string_pretty(&instance)? + "\n")
                .with_context(|| format!("cannot write {}", path.display()))?;
            // HiGHS and rofr's default solver in turn, so that both meet the same
            // moments of a busy machine; the search once, beside them.
            let (mut highs_runs, mut rofr_runs) = (Vec::new(), Vec::new());
            let mut highs_failed = None;
            for _ in 0..options.runs {
                match highs_solve(&options.highs_script, &path, limit) {
                    Ok(answer) => highs_runs.push(answer),
                    Err(e) => highs_failed = Some(e),
                }
                if rofr_solver::WITH_HIGHS {
                    rofr_runs.push(rofr_solve(&path, "highs", limit)?);
                }
            }
            let highs = match highs_failed {
                Some(e) => Err(e),
                None => Ok(median(highs_runs)),
            };
            let with_highs = (!rofr_runs.is_empty()).then(|| median(rofr_runs));
            let search = rofr_solve(&path, "search", limit)?;
            let ours = with_highs.as_ref().unwrap_or(&search);
            let (highs_cell, verdict) = match &highs {
                Ok(h) => {
                    let met = !h.proven() || (ours.proven() && ours.seconds <= h.seconds);
                    if h.proven() {
                        highs_total += h.seconds;
                        highs_own += h.solve_seconds.unwrap_or(h.seconds);
                        rofr_total += ours.seconds;
                        size_highs += h.seconds;
                        size_rofr += ours.seconds;
                        both &= ours.proven();
                    }
                    missed += usize::from(!met);
                    let verdict = match (h.proven(), met) {
                        (false, _) => "HiGHS unproven",
                        (true, true) => "met",
                        (true, false) => "NOT MET",
                    };
                    (h.cell(), verdict)
                }
                Err(e) => (format!("not run: {e}"), "no HiGHS"),
            };
            let difference = match (ours.cost, highs.as_ref().ok().and_then(|h| h.cost)) {
                (Some(a), Some(b)) => format!("{:.2}", a - b),
                _ => "-".to_owned(),
            };
            println!(
                "{name:<16} {highs_cell:<38} {:<30} {:<30} {:>16} {difference:>10}  {verdict}",
                search.cell(),
                with_highs
                    .as_ref()
                    .map_or("not built".to_owned(), Answer::cell),
                ours.cost.map_or("-".to_owned(), |c| format!("{c:.2}")),
            );
        }
        if size_highs > 0.0 {
            let met = both && size_rofr <= size_highs;
            println!(
                "{:<16} what HiGHS proved: rofr {size_rofr:.2} s against HiGHS {size_highs:.2} s ({:.2}x){}",
                format!("{needs}x{pools}x{caps}"),
                size_rofr / size_highs,
                if met { ", met" } else { ", NOT MET" }
            );
        }
    }
    if highs_total > 0.0 {
        println!(
            "instances HiGHS proved: rofr ({rofr_solver}) {rofr_total:.2} s in all against HiGHS {highs_total:.2} s ({:.2}x), of which HiGHS's own runs {highs_own:.2} s; {missed} not met",
            rofr_total / highs_total
        );
    }
    if options.target {
        println!(
            "the search on the large instance (target: within 0.5% of the bound in 10 s), beside both baselines:"
        );
        println!(
            "{}",
            rofr_tools::bench::bench_solve_row(10_000, 100, 0, Duration::from_secs(10))
        );
    }
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(status: &str, seconds: f64) -> Answer {
        Answer {
            status: status.into(),
            cost: Some(1.0),
            bound: Some(1.0),
            seconds,
            solve_seconds: Some(seconds / 2.0),
        }
    }

    #[test]
    fn the_median_run_is_compared_whole() {
        let m = median(vec![
            run("optimal", 3.0),
            run("feasible", 20.0),
            run("optimal", 2.0),
        ]);
        assert_eq!((m.status.as_str(), m.seconds), ("optimal", 3.0));
        // Two runs: the later of the middle two, so one slow run is not hidden.
        let m = median(vec![run("optimal", 1.0), run("feasible", 20.0)]);
        assert_eq!((m.status.as_str(), m.seconds), ("feasible", 20.0));
        assert_eq!(median(vec![run("optimal", 4.0)]).seconds, 4.0);
    }
}
