//! `rofr bench broker`: end-to-end throughput of the broker, in process and over HTTP,
//! beside the raw rate of appending the same event bytes to SQLite with the same
//! commit batching. A command, not a test: it prints figures and asserts nothing.

use std::time::{Duration, Instant};

use rofr_engine::need::NeedSpec;
use rofr_engine::types::{Gpus, NeedId, Price, ProviderId, Sku, Timestamp, Workload};
use rofr_engine::Command;
use rofr_store::Store as _;
use rofr_store::{Batch, Location, NewEvent, ScratchDatabase, SqliteStore};

use rofr_server::{Broker, Clock, Party};

pub const BENCH_DEAL: &str = r#"
[deal]
name = "bench"

[[provider]]
id = "holder"

[[provider]]
id = "alt"

[[first_refusal]]
holder = "holder"
variant = "first_offer"
window = "72h"
partial = true
term = { from = 2025-01-01 }
"#;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub needs: usize,
    pub clients: usize,
    pub http: bool,
    /// A PostgreSQL server (`postgres://…/any-database`) on which each run makes a
    /// fresh database; a fresh SQLite file when `None`.
    pub postgres: Option<String>,
    /// Brokers sharing the database; client `c` talks to replica `c % replicas`.
    pub replicas: usize,
}

#[derive(Debug)]
pub struct BenchReport {
    pub mode: String,
    pub needs: usize,
    pub clients: usize,
    pub seconds: f64,
    pub events: u64,
    pub commits: u64,
    pub latencies: Latencies,
    /// Entries appended raw: every entry of the broker's log.
    pub raw_events: u64,
    pub raw_events_per_second: f64,
    pub resident_mb: Option<f64>,
}

impl BenchReport {
    pub fn render(&self) -> String {
        let pct = |p: f64| self.latencies.quantile(p).as_secs_f64() * 1000.0;
        let events_per_second = self.events as f64 / self.seconds;
        format!(
            "{mode:<16} needs {needs:>8}  clients {clients:>4}  {nps:>9.0} needs/s  {eps:>9.0} events/s  p50 {p50:>7.3} ms  p99 {p99:>7.3} ms  events/commit {epc:>6.1}  raw append {raw:>9.0} events/s  ratio {ratio:.2}  RSS {rss}",
            mode = self.mode,
            needs = self.needs,
            clients = self.clients,
            nps = self.needs as f64 / self.seconds,
            eps = events_per_second,
            p50 = pct(0.5),
            p99 = pct(0.99),
            epc = self.events as f64 / self.commits.max(1) as f64,
            raw = self.raw_events_per_second,
            ratio = events_per_second / self.raw_events_per_second,
            rss = self.resident_mb.map_or("n/a".into(), |m| format!("{m:.0} MB")),
        )
    }
}

/// Latencies counted by size, to within 1/64 of each (exactly below 128 µs), up to
/// about 19 hours (longer ones count as that): 8 KB whatever the number of commands,
/// so that the resident memory the run reports is the broker's, not a list of three
/// million durations (nor, with a client each, 512 lists of counts: at 30 KB each,
/// when counts were 64-bit and went up to 2^64 µs, they took 15 MB).
#[derive(Debug, Clone)]
pub struct Latencies {
    /// Commands by bucket: fewer than 2^32 in any one.
    counts: Vec<u32>,
    total: u64,
}

/// Bucket `0..128` holds that many microseconds; above, 64 buckets per power of two.
const EXACT: u64 = 128;

/// The longest latency told apart from longer ones, in microseconds (2^36 - 1).
const LONGEST: u64 = (1 << 36) - 1;

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            counts: vec![0; Latencies::index(LONGEST) + 1],
            total: 0,
        }
    }
}

impl Latencies {
    fn index(micros: u64) -> usize {
        if micros < EXACT {
            return micros as usize;
        }
        let power = 63 - u64::from(micros.leading_zeros());
        let sub = (micros >> (power - 6)) & 63;
        (EXACT + (power - 7) * 64 + sub) as usize
    }

