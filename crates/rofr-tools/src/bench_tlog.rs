//! `rofr bench tlog`: the broker's benchmark load over HTTP twice, side by side — once
//! with no witness, once with a required witness on loopback — timing how long each
//! checkpoint waits for its cosignature; then C2SP tile serving from the witnessed log.
//! A command, not a test: it prints figures and asserts nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rofr_engine::types::{ProviderId, Timestamp};
use rofr_server::witness::Witness;
use rofr_server::{Broker, Clock, Party};
use rofr_store::Location;

use crate::bench::{one_need_over_http, Connection, Latencies, BENCH_DEAL};

#[derive(Debug, Clone)]
pub struct TlogOptions {
    pub needs: usize,
    pub clients: usize,
    /// Hash-tile requests in the tile run.
    pub tile_requests: usize,
    /// Connections the tile requests are spread over.
    pub connections: usize,
}

/// One load run.
#[derive(Debug)]
pub struct LoadRun {
    pub seconds: f64,
    pub needs_per_second: f64,
    /// Milliseconds from each checkpoint's first sighting to its cosignature, sorted.
    pub delays_ms: Vec<f64>,
    /// The most entries that were not under a witnessed checkpoint at one sample.
    pub max_lag_entries: u64,
    pub checkpoints: usize,
}

/// Requests of one kind of tile.
#[derive(Debug, Default)]
pub struct Served {
    pub requests: usize,
    pub bytes: u64,
    pub seconds: f64,
}

#[derive(Debug)]
pub struct TlogReport {
    pub options: TlogOptions,
    pub plain: LoadRun,
    pub witnessed: LoadRun,
    pub log_size: u64,
    pub level0: Served,
    pub level1: Served,
    pub entries: Served,
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

impl TlogReport {
    pub fn render(&self) -> String {
        let w = &self.witnessed;
        let served = |name: &str, s: &Served| {
            format!(
                "{name:<22} {:>7} requests  {:>9.0} requests/s  {:>8.1} MB/s",
                s.requests,
                s.requests as f64 / s.seconds,
                s.bytes as f64 / s.seconds / 1e6
            )
        };
        [
            format!(
                "load, no witness      {:>9.0} needs/s  ({:.1} s)",
                self.plain.needs_per_second, self.plain.seconds
            ),
            format!(
                "load, one witness     {:>9.0} needs/s  ({:.1} s)  ratio {:.2}",
                w.needs_per_second,
                w.seconds,
                w.needs_per_second / self.plain.needs_per_second
            ),
            format!(
                "witnessing delay      {} checkpoints  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  most entries unwitnessed {}",
                w.checkpoints,
                quantile(&w.delays_ms, 0.5),
                quantile(&w.delays_ms, 0.99),
                w.delays_ms.last().copied().unwrap_or(f64::NAN),
                w.max_lag_entries
            ),
            format!("tiles of a log of {} entries:", self.log_size),
            served("  level-0 hash tiles", &self.level0),
            served("  level-1 hash tiles", &self.level1),
            served("  entry bundles", &self.entries),
        ]
        .join("\n")
    }
}

struct Started {
    broker: Broker,
    address: std::net::SocketAddr,
    buyer: String,
    holder: String,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A broker on a fresh SQLite file in `dir`, served on loopback, with a required
/// witness of its own where `witnessed`.
async fn start(dir: &std::path::Path, witnessed: bool) -> Result<Started, String> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let location = Location::Sqlite(dir.join("tlog.db"));
    let mut deal = BENCH_DEAL.to_owned();
    let mut witness = None;
    if witnessed {
        let w = Witness::open(&dir.join("witness.db"), Some("bench.witness"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let url = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        deal.push_str(&format!(
            "\n[[witness]]\nname = \"bench\"\nkey = \"{}\"\nurl = \"{url}\"\n",
            w.verifier_key()
        ));
        witness = Some((w, listener));
    }
    let broker = Broker::open(
        &location,
        Some(("bench.toml", &deal)),
        Clock::scaled(
            Timestamp::parse("2025-02-03T00:00:00Z").expect("valid"),
            1.0,
        ),
        Some(&dir.join("tlog.ledger-key")),
    )
    .map_err(|e| e.to_string())?;
    if let Some((mut w, listener)) = witness {
        let (origin, key) = broker.ledger(|l| (l.origin().to_owned(), l.verifier_key()));
        w.trust(
            &origin,
            rofr_ledger::VerifierKey::parse(&key).map_err(|e| e.to_string())?,
        );
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(rofr_server::witness::serve(
            Arc::new(w),
            listener,
            async move {
                let _ = stopped.changed().await;
            },
        )));
    }
    let buyer =
        Broker::create_token(&location, &Party::Buyer, "bench").map_err(|e| e.to_string())?;
    let holder_id = ProviderId::parse("holder").expect("valid");
    let holder = Broker::create_token(&location, &Party::Provider(holder_id), "bench")
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let mut stopped = stopped.clone();
    tasks.push(tokio::spawn(rofr_server::serve(
        broker.clone(),
        listener,
        async move {
            let _ = stopped.changed().await;
        },
    )));
    Ok(Started {
        broker,
        address,
        buyer,
        holder,
        stop,
        tasks,
    })
}

/// The benchmark's load over HTTP, with the witnessing sampled every 5 ms.
async fn load(started: &Started, options: &TlogOptions) -> Result<LoadRun, String> {
    let mut connections = Vec::new();
    for _ in 0..options.clients {
        connections.push((
            Connection::open(started.address, &started.buyer).await?,
            Connection::open(started.address, &started.holder).await?,
        ));
    }
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let broker = started.broker.clone();
        let sampling = sampling.clone();
        tokio::spawn(async move {
            // Each checkpoint size as first seen, until the witnessed size reaches it.
            let mut waiting: std::collections::VecDeque<(u64, Instant)> = Default::default();
            let (mut delays, mut most, mut seen) = (Vec::new(), 0u64, 0u64);
            while sampling.load(Ordering::Relaxed) || !waiting.is_empty() {
                let w = broker.witnessing();
                if w.checkpoint_size > seen {
                    seen = w.checkpoint_size;
                    waiting.push_back((seen, Instant::now()));
                }
                while waiting.front().is_some_and(|(s, _)| *s <= w.witnessed_size) {
                    let (_, at) = waiting.pop_front().expect("just seen");
                    delays.push(at.elapsed().as_secs_f64() * 1000.0);
                }
                most = most.max(w.lag_entries);
                if !sampling.load(Ordering::Relaxed) && w.witnesses.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (delays, most)
        })
    };
    let now = Timestamp::parse("2025-02-03T00:00:00Z").expect("valid");
    let began = Instant::now();
    let per_client = options.needs.div_ceil(options.clients);
    let mut tasks = Vec::new();
    for (c, (mut buyer, mut holder)) in connections.into_iter().enumerate() {
        let range = (c * per_client)..((c + 1) * per_client).min(options.needs);
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            for i in range {
                one_need_over_http(&mut buyer, &mut holder, i, now, &mut lat).await;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|e| e.to_string())?;
    }
    let seconds = began.elapsed().as_secs_f64();
    // A last checkpoint of everything, then the sampler waits for its cosignature.
    started.broker.checkpoint_now().map_err(|e| e.to_string())?;
    sampling.store(false, Ordering::Relaxed);
    let (mut delays, most) = tokio::time::timeout(Duration::from_secs(60), sampler)
        .await
        .map_err(|_| "the last checkpoint was not witnessed within a minute".to_owned())?
        .map_err(|e| e.to_string())?;
    delays.sort_by(f64::total_cmp);
    Ok(LoadRun {
        seconds,
        needs_per_second: options.needs as f64 / seconds,
        checkpoints: delays.len(),
        delays_ms: delays,
        max_lag_entries: most,
    })
}

/// GETs `paths` round-robin over `connections` connections.
async fn fetch(
    address: std::net::SocketAddr,
    token: &str,
    paths: Vec<String>,
    connections: usize,
) -> Result<Served, String> {
    let paths = Arc::new(paths);
    let requests = paths.len();
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections.max(1) {
        let mut connection = Connection::open(address, token).await?;
        let paths = paths.clone();
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            for path in paths.iter().skip(c).step_by(connections.max(1)) {
                bytes += connection.get(path).await?.len() as u64;
            }
            Ok::<u64, String>(bytes)
        }));
    }
    let mut bytes = 0;
    for task in tasks {
        bytes += task.await.map_err(|e| e.to_string())??;
    }
    Ok(Served {
        requests,
        bytes,
        seconds: began.elapsed().as_secs_f64(),
    })
}

