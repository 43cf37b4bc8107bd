//! `rofr demo`: the whole system in one command, with nothing to set up.

use std::path::PathBuf;

use rofr_tools::demo::{run as run_demo, DemoOptions, DEAL_FILE};

use crate::exit;

#[derive(clap::Args)]
pub struct Args {
    /// How many needs the buyer submits.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    needs: u32,
    /// Model seconds per real second (86400: a model day each second).
    #[arg(long, default_value_t = 86_400.0)]
    speed: f64,
    /// Seed for the stream of needs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the broker running afterwards and print its URL and tokens.
    #[arg(long)]
    keep: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Keep the database here instead of in a temporary directory.
    #[arg(long)]
    database: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        anyhow::bail!("--speed must be a positive number");
    }
    if let Some(path) = &args.database {
        if path.exists() {
            anyhow::bail!(
                "{} exists; the demo starts on a fresh database",
                path.display()
            );
        }
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        println!(
            "rofr demo: {} needs against {DEAL_FILE} with the holder's witness, four provider agents over HTTP, model time {} x real time",
            args.needs, args.speed
        );
        let running = run_demo(DemoOptions {
            needs: args.needs as usize,
            speed: args.speed,
            seed: args.seed,
            listen: args.listen.clone(),
            database: args.database.clone(),
            progress: true,
        })
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
        print!("{}", running.summary.render());
        let w = &running.witnessing;
        println!(
            "Ledger: {} entries; the checkpoint of {} is {} by the holder's witness (azure, {}).",
            w.log_size,
            w.checkpoint_size,
            if w.witnessed_size == w.checkpoint_size { "cosigned" } else { "not yet cosigned" },
            running.witness_key
        );
        let r = &running.report;
        let fr = &r.figures.first_refusal;
        println!(
            "Report for {} to {}: {} needs; {} of {} in-scope needs offered to the holder first, I1 kept for {} and broken for {}: {}",
            &r.from[..10],
            &r.to[..10],
            r.figures.needs.total.value,
            fr.offered_first.value,
            fr.in_scope.value,
            fr.i1_kept.value,
            fr.i1_broken.value,
            running.report_dir.join("report.html").display()
        );
        if args.database.is_none() && !args.keep {
            println!("  (in a temporary directory, removed now; keep it with --database FILE or --keep)");
        }
        if args.keep {
            println!("\nThe broker keeps running at {} (database {}).", running.url, running.database.display());
            println!("Dashboard: {}/ui/ (sign in with a token below)", running.url);
            println!("Tokens (send as `Authorization: Bearer <token>`, or set ROFR_TOKEN for the CLI):");
            for (label, token) in &running.tokens {
                println!("  {label:<18} {token}");
            }
            println!("Ledger verifier key: {}", running.verifier_key);
            println!(
                "Holder's witness (azure) at {}, key: {}",
                running.witness_url, running.witness_key
            );
            println!(
                "  it keeps what it cosigned in {}; the deal the demo adopted is {}",
                running.witness_database.display(),
                running.deal_file.display()
            );
            println!("Try: ROFR_SERVER={} ROFR_TOKEN=<buyer token> rofr need list", running.url);
            println!(
                "     ROFR_SERVER={} ROFR_TOKEN=<auditor token> rofr ledger evidence <need> --out bundle.json",
                running.url
            );
            println!(
                "     rofr verify bundle.json --key '{}' --witness '{}'",
                running.verifier_key, running.witness_key
            );
            println!(
                "     ROFR_SERVER={} ROFR_TOKEN=<auditor token> rofr ledger export --from {} --to {} --out export.jsonl",
                running.url,
                &r.from[..10],
                &r.to[..10]
            );
            println!(
                "     rofr report export.jsonl --out report --key '{}' --witness '{}'",
                running.verifier_key, running.witness_key
            );
            println!("Press Ctrl-C to stop.");
            crate::serve::shutdown_signal().await;
        }
        let _ = running.stop.send(true);
        let _ = running.server.await;
        let _ = running.witness.await;
        anyhow::Ok(())
    })?;
    Ok(exit::OK)
}