    /// The smallest and largest microseconds bucket `index` holds.
    fn bounds(index: usize) -> (u64, u64) {
        let index = index as u64;
        if index < EXACT {
            return (index, index);
        }
        let power = (index - EXACT) / 64 + 7;
        let sub = (index - EXACT) % 64;
        let low = (64 + sub) << (power - 6);
        (low, low + ((1u64 << (power - 6)) - 1))
    }

    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).map_or(LONGEST, |m| m.min(LONGEST));
        let count = &mut self.counts[Latencies::index(micros)];
        *count = count
            .checked_add(1)
            .expect("fewer than 2^32 commands a bucket");
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Latencies) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine = mine
                .checked_add(*theirs)
                .expect("fewer than 2^32 commands a bucket");
        }
        self.total += other.total;
    }

    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The latency below which the fraction `p` of commands fell (the middle of its
    /// bucket); zero when nothing was recorded.
    pub fn quantile(&self, p: f64) -> Duration {
        if self.total == 0 {
            return Duration::ZERO;
        }
        let rank = ((self.total - 1) as f64 * p.clamp(0.0, 1.0)) as u64;
        let mut seen = 0u64;
        for (index, count) in self.counts.iter().enumerate() {
            seen += u64::from(*count);
            if seen > rank {
                let (low, high) = Latencies::bounds(index);
                return Duration::from_micros(low + (high - low) / 2);
            }
        }
        unreachable!("the counts sum to the total")
    }
}

/// The benchmark's need number `i`: 8 H100s for a day, starting tomorrow.
pub fn spec(i: usize, now: Timestamp) -> NeedSpec {
    NeedSpec {
        id: NeedId::parse(&format!("b{i:08}")).expect("valid"),
        sku: Sku::parse("H100").expect("valid"),
        gpus: Gpus(8),
        regions: Default::default(),
        earliest_start: now.plus_seconds(86_400),
        latest_start: now.plus_seconds(30 * 86_400),
        hours: 24,
        workload: Workload::parse("training").expect("valid"),
        tags: Default::default(),
        max_price_per_gpu_hour: Price::from_dollars(8.0).expect("valid"),
        offer_price_per_gpu_hour: None,
        priority: 0,
        launch: None,
        decide_by: now.plus_seconds(20 * 86_400),
    }
}

/// Resident memory of this process, from /proc (Linux only).
pub fn resident_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// One need's whole life with instant answers: submit, the holder accepts, confirms.
pub(crate) async fn one_need_in_process(
    broker: &Broker,
    holder: &ProviderId,
    i: usize,
    now: Timestamp,
    lat: &mut Latencies,
) {
    let need = spec(i, now);
    let id = need.id.clone();
    let commands = [
        (Party::Buyer, Command::SubmitNeed { need }),
        (
            Party::Provider(holder.clone()),
            Command::Accept {
                provider: holder.clone(),
                need: id.clone(),
                offer: None,
                gpus: None,
                price: None,
            },
        ),
        (
            Party::Provider(holder.clone()),
            Command::Confirm {
                provider: holder.clone(),
                need: id,
                award: 1,
                reservation: "r".into(),
            },
        ),
    ];
    for (party, command) in commands {
        let started = Instant::now();
        broker
            .execute(party, command, None)
            .await
            .expect("bench commands are valid");
        lat.record(started.elapsed());
    }
}

