//! The broker: the engine behind one writer thread that turns commands into durable
//! events. Commands queue up; the writer takes every command waiting, runs them
//! through the engine, writes all their events in one transaction (group commit), and
//! only then answers. Between batches it sleeps until the next deadline, so deadlines
//! fire on time, and a deadline that passed while the broker was down fires at start,
//! as of its own time. Alone on its log, the broker writes each batch on a committer
//! thread while the writer runs the next one through the engine; answers, and reads of
//! the engine's state, wait until what they rest on is on disk.
//!
//! Several brokers (replicas) may share one PostgreSQL database. Each writes inside the
//! store's exclusive transaction: it first folds in what the others committed (so its
//! engine decides on the whole log), then appends after the last entry. A deadline is
//! therefore fired by whichever replica reaches it first, and the others find it fired
//! when they catch up. Replicas catch up when a commit notifies them, at the latest
//! every second, and before answering a read that the engine serves.

mod amend;
mod answer;
mod commit;
#[cfg(test)]
mod crash_tests;
mod evidence;
mod export;
mod fail;
mod hooks;
mod open;
mod party;
mod projection;
pub mod witnessing;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self};
use std::sync::Weak;
use std::sync::{Arc, Mutex, RwLock};

use rofr_engine::deal::Deal;
use rofr_engine::{Command, Engine, Rejection};
use rofr_store::{Location, Store, StoreError};
use tokio::sync::{oneshot, watch};

use crate::clock::Clock;
#[allow(unused_imports)]
pub use amend::{AmendmentPlan, Refusal};
pub use answer::{raw_json, IndexedEvent};
pub use evidence::{DealVersion, DealVersions};
pub use export::ExportStats;
use party::TokenCache;
pub use party::{token_hash, token_id, Party, TOKEN_RECHECK};

/// An `Idempotency-Key` and the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

/// What an accepted command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It submitted a need.
    Created,
    /// It acted on a need already there.
    Applied,
}

impl Outcome {
    fn of(command: &Command) -> Outcome {
        match command {
            Command::SubmitNeed { .. } | Command::AmendDeal { .. } => Outcome::Created,
            _ => Outcome::Applied,
        }
    }

    /// How an idempotent answer keeps its outcome: as the HTTP status it was first
    /// answered with (the store's format), which the API derives from the outcome.
    pub(crate) fn stored(self) -> u16 {
        match self {
            Outcome::Created => 201,
            Outcome::Applied => 200,
        }
    }

    fn from_stored(status: u16) -> Outcome {
        if status == Outcome::Created.stored() {
            Outcome::Created
        } else {
            Outcome::Applied
        }
    }
}

/// The answer to an accepted command: what it did and its need's new events as JSON,
/// exactly as first given (a retry with the same key gets the same bytes back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub outcome: Outcome,
    pub body: String,
    pub replayed: bool,
}

