//! Opening a broker: adopting the deal, folding the log into a fresh engine and the
//! ledger's tree, and starting the writer (and, alone on the log, the committer).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::{self};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rofr_engine::deal::{parse_deal, Deal};
use rofr_engine::log::{DealAdopted, Entry};
use rofr_engine::types::Timestamp;
use rofr_engine::Engine;
use rofr_store::{Batch, Location, NewEvent, PostgresStore, SqliteStore, Store};
use tokio::sync::watch;

use crate::clock::Clock;

use super::commit::{Committing, Mode};
use super::party::{TokenCache, TOKEN_RECHECK};
use super::projection::{touch, Touches};
use super::writer::Writer;
use super::{wake, Broker, BrokerError, Counters, DealEntry, Inner, MAX_BATCH};

impl Broker {
    /// Opens the database, adopts `deal_text` (or the deal stored there), rebuilds the
    /// engine from the event log, repairs the projection if it disagrees with the log,
    /// and starts the writer. The ledger's signing key is read from `key` (by default
    /// [`crate::ledger::key_path`]), and made there on the first start.
    pub fn open(
        location: &Location,
        deal_file: Option<(&str, &str)>,
        clock: Clock,
        key: Option<&Path>,
    ) -> Result<Broker, BrokerError> {
        let mut store = location.open()?;
        let (file, text) = match deal_in_log(store.as_ref())? {
            Some(adopted) => same_deal(location, adopted, deal_file)?,
            None => adopt_deal(store.as_mut(), location, deal_file)?,
        };
        let deal = parse_deal(&file, &text).map_err(|errors| {
            let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            BrokerError::Setup(format!("the deal does not parse:\n{}", text.join("\n")))
        })?;
        let deal = Arc::new(deal);

        // Most of the log is read without holding the write lock; what other replicas
        // append meanwhile is folded in under it, below. The log streams through the
        // engine and the ledger's tree an entry at a time: it is never all in memory.
        let key = key.map_or_else(|| crate::ledger::key_path(location), Path::to_owned);
        let mut ledger = crate::ledger::Ledger::open(&key, &deal.name, store.as_mut())?;
        let mut deal_entries = Vec::new();
        let mut index = 0;
        let Folded {
            engine,
            touches,
            size: next_index,
        } = fold_log(
            store.as_ref(),
            &deal,
            None,
            clock.now(),
            None,
            &mut |data| {
                ledger.append_entry(data);
                deal_entries.extend(DealEntry::of(index, data));
                index += 1;
            },
        )?;
        let reader = location.open()?;
        let webhooks = reader
            .webhooks()?
            .into_iter()
            .map(|(provider, _, _)| provider)
            .collect();
        let (sender, receiver) = mpsc::sync_channel(MAX_BATCH * 4);
        let shared = location.shared();
        let inner = Arc::new(Inner {
            engine: RwLock::new(engine),
            jobs: Mutex::new(Some(sender)),
            reader: Mutex::new(reader),
            clock,
            deal,
            deal_text: text,
            counters: Counters::default(),
            tokens: Mutex::new(TokenCache {
                found: HashMap::new(),
                recheck: TOKEN_RECHECK,
            }),
            webhooks: RwLock::new(webhooks),
            ledger: Mutex::new(ledger),
            location: location.clone(),
            shared,
            applied: AtomicU64::new(next_index),
            durable: watch::Sender::new((0, next_index)),
            commit_failed: AtomicBool::new(false),
            fault: RwLock::new(None),
            private_webhooks: AtomicBool::new(false),
            deal_entries: RwLock::new(deal_entries),
            witnessed: watch::Sender::new(0),
            asked: watch::Sender::new(0),
            gathered: Mutex::new(Default::default()),
        });
        // Alone on its log, the broker writes each batch on a thread of its own while
        // the writer runs the next one through the engine.
        let mode = if shared {
            Mode::Shared
        } else {
            Mode::Alone(Committing::start(&inner, location.open()?)?)
        };
        let mut writer = Writer {
            inner: inner.clone(),
            store,
            next_index,
            dirty: Touches::default(),
            last_flush: Instant::now(),
            sweep: Vec::new(),
            settling: Some(touches),
            spare: Vec::new(),
            mode,
            unsettled_keys: HashMap::new(),
            poisoned: false,
            held_replies: Vec::new(),
        };
        if next_index == 0 {
            // A new log begins with the deal it belongs to; settling folds it in.
            let entry = DealAdopted::new(
                &inner.deal.name,
                1,
                &file,
                &inner.deal_text,
                inner.clock.now(),
            );
            start_log(writer.store.as_mut(), &entry)?;
        }
        writer.settle()?;
        // Entry 0 is on disk now, whoever wrote it: kept for evidence and `/v1/deal`.
        if let Some(entry) = deal_entry(writer.store.as_ref())? {
            inner.note_deal_entry(entry.index, &entry.data);
        }
        if !shared {
            if let Location::Sqlite(path) = location {
                // Commits that copy the log into the database file themselves wait
                // for it: a checkpoint of 10,000 pages set the tail of the latency.
                let weak = Arc::downgrade(&inner);
                SqliteStore::spawn_checkpointer(path, move || weak.strong_count() > 0)?;
            }
        }
        if let Location::Postgres(url) = location {
            let weak = Arc::downgrade(&inner);
            PostgresStore::watch(url, Duration::from_secs(1), move || wake(&weak))?;
        }
        std::thread::Builder::new()
            .name("rofr-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| BrokerError::Setup(format!("cannot start the writer thread: {e}")))?;
        Ok(Broker { inner })
    }
}

/// The deal the log adopts, where `deal_file`, if given, is that deal.
fn same_deal(
    location: &Location,
    adopted: (String, String),
    deal_file: Option<(&str, &str)>,
) -> Result<(String, String), BrokerError> {
    match deal_file {
        Some((_, text)) if text != adopted.1 => Err(another_deal(location)),
        _ => Ok(adopted),
    }
}

fn another_deal(location: &Location) -> BrokerError {
    BrokerError::Setup(format!(
        "{location} already holds the log of another deal; a log belongs to one deal (start with a new database, or pass the same deal file)"
    ))
}

/// The deal file's name and text the log belongs to: `deal_file` on a new log (kept
/// there), else the one the log holds. A log belongs to one deal.
fn adopt_deal(
    store: &mut dyn Store,
    location: &Location,
    deal_file: Option<(&str, &str)>,
) -> Result<(String, String), BrokerError> {
    let Some((file, text)) = deal_file else {
        let Some(stored) = store.meta("deal")? else {
            return Err(BrokerError::Setup(format!(
                "{location} holds no deal yet: pass one with --deal"
            )));
        };
        let file = store
            .meta("deal_file")?
            .unwrap_or_else(|| "deal.toml".into());
        return Ok((file, stored));
    };
    let stored = store.init_meta("deal", text)?;
    if stored != text {
        return Err(another_deal(location));
    }
    let file = store.init_meta("deal_file", file)?;
    Ok((file, stored))
}

/// The log folded into a fresh engine, and where each need's events lie.
pub(super) struct Folded {
    pub(super) engine: Engine,
    pub(super) touches: Touches,
    pub(super) size: u64,
}

/// Streams the log (its first `limit` entries, if given) through a fresh engine,
/// handing each entry's bytes to `leaf`: the log is never all in memory. The engine's
/// clock starts at `clock`, or else at the first entry's time (`empty` for an empty
/// log), and moves with the entries. A jump in the indexes or an entry that does not
/// parse is an error naming the entry.
///
/// Two threads share the work: this one reads the log and hands each entry to `leaf`
/// (the ledger hashes it), another parses the entries and folds them into the engine,
/// a chunk at a time. At start this is most of the time to ready, and each half is
/// about as long as the other.
pub(super) fn fold_log(
    store: &dyn Store,
    deal: &Arc<Deal>,
    clock: Option<Timestamp>,
    empty: Timestamp,
    limit: Option<u64>,
    leaf: &mut dyn FnMut(&[u8]),
) -> Result<Folded, BrokerError> {
    // Entries a chunk holds; a few chunks are in flight at once.
    const CHUNK: usize = 1024;
    std::thread::scope(|scope| {
        let (send, receive) = mpsc::sync_channel::<Chunk>(4);
        let folder = std::thread::Builder::new()
            .name("rofr-fold".into())
            .spawn_scoped(scope, move || fold_chunks(&receive, deal, clock))
            .map_err(|e| BrokerError::Setup(format!("cannot start a thread: {e}")))?;
        let mut size = 0u64;
        let mut jump: Option<BrokerError> = None;
        let mut chunk = Chunk::default();
        let mut folder_stopped = false;
        store.scan_log(&mut |index, data, _| {
            if limit.is_some_and(|limit| index >= limit) {
                return false;
            }
            if index != size {
                jump = Some(BrokerError::Setup(format!(
                    "the log jumps from entry {} to entry {index}",
                    size.saturating_sub(1)
                )));
                return false;
            }
            leaf(data);
            chunk.push(index, data);
            size += 1;
            if chunk.ends.len() == CHUNK {
                // The folder stops at an entry that does not parse.
                if send.send(std::mem::take(&mut chunk)).is_err() {
                    folder_stopped = true;
                    return false;
                }
            }
            true
        })?;
        if !folder_stopped && !chunk.ends.is_empty() {
            // As above: an error from the folder is reported below.
            let _ = send.send(chunk);
        }
        drop(send);
        let (engine, touches) = folder
            .join()
            .map_err(|_| BrokerError::Setup("folding the log failed".into()))??;
        // An entry that does not parse comes before any jump the reader saw.
        if let Some(error) = jump {
            return Err(error);
        }
        let engine = engine.unwrap_or_else(|| Engine::new(deal.clone(), clock.unwrap_or(empty)));
        Ok(Folded {
            engine,
            touches,
            size,
        })
    })
}

/// Entries of the log read together: their bytes end to end, and each one's index and
/// where its bytes end.
#[derive(Default)]
pub(super) struct Chunk {
    pub(super) bytes: Vec<u8>,
    pub(super) ends: Vec<(u64, usize)>,
}

impl Chunk {
    pub(super) fn push(&mut self, index: u64, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.ends.push((index, self.bytes.len()));
    }
}

/// [`fold_log`]'s other half: parses the entries of each chunk and folds them into an
/// engine (made at the first entry), noting where each need's events lie. Stops at an
/// entry that does not parse.
pub(super) fn fold_chunks(
    chunks: &mpsc::Receiver<Chunk>,
    deal: &Arc<Deal>,
    clock: Option<Timestamp>,
) -> Result<(Option<Engine>, Touches), BrokerError> {
    let mut engine: Option<Engine> = None;
    let mut touches = Touches::default();
    let mut at = String::new();
    for chunk in chunks {
        let mut start = 0;
        for &(index, end) in &chunk.ends {
            let entry = parse_entry(index, &chunk.bytes[start..end])?;
            start = end;
            if let Entry::Event(event) = &entry {
                at.clear();
                event.at.push_to(&mut at);
                touch(&mut touches, event.need.as_str(), &at, index);
            }
            engine
                .get_or_insert_with(|| Engine::new(deal.clone(), clock.unwrap_or(entry.at())))
                .apply_entry(&entry)
                .map_err(|e| BrokerError::Setup(format!("log entry {index}: {e}")))?;
        }
    }
    Ok((engine, touches))
}

pub(super) fn parse_stored(row: &rofr_store::StoredEvent) -> Result<Entry, BrokerError> {
    parse_entry(row.index, &row.data)
}

pub(super) fn parse_entry(index: u64, data: &[u8]) -> Result<Entry, BrokerError> {
    Entry::from_json(data)
        .map_err(|e| BrokerError::Setup(format!("event {index} in the log does not parse: {e}")))
}

/// The deal the log's first entry adopts, if it is a deal entry, as (file, text). An
/// entry whose text does not match its hash is an error.
fn deal_in_log(store: &dyn Store) -> Result<Option<(String, String)>, BrokerError> {
    Ok(deal_entry(store)?.and_then(|kept| match kept.entry {
        Entry::Deal(adopted) => Some((adopted.file, adopted.text)),
        _ => None,
    }))
}

/// The log's entry 0 where it adopts the deal; `None` for an empty log, or one begun
/// before deals were entries. An entry whose text does not match its hash is an error.
fn deal_entry(store: &dyn Store) -> Result<Option<DealEntry>, BrokerError> {
    let Some(first) = store.events_after(None, 1)?.into_iter().next() else {
        return Ok(None);
    };
    let Entry::Deal(adopted) = parse_stored(&first)? else {
        // A log written before deals were entries: the deal is beside it.
        return Ok(None);
    };
    if !adopted.is_intact() {
        return Err(BrokerError::Setup(format!(
            "entry 0 of the log adopts a deal whose text does not match its SHA-256 {}",
            adopted.sha256
        )));
    }
    Ok(Some(DealEntry {
        index: first.index,
        data: first.data,
        entry: Entry::Deal(adopted),
    }))
}

/// Starts a new log with the entry adopting its deal, inside the write lock (another
/// replica may be starting the same log). Does nothing on a log with entries.
fn start_log(store: &mut dyn Store, entry: &DealAdopted) -> Result<(), BrokerError> {
    store.begin_exclusive()?;
    let started = store
        .events_after(None, 1)
        .map_err(BrokerError::from)
        .and_then(|entries| {
            if !entries.is_empty() {
                return Ok(store.abort()?);
            }
            let data = entry.to_json();
            if data.len() > rofr_ledger::tiles::MAX_ENTRY_BYTES {
                store.abort()?;
                return Err(BrokerError::Setup(format!(
                    "the deal file {} makes a ledger entry of {} bytes; an entry holds at most {} (C2SP tlog-tiles): shorten the file",
                    entry.file,
                    data.len(),
                    rofr_ledger::tiles::MAX_ENTRY_BYTES
                )));
            }
            let batch = Batch {
                events: vec![NewEvent {
                    need: String::new(),
                    kind: "deal_adopted".into(),
                    at: entry.at.to_string(),
                    leaf_hash: rofr_ledger::leaf_hash(&data),
                    data,
                }],
                ..Batch::default()
            };
            store.commit(&batch)?;
            Ok(())
        });
    if started.is_err() {
        let _ = store.abort();
    }
    started
}