pub(crate) async fn one_need_over_http(
    buyer: &mut Connection,
    holder: &mut Connection,
    i: usize,
    now: Timestamp,
    lat: &mut Latencies,
) {
    let need = spec(i, now);
    let id = need.id.clone();
    let need = serde_json::to_vec(&need).expect("serializes");
    let steps = [
        ("/v1/needs".to_owned(), need),
        (format!("/v1/needs/{id}/accept"), b"{}".to_vec()),
        (
            format!("/v1/needs/{id}/awards/1/confirm"),
            br#"{"reservation":"r"}"#.to_vec(),
        ),
    ];
    for (step, (path, body)) in steps.into_iter().enumerate() {
        let connection = if step == 0 { &mut *buyer } else { &mut *holder };
        let started = Instant::now();
        if let Err(error) = connection.post(&path, &body).await {
            panic!("bench requests succeed: {error}");
        }
        lat.record(started.elapsed());
    }
}

/// One keep-alive HTTP/1.1 connection speaking for one party, driven by the client's
/// own task. The benchmark's clients share the machine with the broker, so each request
/// costs them one write and, mostly, one read: through `reqwest` (its pool, URL parsing
/// and timers) they took nearly half the CPU of a run, and through hyper's client
/// connections, each a task of its own fed by a channel, about a third.
pub(crate) struct Connection {
    stream: tokio::net::TcpStream,
    /// The headers every request of this connection carries.
    headers: String,
    /// The request being sent, and the answer being read: kept for their buffers.
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Connection {
    pub(crate) async fn open(
        address: std::net::SocketAddr,
        token: &str,
    ) -> Result<Connection, String> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Connection {
            stream,
            headers: format!(
                "Host: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            ),
            request: Vec::with_capacity(1024),
            answer: Vec::with_capacity(4096),
        })
    }

    /// POSTs `body` as JSON and reads the whole answer; an answer other than 2xx is an
    /// error carrying its body.
    pub(crate) async fn post(&mut self, path: &str, body: &[u8]) -> Result<(), String> {
        self.send("POST", path, body).await.map(|_| ())
    }

    /// GETs `path` and returns the answer's body.
    pub(crate) async fn get(&mut self, path: &str) -> Result<&[u8], String> {
        self.send("GET", path, &[]).await
    }

    async fn send(&mut self, method: &str, path: &str, body: &[u8]) -> Result<&[u8], String> {
        use std::io::Write as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\n{}Content-Length: {}\r\n\r\n",
            self.headers,
            body.len()
        )
        .expect("writes to a vector");
        self.request.extend_from_slice(body);
        self.stream
            .write_all(&self.request)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        self.answer.clear();
        loop {
            if let Some((status, head, length)) = answer_head(&self.answer, path)? {
                let end = head + length;
                if self.answer.len() > end {
                    return Err(format!(
                        "{method} {path}: more bytes than the answer's length"
                    ));
                }
                if self.answer.len() == end {
                    if !(200..300).contains(&status) {
                        let body = String::from_utf8_lossy(&self.answer[head..]);
                        return Err(format!("{method} {path}: {status} {body}"));
                    }
                    return Ok(&self.answer[head..]);
                }
            }
            let read = self
                .stream
                .read_buf(&mut self.answer)
                .await
                .map_err(|e| format!("{method} {path}: {e}"))?;
            if read == 0 {
                return Err(format!("{method} {path}: the server closed the connection"));
            }
        }
    }
}

/// The status, head length and body length of an HTTP/1.1 answer, once its head is
/// whole; the body's length must be given by `Content-Length`.
fn answer_head(bytes: &[u8], path: &str) -> Result<Option<(u16, usize, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(bytes) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(format!("POST {path}: unreadable answer: {error}")),
    };
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .ok_or_else(|| format!("POST {path}: an answer without a Content-Length"))?;
    Ok(Some((response.code.unwrap_or(0), head, length)))
}

/// A fresh database named `name`: a SQLite file in `dir`, or a scratch PostgreSQL
/// database (dropped with the second value) on the server the options name.
fn fresh_database(
    options: &BenchOptions,
    dir: &std::path::Path,
    name: &str,
) -> Result<(Location, Option<ScratchDatabase>), String> {
    Ok(match &options.postgres {
        Some(server) => {
            let scratch = ScratchDatabase::create(server, &format!("rofr_{name}"))
                .map_err(|e| e.to_string())?;
            (scratch.location(), Some(scratch))
        }
        None => (Location::Sqlite(dir.join(format!("{name}.db"))), None),
    })
}