impl Answer {
    /// What a flush is answered with once the rows it waited for are on disk.
    fn flushed() -> Answer {
        Answer {
            outcome: Outcome::Applied,
            body: String::new(),
            replayed: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the Idempotency-Key `{0}` was already used for a different request")]
    KeyReused(String),
    // Not a `source`: the message already says it, and error chains would repeat it.
    #[error("storage failed: {0}")]
    Store(StoreError),
    #[error("{0}")]
    Setup(String),
    #[error("the broker is shutting down")]
    Stopped,
    /// An entry the command would write is larger than a ledger entry may be.
    #[error("the command would write a ledger entry of {0} bytes; an entry holds at most 65535 (C2SP tlog-tiles entry bundles): nothing was written")]
    EntryTooLarge(usize),
    /// The command failed where it should not have (a defect): it was refused alone,
    /// nothing of it was written, and the broker goes on.
    #[error("the command failed inside the broker; nothing of it was written")]
    Failed,
}

/// Called with each command right after the engine has applied it and before its
/// events are staged: a test panics here to stand for a defect in the engine.
pub type FaultHook = Arc<dyn Fn(&Command) + Send + Sync>;

type ReplyTo = oneshot::Sender<Result<Answer, BrokerError>>;

struct Job {
    party: Party,
    command: Command,
    idempotency: Option<Idempotency>,
    reply: ReplyTo,
}

/// What the writer thread is asked to do. Commands travel unboxed: they are nearly all
/// of the traffic, and the small variants are rare.
#[allow(clippy::large_enum_variant)]
enum Work {
    Job(Job),
    /// Fold in what other replicas committed, then answer.
    Sync(oneshot::Sender<()>),
    /// Another replica committed: fold it in.
    Wake,
    /// Write the needs projection up to every command acknowledged so far, then answer.
    Flush(ReplyTo),
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub commands_accepted: AtomicU64,
    pub commands_rejected: AtomicU64,
    pub idempotent_replays: AtomicU64,
    pub events_appended: AtomicU64,
    /// Events other replicas appended, folded into this one's engine.
    pub events_caught_up: AtomicU64,
    pub commits: AtomicU64,
}

struct Inner {
    engine: RwLock<Engine>,
    jobs: Mutex<Option<mpsc::SyncSender<Work>>>,
    reader: Mutex<Box<dyn Store>>,
    clock: Clock,
    deal: Arc<Deal>,
    deal_text: String,
    counters: Counters,
    /// Tokens found in the store, and how long they are trusted.
    tokens: Mutex<TokenCache>,
    ledger: Mutex<crate::ledger::Ledger>,
    /// Providers with a webhook: their events get a delivery queued.
    webhooks: RwLock<std::collections::BTreeSet<String>>,
    location: Location,
    /// Whether other replicas may append to the same log.
    shared: bool,
    /// The log's size as of the engine's state. Alone on its log, the engine runs up to
    /// two batches ahead of the disk while the committer writes.
    applied: AtomicU64,
    /// (epoch, the log's size on disk). Answers drawn from the engine wait until what
    /// they saw is on disk; the epoch changes when the engine is reloaded after a
    /// failed commit, and a read made before that is made again.
    durable: watch::Sender<(u64, u64)>,
    /// Set by the committer when a commit failed; the writer then reloads the engine.
    commit_failed: AtomicBool,
    /// See [`Broker::inject_fault`].
    fault: RwLock<Option<FaultHook>>,
    /// See [`Broker::allow_private_webhooks`].
    private_webhooks: AtomicBool,
    /// The log's deal entries, oldest first: the adoption (none for a log begun before
    /// deals were entries), then each amendment. Read at start and kept as they are
    /// written or folded in.
    deal_entries: RwLock<Vec<DealEntry>>,
    /// The size of the latest witnessed checkpoint (0: none).
    witnessed: watch::Sender<u64>,
    /// The size of the checkpoint the last round of witnessing took to the witnesses,
    /// whatever they answered.
    asked: watch::Sender<u64>,
    /// Where each witness stands.
    gathered: Mutex<witnessing::Gathered>,
}

/// A deal entry: where it is, its bytes exactly as stored, and what they say.
struct DealEntry {
    index: u64,
    data: Vec<u8>,
    entry: rofr_engine::log::Entry,
}

impl DealEntry {
    /// `data` at `index`, where it is a deal entry.
    fn of(index: u64, data: &[u8]) -> Option<DealEntry> {
        // Deal entries are rare: most entries are passed by on their first bytes.
        let deal = data.starts_with(b"{\"type\":\"deal_");
        let entry = deal
            .then(|| rofr_engine::log::Entry::from_json(data).ok())
            .flatten()
            .filter(|e| e.version().is_some())?;
        Some(DealEntry {
            index,
            data: data.to_vec(),
            entry,
        })
    }

    fn version(&self) -> rofr_engine::log::Version<'_> {
        self.entry.version().expect("only deal entries are kept")
    }
}

impl Inner {
    /// Keeps `data` at `index` if it is a deal entry not kept yet.
    fn note_deal_entry(&self, index: u64, data: &[u8]) {
        if let Some(entry) = DealEntry::of(index, data) {
            let mut entries = self.deal_entries.write().expect("deal entries lock");
            if !entries.iter().any(|e| e.index == index) {
                let place = entries.partition_point(|e| e.index < index);
                entries.insert(place, entry);
            }
        }
    }
}

/// A cheap handle to the running broker.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

const MAX_BATCH: usize = 4096;

/// Work waiting for an idle committer is run in two batches from this much on.
const SPLIT_AT: usize = 32;

impl Broker {
    pub fn deal(&self) -> &Arc<Deal> {
        &self.inner.deal
    }

