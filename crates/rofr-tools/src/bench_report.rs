//! `rofr bench report`: a log of many needs (each submitted, accepted by the holder and
//! confirmed, in process), its whole period exported to a file, then read by
//! `rofr report`. A command, not a test: it prints figures and asserts nothing.

use std::time::Instant;

use rofr_engine::types::{ProviderId, Timestamp};
use rofr_server::{Broker, Clock};

use crate::bench::{one_need_in_process, Latencies, BENCH_DEAL};

/// A log, its export, and how long each took.
pub struct Exported {
    pub dir: tempfile::TempDir,
    pub export: std::path::PathBuf,
    pub verifier_key: String,
    pub stats: rofr_server::broker::ExportStats,
    pub bytes: u64,
    pub load_seconds: f64,
    pub export_seconds: f64,
}

/// Loads `needs` needs into a fresh SQLite broker with `clients` concurrent callers and
/// exports the whole period.
pub async fn export_of(needs: usize, clients: usize) -> Result<Exported, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = rofr_store::Location::Sqlite(dir.path().join("report.db"));
    let origin = Timestamp::parse("2025-02-03T00:00:00Z").expect("valid");
    let broker = Broker::open(
        &path,
        Some(("bench.toml", BENCH_DEAL)),
        Clock::scaled(origin, 1.0),
        Some(&dir.path().join("report.ledger-key")),
    )
    .map_err(|e| e.to_string())?;
    let holder = ProviderId::parse("holder").expect("valid");
    let started = Instant::now();
    let per_client = needs.div_ceil(clients.max(1));
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let range = (c * per_client)..((c + 1) * per_client).min(needs);
        let broker = broker.clone();
        let holder = holder.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            for i in range {
                one_need_in_process(&broker, &holder, i, origin, &mut lat).await;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())?;
    }
    let load_seconds = started.elapsed().as_secs_f64();
    let export = dir.path().join("export.jsonl");
    let file = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(&export).map_err(|e| e.to_string())?,
    );
    let started = Instant::now();
    let (file, stats) = broker
        .export(
            Timestamp::parse("2025-01-01T00:00:00Z").expect("valid"),
            Timestamp::parse("2026-01-01T00:00:00Z").expect("valid"),
            None,
            file,
        )
        .await
        .map_err(|e| e.to_string())?;
    file.into_inner().map_err(|e| e.to_string())?;
    let export_seconds = started.elapsed().as_secs_f64();
    let verifier_key = broker.ledger(|l| l.verifier_key());
    broker.shutdown();
    let bytes = std::fs::metadata(&export).map_err(|e| e.to_string())?.len();
    Ok(Exported {
        dir,
        export,
        verifier_key,
        stats,
        bytes,
        load_seconds,
        export_seconds,
    })
}