pub async fn bench_broker(options: BenchOptions) -> Result<BenchReport, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (path, _scratch) = fresh_database(&options, dir.path(), "bench")?;
    let key = dir.path().join("bench.ledger-key");
    let origin = Timestamp::parse("2025-02-03T00:00:00Z").expect("valid");
    let mut brokers = Vec::new();
    for _ in 0..options.replicas.max(1) {
        brokers.push(
            Broker::open(
                &path,
                Some(("bench.toml", BENCH_DEAL)),
                Clock::scaled(origin, 1.0),
                Some(&key),
            )
            .map_err(|e| e.to_string())?,
        );
    }
    let holder = ProviderId::parse("holder").expect("valid");
    let now = origin;

    // The servers stop (and with them their webhook senders) when the run ends.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers = Vec::new();
    let (addresses, buyer_token, holder_token) = if options.http {
        let buyer =
            Broker::create_token(&path, &Party::Buyer, "bench").map_err(|e| e.to_string())?;
        let holder_token = Broker::create_token(&path, &Party::Provider(holder.clone()), "bench")
            .map_err(|e| e.to_string())?;
        let mut addresses = Vec::new();
        for broker in &brokers {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            addresses.push(listener.local_addr().map_err(|e| e.to_string())?);
            let mut stopped = stopped.clone();
            servers.push(tokio::spawn(rofr_server::serve(
                broker.clone(),
                listener,
                async move {
                    let _ = stopped.changed().await;
                },
            )));
        }
        (addresses, buyer, holder_token)
    } else {
        Default::default()
    };

    // Each client's connections, a buyer's and the holder's, are open before the clock
    // starts.
    let mut connections = Vec::new();
    for c in 0..options.clients {
        connections.push(if options.http {
            let address = addresses[c % addresses.len()];
            Some((
                Connection::open(address, &buyer_token).await?,
                Connection::open(address, &holder_token).await?,
            ))
        } else {
            None
        });
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    let per_client = options.needs.div_ceil(options.clients);
    for (c, mut connections) in connections.into_iter().enumerate() {
        let range = (c * per_client)..((c + 1) * per_client).min(options.needs);
        let broker = brokers[c % brokers.len()].clone();
        let holder = holder.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            for i in range {
                match &mut connections {
                    Some((buyer, holder)) => {
                        one_need_over_http(buyer, holder, i, now, &mut lat).await
                    }
                    None => one_need_in_process(&broker, &holder, i, now, &mut lat).await,
                }
            }
            lat
        }));
    }
    let mut latencies = Latencies::default();
    for task in tasks {
        latencies.merge(&task.await.map_err(|e| e.to_string())?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let load = |f: fn(&rofr_server::broker::Counters) -> &std::sync::atomic::AtomicU64| {
        brokers
            .iter()
            .map(|b| f(b.counters()).load(std::sync::atomic::Ordering::Relaxed))
            .sum::<u64>()
    };
    let events = load(|c| &c.events_appended);
    let commits = load(|c| &c.commits);
    let resident = resident_mb();
    let _ = stop.send(true);
    for server in servers {
        let _ = server.await;
    }
    for broker in &brokers {
        broker.shutdown();
    }

    // The same bytes, appended raw with the same number of events per commit, to the
    // same kind of database. They are read a commit's worth at a time (a million needs
    // make six million entries: held whole, with their copies, they took 5 GB), and only
    // the commits are timed.
    drop(brokers);
    let per_commit = (events as f64 / commits.max(1) as f64).round().max(1.0) as usize;
    let source = path.open().map_err(|e| e.to_string())?;
    let (raw_location, _raw_scratch) = fresh_database(&options, dir.path(), "raw")?;
    let mut raw = raw_location.open().map_err(|e| e.to_string())?;
    let mut appending = Duration::ZERO;
    let mut appended = 0usize;
    let mut after = None;
    loop {
        let stored = source
            .events_after(after, u32::try_from(per_commit).unwrap_or(u32::MAX))
            .map_err(|e| e.to_string())?;
        let Some(last) = stored.last() else {
            break;
        };
        after = Some(last.index);
        let batch = Batch {
            events: stored
                .into_iter()
                // The deal's entry, written as the log began, is no command's event.
                .filter(|e| !e.need.is_empty())
                .map(|e| NewEvent {
                    leaf_hash: rofr_ledger::leaf_hash(&e.data),
                    need: e.need,
                    kind: e.kind,
                    at: e.at,
                    data: e.data,
                })
                .collect(),
            ..Batch::default()
        };
        appended += batch.events.len();
        let started = Instant::now();
        raw.commit(&batch).map_err(|e| e.to_string())?;
        appending += started.elapsed();
    }
    let raw_events_per_second = appended as f64 / appending.as_secs_f64();

    drop(raw);
    let mut mode = if options.http { "http" } else { "in-process" }.to_owned();
    if options.postgres.is_some() {
        mode.push_str(&format!(" pg x{}", options.replicas.max(1)));
    }
    Ok(BenchReport {
        mode,
        needs: options.needs,
        clients: options.clients,
        seconds,
        events,
        commits,
        latencies,
        raw_events: appended as u64,
        raw_events_per_second,
        resident_mb: resident,
    })
}

/// What `rofr bench ledger` measured.
#[derive(Debug)]
pub struct LedgerReport {
    pub entries: u64,
    pub bytes: u64,
    pub raw_sha256_mb_s: f64,
    pub appends_per_second: f64,
    pub proofs_per_second: f64,
    pub audit_seconds: f64,
    pub audit_mb_s: f64,
    pub audit_ok: bool,
}

impl LedgerReport {
    pub fn render(&self) -> String {
        format!(
            "entries {}  bytes {:.1} MB\n  raw SHA-256           {:>10.1} MB/s\n  tree appends          {:>10.0} entries/s\n  inclusion proofs      {:>10.0} proofs/s (made and verified, size {})\n  full audit            {:>10.2} s = {:.1} MB/s, {:.2} of raw SHA-256 ({})",
            self.entries,
            self.bytes as f64 / 1e6,
            self.raw_sha256_mb_s,
            self.appends_per_second,
            self.proofs_per_second,
            self.entries,
            self.audit_seconds,
            self.audit_mb_s,
            self.audit_mb_s / self.raw_sha256_mb_s,
            if self.audit_ok { "ok" } else { "FAILED" },
        )
    }
}

/// Event-sized entries (about 300 bytes of JSON each), deterministic.
fn synthetic_entries(count: u64) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            format!(
                r#"{{"type":"offer_sent","provider":"azure","gpus":{},"price_per_gpu_hour":6.98,"deadline":"2025-02-06T00:00:00Z","variant":"first_offer","offer":1,"need":"need-{i:08}","at":"2025-02-03T00:00:00Z","padding":"{}"}}"#,
                8 + i % 1024,
                "x".repeat(90)
            )
            .into_bytes()
        })
        .collect()
}