fn tile_path(level: &str, index: u64) -> String {
    let tile = rofr_ledger::tiles::TilePath {
        kind: match level {
            "entries" => rofr_ledger::tiles::TileKind::Entries,
            l => rofr_ledger::tiles::TileKind::Hashes(l.parse().expect("a level")),
        },
        index,
        width: 256,
    };
    format!("/tlog/{}", tile.path())
}

pub async fn bench_tlog(options: TlogOptions) -> Result<TlogReport, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let plain_dir = dir.path().join("plain");
    let witnessed_dir = dir.path().join("witnessed");
    for d in [&plain_dir, &witnessed_dir] {
        std::fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let plain = start(&plain_dir, false).await?;
    let plain_run = load(&plain, &options).await?;
    let _ = plain.stop.send(true);
    for task in plain.tasks {
        let _ = task.await;
    }
    plain.broker.shutdown();

    let witnessed = start(&witnessed_dir, true).await?;
    let witnessed_run = load(&witnessed, &options).await?;
    let log_size = witnessed
        .broker
        .ledger(|l| l.latest().map_or(0, |(s, _)| *s));
    let full0 = log_size / 256;
    let full1 = log_size / 65_536;
    // `count` requests for tiles of `level`, over the `full` whole ones.
    let serve = |level: &'static str, count: u64, full: u64| {
        let paths: Vec<String> = (0..count.max(1))
            .map(|i| tile_path(level, i % full.max(1)))
            .collect();
        let (address, buyer) = (witnessed.address, witnessed.buyer.clone());
        async move {
            if full == 0 {
                return Ok(Served::default());
            }
            fetch(address, &buyer, paths, options.connections).await
        }
    };
    let requests = options.tile_requests as u64;
    let level0 = serve("0", requests, full0).await?;
    let level1 = serve("1", requests / 16, full1).await?;
    let entries = serve("entries", requests / 4, full0).await?;
    let _ = witnessed.stop.send(true);
    for task in witnessed.tasks {
        let _ = task.await;
    }
    witnessed.broker.shutdown();
    Ok(TlogReport {
        options,
        plain: plain_run,
        witnessed: witnessed_run,
        log_size,
        level0,
        level1,
        entries,
    })
}