    pub fn deal_text(&self) -> &str {
        &self.inner.deal_text
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// How many entries of the log the engine holds.
    pub fn log_size(&self) -> u64 {
        self.inner.applied.load(Ordering::Acquire)
    }

    pub fn location(&self) -> &Location {
        &self.inner.location
    }

    /// Whether other replicas share this broker's log.
    pub fn shared(&self) -> bool {
        self.inner.shared
    }

    /// Brings the engine up to date with the log when other replicas share it, so that
    /// a read made next sees every command acknowledged before this call (by any
    /// replica). Alone on its log, the engine is always up to date.
    pub async fn fresh(&self) -> Result<(), BrokerError> {
        if !self.inner.shared {
            return Ok(());
        }
        let (done, waited) = oneshot::channel();
        self.send(Work::Sync(done))?;
        waited.await.map_err(|_| BrokerError::Stopped)
    }

    /// Waits until the needs projection holds every command acknowledged before this
    /// call. The writer holds rows back for about a second; lists read the projection,
    /// so they ask for it first. Replicas write their rows with every commit.
    pub async fn projected(&self) -> Result<(), BrokerError> {
        if self.inner.shared {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        self.send(Work::Flush(reply))?;
        answer.await.map_err(|_| BrokerError::Stopped)?.map(|_| ())
    }

    /// Runs `f` with read access to the engine's state. The state may hold a batch
    /// that is still being written: what answers a party goes through
    /// [`Broker::read_committed`].
    pub fn read<T>(&self, f: impl FnOnce(&Engine) -> T) -> T {
        let engine = self.inner.engine.read().expect("engine lock poisoned");
        f(&engine)
    }

    /// Runs `f` on the engine's state and returns its answer once everything that state
    /// holds is on disk (and, with replicas, once the engine has folded in every
    /// command acknowledged before this call). A broker that crashes never has shown
    /// anyone an event it then lost.
    pub async fn read_committed<T>(&self, f: impl Fn(&Engine) -> T) -> Result<T, BrokerError> {
        self.fresh().await?;
        let mut durable = self.inner.durable.subscribe();
        loop {
            let (answer, seen, epoch) = {
                let engine = self.inner.engine.read().expect("engine lock poisoned");
                let seen = self.inner.applied.load(Ordering::Acquire);
                (f(&engine), seen, durable.borrow().0)
            };
            let now = *durable
                .wait_for(|&(e, on_disk)| e != epoch || on_disk >= seen)
                .await
                .map_err(|_| BrokerError::Stopped)?;
            if now.0 == epoch {
                return Ok(answer);
            }
        }
    }

    /// Runs `f` with the read connection to the store.
    pub fn store<T>(&self, f: impl FnOnce(&dyn Store) -> T) -> T {
        let store = self.inner.reader.lock().expect("store lock poisoned");
        f(store.as_ref())
    }

    /// Queues a command and waits until its events are on disk.
    pub async fn execute(
        &self,
        party: Party,
        command: Command,
        idempotency: Option<Idempotency>,
    ) -> Result<Answer, BrokerError> {
        let (reply, answer) = oneshot::channel();
        self.send(Work::Job(Job {
            party,
            command,
            idempotency,
            reply,
        }))?;
        answer.await.map_err(|_| BrokerError::Stopped)?
    }

    fn send(&self, job: Work) -> Result<(), BrokerError> {
        let sender = self
            .inner
            .jobs
            .lock()
            .expect("job lock poisoned")
            .clone()
            .ok_or(BrokerError::Stopped)?;
        sender.send(job).map_err(|_| BrokerError::Stopped)
    }

    /// Runs `hook` with every command just after the engine applied it. A panic there
    /// is what a defect in the engine looks like to the writer, which must refuse that
    /// command alone and go on; tests use this to check that it does.
    pub fn inject_fault(&self, hook: Option<FaultHook>) {
        *self.inner.fault.write().expect("fault lock") = hook;
    }

    /// Stops taking commands; the writer finishes what is queued and exits.
    pub fn shutdown(&self) {
        self.inner.jobs.lock().expect("job lock poisoned").take();
    }
}

/// Tells the writer that another replica committed; false once the broker is gone.
fn wake(inner: &Weak<Inner>) -> bool {
    let Some(inner) = inner.upgrade() else {
        return false;
    };
    let sender = inner.jobs.lock().expect("job lock poisoned").clone();
    match sender {
        Some(sender) => !matches!(
            sender.try_send(Work::Wake),
            Err(mpsc::TrySendError::Disconnected(_))
        ),
        None => false,
    }
}

impl From<StoreError> for BrokerError {
    fn from(error: StoreError) -> Self {
        BrokerError::Store(error)
    }
}