/// Tree appends, proofs, and a full audit of a stored log of `entries` entries, each
/// beside the raw SHA-256 rate over the same bytes.
pub fn bench_ledger(entries: u64) -> Result<LedgerReport, String> {
    use rofr_ledger::{leaf_hash, verify_inclusion, MerkleTree};

    let data = synthetic_entries(entries);
    let bytes: u64 = data.iter().map(|d| d.len() as u64).sum();

    let started = Instant::now();
    let mut sink = 0u8;
    for d in &data {
        sink ^= leaf_hash(d)[0];
    }
    let raw_seconds = started.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    let raw_sha256_mb_s = bytes as f64 / 1e6 / raw_seconds;

    let started = Instant::now();
    let mut tree = MerkleTree::new();
    for d in &data {
        tree.append(d);
    }
    let appends_per_second = entries as f64 / started.elapsed().as_secs_f64();

    let root = tree.root(entries).expect("whole tree");
    let proofs = 100_000u64.min(entries * 4);
    let started = Instant::now();
    for i in 0..proofs {
        let index = (i * 7_919) % entries;
        let proof = tree.inclusion_proof(index, entries).expect("in range");
        let leaf = *tree.leaf(index).expect("in range");
        assert!(
            verify_inclusion(index, entries, &leaf, &proof, &root),
            "a proof failed to verify"
        );
    }
    let proofs_per_second = proofs as f64 / started.elapsed().as_secs_f64();

    // A stored log of the same entries with one checkpoint, audited from disk.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("ledger.db");
    let mut store = SqliteStore::open(&path).map_err(|e| e.to_string())?;
    for chunk in data.chunks(10_000) {
        let batch = Batch {
            events: chunk
                .iter()
                .map(|d| NewEvent {
                    need: "bench".into(),
                    kind: "offer_sent".into(),
                    at: "2025-02-03T00:00:00Z".into(),
                    leaf_hash: leaf_hash(d),
                    data: d.clone(),
                })
                .collect(),
            ..Batch::default()
        };
        store.commit(&batch).map_err(|e| e.to_string())?;
    }
    let key = rofr_ledger::SigningKey::from_seed("bench", &[1; 32]).expect("valid name");
    let body = rofr_ledger::Checkpoint {
        origin: "rofr.bench/log".into(),
        size: entries,
        root,
    }
    .body();
    store
        .add_checkpoint(entries, &key.sign(&body).expect("ends in newline"), "bench")
        .map_err(|e| e.to_string())?;
    drop(store);
    let verifier = rofr_ledger::VerifierKey::parse(&key.verifier_key()).expect("own key");
    let started = Instant::now();
    let audit = rofr_server::ledger::audit(&Location::Sqlite(path), &verifier)
        .map_err(|e| e.to_string())?;
    let audit_seconds = started.elapsed().as_secs_f64();
    Ok(LedgerReport {
        entries,
        bytes,
        raw_sha256_mb_s,
        appends_per_second,
        proofs_per_second,
        audit_seconds,
        audit_mb_s: bytes as f64 / 1e6 / audit_seconds,
        audit_ok: audit.problem.is_none() && audit.entries == entries,
    })
}

/// A seeded allocation instance: `needs` needs over `pools` pools of a quarter as many
/// providers (at least two), with `caps` providers capped.
pub fn generate_instance(
    seed: u64,
    needs: usize,
    pools: usize,
    caps: usize,
) -> rofr_solver::Instance {
    generate_with_providers(seed, needs, pools, (pools / 4).max(2), caps)
}

/// [`generate_instance`] with at least two providers more than caps, so that the
/// capped providers' usage from before is a small share and the caps bind on what is
/// placed, not on the past.
pub fn generate_capped(
    seed: u64,
    needs: usize,
    pools: usize,
    caps: usize,
) -> rofr_solver::Instance {
    generate_with_providers(seed, needs, pools, (pools / 4).max(caps + 2), caps)
}

fn generate_with_providers(
    seed: u64,
    needs: usize,
    pools: usize,
    providers: usize,
    caps: usize,
) -> rofr_solver::Instance {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let pool_list: Vec<rofr_solver::Pool> = (0..pools)
        .map(|p| rofr_solver::Pool {
            id: format!("p{p}"),
            provider: format!("c{}", p % providers),
            gpus: [256u64, 512, 1024, 2048][rng.random_range(0..4)],
            price_per_gpu_hour: (rng.random_range(250..700) as f64) / 100.0,
        })
        .collect();
    let need_list: Vec<rofr_solver::Need> = (0..needs)
        .map(|n| {
            let unit = [1u64, 4, 8][rng.random_range(0..3)];
            let k = rng.random_range(2..6).min(pools);
            let mut chosen: Vec<String> = Vec::new();
            while chosen.len() < k {
                let p = format!("p{}", rng.random_range(0..pools));
                if !chosen.contains(&p) {
                    chosen.push(p);
                }
            }
            rofr_solver::Need {
                id: format!("n{n}"),
                gpus: unit * rng.random_range(1..32),
                hours: rng.random_range(24..720) as f64,
                unit,
                shortfall_penalty: (rng.random_range(500..1500) as f64) / 100.0,
                pools: chosen,
            }
        })
        .collect();
    let capped = caps.min(providers);
    let cap_list = (0..capped)
        .map(|c| rofr_solver::Cap {
            provider: format!("c{c}"),
            max_share: 0.15 + 0.05 * (c % 4) as f64,
        })
        .collect();
    // Usage from before: small at the capped providers, so that the bases alone keep
    // every cap.
    let base = (0..providers)
        .map(|c| (format!("c{c}"), if c < capped { 1_000.0 } else { 10_000.0 }))
        .collect();
    rofr_solver::Instance {
        needs: need_list,
        pools: pool_list,
        caps: cap_list,
        base_gpu_hours: base,
    }
}

/// One row of `rofr bench solve`.
pub fn bench_solve_row(needs: usize, pools: usize, caps: usize, limit: Duration) -> String {
    let instance = generate_instance(42, needs, pools, caps);
    instance.validate().expect("generated instances are valid");
    let started = Instant::now();
    let relaxed = rofr_solver::relaxation_bound(&instance);
    let relax_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let solved = rofr_solver::exact(&instance, Some(limit));
    let seconds = started.elapsed().as_secs_f64();
    let ordered = rofr_solver::baseline(&instance, rofr_solver::Strategy::Ordered);
    let greedy = rofr_solver::baseline(&instance, rofr_solver::Strategy::CheapestFirst);
    let shortfall = |s: &rofr_solver::Solution| s.shortfall.iter().map(|x| x.gpus).sum::<u64>();
    let show = |r: &Result<rofr_solver::Solution, rofr_solver::Infeasible>| match r {
        Ok(s) => format!("{:>14.0} ({:>5} short)", s.cost, shortfall(s)),
        Err(_) => format!("{:>28}", "no answer"),
    };
    match &solved {
        Ok(s) => format!(
            "{needs:>6} x {pools:<4} caps {caps:<2} {:>8} {seconds:>7.2} s  cost {:>14.0}  relaxation {} ({relax_seconds:.2} s) gap {}  | ordered {} | cheapest-first {}",
            s.status,
            s.cost,
            relaxed.map_or("none".to_owned(), |r| format!("{r:.0}")),
            relaxed.map_or("?".to_owned(), |r| format!("{:.3}%", (s.cost - r) / s.cost.abs().max(1.0) * 100.0)),
            show(&ordered),
            show(&greedy)
        ),
        Err(e) => format!("{needs:>6} x {pools:<4} caps {caps:<2} failed after {seconds:.2} s: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small run in process: every command is answered and timed, and every entry of
    /// the log is appended again raw.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_times_every_command_and_appends_the_whole_log_raw() {
        for (http, mode) in [(false, "in-process "), (true, "http ")] {
            let report = bench_broker(BenchOptions {
                needs: 300,
                clients: 8,
                http,
                postgres: None,
                replicas: 1,
            })
            .await
            .unwrap();
            assert_eq!(report.latencies.len(), 900, "three commands a need");
            // Submitted (with the first offer), accepted (award), confirmed (fulfilled).
            assert!(report.events >= 6 * 300, "{} events", report.events);
            assert_eq!(report.raw_events, report.events);
            assert!(report.raw_events_per_second.is_finite() && report.raw_events_per_second > 0.0);
            assert!(report.render().starts_with(mode), "{}", report.render());
        }
    }

    #[test]
    fn an_answer_is_whole_once_its_head_and_content_length_have_arrived() {
        let answer = b"HTTP/1.1 409 Conflict\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"error\":1}";
        let head = answer.len() - 11;
        assert_eq!(answer_head(&answer[..head - 1], "/p"), Ok(None));
        assert_eq!(answer_head(answer, "/p"), Ok(Some((409, head, 11))));
        assert_eq!(
            answer_head(&answer[..head], "/p"),
            Ok(Some((409, head, 11)))
        );
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        let error = answer_head(chunked, "/p").unwrap_err();
        assert!(error.contains("without a Content-Length"), "{error}");
        assert!(answer_head(b"SMTP hello\r\n\r\n", "/p").is_err());
    }

    /// Over HTTP, a command the broker refuses reaches the client as an error carrying
    /// the broker's answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_request_is_an_error_with_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = Location::Sqlite(dir.path().join("refused.db"));
        let origin = Timestamp::parse("2025-02-03T00:00:00Z").unwrap();
        let broker = Broker::open(
            &path,
            Some(("bench.toml", BENCH_DEAL)),
            Clock::scaled(origin, 1.0),
            Some(&dir.path().join("refused.ledger-key")),
        )
        .unwrap();
        let token = Broker::create_token(&path, &Party::Buyer, "bench").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(rofr_server::serve(broker, listener, std::future::pending()));
        let mut connection = Connection::open(address, &token).await.unwrap();
        let need = serde_json::to_vec(&spec(1, origin)).unwrap();
        connection.post("/v1/needs", &need).await.unwrap();
        let error = connection.post("/v1/needs", &need).await.unwrap_err();
        assert!(error.starts_with("POST /v1/needs: 409"), "{error}");
        // The connection is still good for the next request.
        let other = serde_json::to_vec(&spec(2, origin)).unwrap();
        connection.post("/v1/needs", &other).await.unwrap();
    }

    #[test]
    fn latency_quantiles_fall_within_a_sixty_fourth_of_the_sorted_list() {
        let mut latencies = Latencies::default();
        let mut sorted = Vec::new();
        // Spread over six orders of magnitude, with repeats.
        let mut x: u64 = 12_345;
        for _ in 0..20_000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let micros = ((x >> 40) % 1_000_000) >> ((x >> 20) % 14);
            latencies.record(Duration::from_micros(micros));
            sorted.push(micros);
        }
        sorted.sort_unstable();
        assert_eq!(latencies.len(), 20_000);
        for p in [0.0, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let exact = sorted[((sorted.len() - 1) as f64 * p) as usize] as f64;
            let got = latencies.quantile(p).as_micros() as f64;
            assert!(
                (got - exact).abs() <= exact / 64.0 + 0.5,
                "p{p}: {got} µs against {exact} µs"
            );
        }
        for micros in [0u64, 1, 127, 128, 129, 255, 256, 1_000_000, u64::MAX] {
            let (low, high) = Latencies::bounds(Latencies::index(micros));
            assert!(
                low <= micros && micros <= high,
                "{micros} outside {low}..={high}"
            );
        }
        assert_eq!(Latencies::default().quantile(0.5), Duration::ZERO);
        // Beyond the longest told apart: counted as the longest.
        let mut long = Latencies::default();
        long.record(Duration::from_secs(365 * 86_400));
        let (low, high) = Latencies::bounds(Latencies::index(LONGEST));
        let got = long.quantile(0.5).as_micros() as u64;
        assert!(low <= got && got <= high, "{got} outside {low}..={high}");
    }
}
