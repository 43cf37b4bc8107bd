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

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Weak;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rofr_engine::deal::{parse_deal, Deal};
use rofr_engine::state::NeedState;
use rofr_engine::types::{ProviderId, Timestamp};
use rofr_engine::{Command, Engine, Event, EventKind, Rejection};
use rofr_store::{
    Batch, IdempotentResponse, Location, NeedRow, NewDelivery, NewEvent, PostgresStore,
    SqliteStore, Store, StoreError, StoredEvent, StoredToken, TokenRow,
};
use serde_json::value::RawValue;
use tokio::sync::{oneshot, watch};

use crate::clock::Clock;

/// Who is asking. Each bearer token speaks for exactly one party.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Party {
    Buyer,
    Auditor,
    Provider(ProviderId),
}

impl Party {
    /// A stable name, used to scope idempotency keys.
    pub fn key(&self) -> String {
        match self {
            Party::Buyer => "buyer".into(),
            Party::Auditor => "auditor".into(),
            Party::Provider(id) => format!("provider:{id}"),
        }
    }
}

/// An `Idempotency-Key` and the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

/// The answer to an accepted command: the JSON body and its status, exactly as first
/// sent (a retry with the same key gets the same bytes back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub replayed: bool,
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
    /// The command failed where it should not have (a defect): it was refused alone,
    /// nothing of it was written, and the broker goes on.
    #[error("the command failed inside the broker; nothing of it was written")]
    Failed,
}

/// Called with each command right after the engine has applied it and before its
/// events are staged: a test panics here to stand for a defect in the engine.
pub type FaultHook = Arc<dyn Fn(&Command) + Send + Sync>;

type ReplyTo = oneshot::Sender<Result<Reply, BrokerError>>;

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

/// Tokens found in the store, by hash, with when they were found there. Unknown tokens
/// are not kept: anyone may send any number of them.
struct TokenCache {
    found: HashMap<String, (Party, Instant)>,
    /// How long a token found in the store is trusted before it is looked up again:
    /// how soon a revoked token is refused.
    recheck: Duration,
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
        let (file, text) = match deal_file {
            Some((file, text)) => {
                let stored = store.init_meta("deal", text)?;
                if stored != text {
                    return Err(BrokerError::Setup(format!(
                        "{location} already holds the log of another deal; a log belongs to one deal (start with a new database, or pass the same deal file)"
                    )));
                }
                let file = store.init_meta("deal_file", file)?;
                (file, stored)
            }
            None => match store.meta("deal")? {
                Some(stored) => {
                    let file = store
                        .meta("deal_file")?
                        .unwrap_or_else(|| "deal.toml".into());
                    (file, stored)
                }
                None => {
                    return Err(BrokerError::Setup(format!(
                        "{location} holds no deal yet: pass one with --deal"
                    )))
                }
            },
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
            &mut |data| ledger.append_entry(data),
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
        });
        let mut writer = Writer {
            inner: inner.clone(),
            store,
            next_index,
            dirty: Touches::default(),
            last_flush: Instant::now(),
            sweep: Vec::new(),
            settling: Some(touches),
            spare: Vec::new(),
            committer: None,
            returned: None,
            in_flight: Arc::new(AtomicUsize::new(0)),
            unsettled_keys: HashMap::new(),
            poisoned: false,
        };
        writer.settle()?;
        if !shared {
            // Alone on its log, the broker writes each batch on a thread of its own
            // while the writer runs the next one through the engine.
            let committer = Committer {
                inner: inner.clone(),
                store: location.open()?,
                in_flight: writer.in_flight.clone(),
            };
            let (to_committer, batches) = mpsc::sync_channel(1);
            let (give_back, returned) = mpsc::channel();
            std::thread::Builder::new()
                .name("rofr-committer".into())
                .spawn(move || committer.run(batches, give_back))
                .map_err(|e| {
                    BrokerError::Setup(format!("cannot start the committer thread: {e}"))
                })?;
            writer.committer = Some(to_committer);
            writer.returned = Some(returned);
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
    ) -> Result<Reply, BrokerError> {
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

    /// The party a bearer token speaks for, if it is known. Tokens are stored only as
    /// SHA-256 hashes.
    pub fn authenticate(&self, token: &str) -> Result<Option<Party>, BrokerError> {
        let hash = token_hash(token);
        {
            let cache = self.inner.tokens.lock().expect("token lock");
            if let Some((party, found)) = cache.found.get(&hash) {
                if found.elapsed() < cache.recheck {
                    return Ok(Some(party.clone()));
                }
            }
        }
        let row = self.store(|s| s.token(&hash))?;
        let party = row.and_then(|row| party_of(&row));
        let mut cache = self.inner.tokens.lock().expect("token lock");
        match &party {
            Some(party) => cache.found.insert(hash, (party.clone(), Instant::now())),
            None => cache.found.remove(&hash),
        };
        Ok(party)
    }

    /// Sets how long a token found in the store is trusted before it is looked up
    /// again ([`TOKEN_RECHECK`] by default): how soon a revoked token is refused.
    pub fn set_token_recheck(&self, recheck: Duration) {
        self.inner.tokens.lock().expect("token lock").recheck = recheck;
    }

    /// Runs `f` with the ledger: tree, key and latest checkpoint.
    pub fn ledger<T>(&self, f: impl FnOnce(&mut crate::ledger::Ledger) -> T) -> T {
        let mut ledger = self.inner.ledger.lock().expect("ledger lock");
        f(&mut ledger)
    }

    /// Runs `f` with the ledger and the read connection, which gives back the leaves
    /// its tree let go of. (The ledger is always locked before the connection.)
    pub fn ledger_with_log<T>(&self, f: impl FnOnce(&crate::ledger::Ledger, &dyn Store) -> T) -> T {
        let ledger = self.inner.ledger.lock().expect("ledger lock");
        let store = self.inner.reader.lock().expect("store lock poisoned");
        f(&ledger, store.as_ref())
    }

    /// Changes when checkpoints are made without being asked for.
    pub fn set_checkpoint_policy(&self, policy: crate::ledger::CheckpointPolicy) {
        self.ledger(|l| l.policy = policy);
    }

    /// Signs a checkpoint of everything committed so far, stores it, and returns its
    /// size and signed note.
    pub fn checkpoint_now(&self) -> Result<(u64, String), BrokerError> {
        let (size, note) = self.ledger(|l| l.checkpoint());
        let mut store = self.inner.reader.lock().expect("store lock poisoned");
        store.add_checkpoint(size, &note, &crate::ledger::now_text())?;
        Ok((size, note))
    }

    /// The entries of one need, in log order, as of the moment of the call: the needs
    /// projection is brought up to date first, so only the runs of entries its row
    /// holds are read.
    pub async fn events_of(&self, need: &str) -> Result<Vec<StoredEvent>, BrokerError> {
        self.projected().await?;
        // With replicas the projection may trail what others appended; their store
        // reads by an index instead.
        let projected = !self.inner.shared;
        Ok(self.store(|s| s.events_of(need, projected))?)
    }

    /// The evidence bundle of one need; `None` if the need has no entries.
    /// The evidence bundle of a need, as `viewer` may see it: whole for the buyer and
    /// the auditor (`None`); for a provider, the entries [`EventKind::shown_to`] lets
    /// it see, and `None` where the need does not concern it.
    pub async fn evidence(
        &self,
        need: &str,
        viewer: Option<&ProviderId>,
    ) -> Result<Option<rofr_ledger::evidence::Bundle>, BrokerError> {
        let Some((holder, concerns)) = self
            .read_committed(|e| {
                e.state().need(need).map(|n| {
                    let concerns = viewer.is_none_or(|v| n.concerns(v));
                    (n.holder.clone(), concerns)
                })
            })
            .await?
        else {
            return Ok(None);
        };
        if !concerns {
            return Ok(None);
        }
        let rows = self.events_of(need).await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let total = rows.len();
        let mut entries: Vec<(u64, Vec<u8>)> = Vec::with_capacity(total);
        for row in rows {
            let shown = match viewer {
                None => true,
                Some(viewer) => Event::from_json(&row.data)
                    .map_err(|e| BrokerError::Setup(format!("entry {}: {e}", row.index)))?
                    .kind
                    .shown_to(viewer, holder.as_ref()),
            };
            if shown {
                entries.push((row.index, row.data));
            }
        }
        let view = viewer.map(|viewer| rofr_ledger::evidence::View {
            provider: viewer.to_string(),
            withheld: (total - entries.len()) as u64,
        });
        // A provider other than the holder is not told who holds the right.
        let holder = holder
            .filter(|h| viewer.is_none_or(|v| v == h))
            .map(|h| h.to_string());
        let made = self.ledger(|l| {
            let store = self.inner.reader.lock().expect("store lock poisoned");
            l.evidence(holder, view, &entries, store.as_ref())
        })?;
        let Some((bundle, made_now)) = made else {
            return Ok(None);
        };
        if made_now {
            let (size, note) = self.ledger(|l| l.latest().cloned()).expect("just made");
            let mut store = self.inner.reader.lock().expect("store lock poisoned");
            store.add_checkpoint(size, &note, &crate::ledger::now_text())?;
        }
        Ok(Some(bundle))
    }

    /// Lets providers register webhooks at loopback, link-local and private
    /// addresses, and deliveries reach them (tests, demos, a receiver inside one's own
    /// network). Set before serving.
    pub fn allow_private_webhooks(&self, allow: bool) {
        self.inner.private_webhooks.store(allow, Ordering::Release);
    }

    pub fn private_webhooks_allowed(&self) -> bool {
        self.inner.private_webhooks.load(Ordering::Acquire)
    }

    /// Registers (or replaces) a provider's webhook; returns the new signing secret.
    /// The URL is checked by [`crate::webhook::check_url`].
    pub fn set_webhook(&self, provider: &ProviderId, url: &str) -> Result<String, BrokerError> {
        crate::webhook::check_url(url, self.private_webhooks_allowed())
            .map_err(|message| Rejection::invalid("url", message))?;
        let secret = crate::webhook::new_secret();
        let now = Clock::System.now().to_string();
        let mut store = self.inner.reader.lock().expect("store lock poisoned");
        store.set_webhook(provider.as_str(), url, &secret, &now)?;
        drop(store);
        self.inner
            .webhooks
            .write()
            .expect("webhook lock")
            .insert(provider.to_string());
        Ok(secret)
    }

    /// Every stored token, oldest first.
    pub fn tokens(location: &Location) -> Result<Vec<StoredToken>, BrokerError> {
        Ok(location.open()?.tokens()?)
    }

    /// Deletes the one token whose hash starts with `id` (as [`token_id`] shows it, or
    /// longer), and returns it. A running broker refuses it once its trust in the
    /// token lapses ([`Broker::set_token_recheck`]).
    pub fn revoke_token(location: &Location, id: &str) -> Result<StoredToken, BrokerError> {
        if id.len() < 8 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BrokerError::Setup(format!(
                "`{id}` is not a token id: give at least 8 of the hex digits `rofr token list` shows"
            )));
        }
        let id = id.to_ascii_lowercase();
        let mut store = location.open()?;
        let mut matching: Vec<StoredToken> = store
            .tokens()?
            .into_iter()
            .filter(|t| t.hash.starts_with(&id))
            .collect();
        let token = match matching.len() {
            1 => matching.remove(0),
            0 => {
                return Err(BrokerError::Setup(format!(
                    "no token has the id `{id}` (see `rofr token list`)"
                )))
            }
            n => {
                return Err(BrokerError::Setup(format!(
                    "{n} tokens have ids starting `{id}`: give more of the id"
                )))
            }
        };
        store.delete_token(&token.hash)?;
        Ok(token)
    }

    /// Makes a new token for a party and stores its hash; returns the token itself,
    /// which is shown once and never stored.
    pub fn create_token(
        location: &Location,
        party: &Party,
        label: &str,
    ) -> Result<String, BrokerError> {
        let mut store = location.open()?;
        let token = new_token();
        let row = TokenRow {
            party: match party {
                Party::Buyer => "buyer".into(),
                Party::Auditor => "auditor".into(),
                Party::Provider(_) => "provider".into(),
            },
            provider: match party {
                Party::Provider(id) => Some(id.to_string()),
                _ => None,
            },
            label: label.to_owned(),
        };
        let now = Clock::System.now().to_string();
        store.create_token(&token_hash(&token), &row, &now)?;
        Ok(token)
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

/// The log folded into a fresh engine, and where each need's events lie.
struct Folded {
    engine: Engine,
    touches: Touches,
    size: u64,
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
fn fold_log(
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
struct Chunk {
    bytes: Vec<u8>,
    ends: Vec<(u64, usize)>,
}

impl Chunk {
    fn push(&mut self, index: u64, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.ends.push((index, self.bytes.len()));
    }
}

/// [`fold_log`]'s other half: parses the entries of each chunk and folds them into an
/// engine (made at the first entry), noting where each need's events lie. Stops at an
/// entry that does not parse.
fn fold_chunks(
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
            let event = parse_entry(index, &chunk.bytes[start..end])?;
            start = end;
            at.clear();
            event.at.push_to(&mut at);
            touch(&mut touches, event.need.as_str(), &at, index);
            engine
                .get_or_insert_with(|| Engine::new(deal.clone(), clock.unwrap_or(event.at)))
                .apply(&event);
        }
    }
    Ok((engine, touches))
}

fn parse_stored(row: &rofr_store::StoredEvent) -> Result<Event, BrokerError> {
    parse_entry(row.index, &row.data)
}

fn parse_entry(index: u64, data: &[u8]) -> Result<Event, BrokerError> {
    Event::from_json(data)
        .map_err(|e| BrokerError::Setup(format!("event {index} in the log does not parse: {e}")))
}

impl From<StoreError> for BrokerError {
    fn from(error: StoreError) -> Self {
        BrokerError::Store(error)
    }
}

fn party_of(row: &TokenRow) -> Option<Party> {
    match (row.party.as_str(), &row.provider) {
        ("buyer", _) => Some(Party::Buyer),
        ("auditor", _) => Some(Party::Auditor),
        ("provider", Some(id)) => ProviderId::parse(id).ok().map(Party::Provider),
        _ => None,
    }
}

/// How long a broker trusts a token it found in the store before looking it up again.
pub const TOKEN_RECHECK: Duration = Duration::from_secs(5);

/// A token's id as lists show it: the first 12 hex digits of its hash.
pub fn token_id(token: &StoredToken) -> &str {
    &token.hash[..12.min(token.hash.len())]
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn new_token() -> String {
    let bytes: [u8; 24] = rand::random();
    format!("rofr_{}", hex::encode(bytes))
}

/// Where a need's events lie in the log, and when the latest one happened.
#[derive(Debug, Clone)]
struct Touch {
    at: String,
    first: u64,
    last: u64,
}

/// Where needs' events lie, by need. Hashed: every event touches one, and an ordered
/// map compared its id with a dozen others to find it (about 5% of the writer at
/// 300,000 needs); whatever needs them in order sorts them ([`in_id_order`]).
type Touches = std::collections::HashMap<String, Touch, rustc_hash::FxBuildHasher>;

fn in_id_order(touches: &Touches) -> Vec<(&String, &Touch)> {
    let mut sorted: Vec<_> = touches.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    sorted
}

fn touch(touches: &mut Touches, need: &str, at: &str, index: u64) {
    // Looked up by `&str` first: most events touch a need already in the map, and
    // `entry` would copy its id every time.
    if let Some(t) = touches.get_mut(need) {
        t.at.clear();
        t.at.push_str(at);
        t.last = index;
        return;
    }
    touches.insert(
        need.to_owned(),
        Touch {
            at: at.to_owned(),
            first: index,
            last: index,
        },
    );
}

fn need_row(need: &NeedState, touch: &Touch) -> NeedRow {
    NeedRow {
        id: need.spec.id.to_string(),
        status: need.status().as_str().into(),
        sku: need.spec.sku.to_string(),
        gpus: need.spec.gpus.get(),
        awarded: need.awarded().get(),
        holder: need.holder.as_ref().map(|h| h.to_string()),
        submitted_at: need.submitted_at.to_string(),
        updated_at: touch.at.clone(),
        // The deadline the need holds in the agenda: its next one as of its last event.
        next_deadline: need.scheduled.map(|d| d.to_string()),
        first_event: touch.first,
        last_event: touch.last,
    }
}

/// Projection rows for the needs in `touches`, as the engine's state has them, in
/// order of id.
fn projection(engine: &Engine, touches: &Touches) -> Vec<NeedRow> {
    let state = engine.state();
    in_id_order(touches)
        .into_iter()
        .filter_map(|(id, t)| state.need(id.as_str()).map(|n| need_row(&n, t)))
        .collect()
}

/// Whether the stored needs projection holds exactly the rows the engine gives for
/// `touches`. Both are ordered by id and compared a page at a time, so that the stored
/// rows are never all in memory.
fn projection_agrees(
    store: &dyn Store,
    engine: &Engine,
    touches: &Touches,
) -> Result<bool, BrokerError> {
    const PAGE: u32 = 10_000;
    let state = engine.state();
    let mut expected = in_id_order(touches)
        .into_iter()
        .filter_map(|(id, t)| state.need(id.as_str()).map(|n| need_row(&n, t)));
    let mut after: Option<String> = None;
    loop {
        let page = store.list_needs(None, after.as_deref(), PAGE)?;
        for row in &page {
            if expected.next().as_ref() != Some(row) {
                return Ok(false);
            }
        }
        if (page.len() as u32) < PAGE {
            return Ok(expected.next().is_none());
        }
        after = page.last().map(|row| row.id.clone());
    }
}

/// How long the needs projection may trail the log (and then some, while a sweep
/// writes it). A list query asks for the rows first ([`Broker::projected`]), so it never
/// sees them trail. Rows written together share pages of the projection's trees: at
/// 100 ms, each row cost a page of its own and `bench broker` made 15-20% fewer needs a
/// second.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The most projection rows a sweep adds to one batch. A second's rows in one commit
/// (15,000 at a million needs) held up that batch's answers: p99 doubled.
const SWEEP_ROWS: usize = 2_048;

/// Which of the needs projection's rows held back a batch writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rows {
    /// None: they may trail the log a while longer.
    Held,
    /// The next few in order of id, continuing the sweep under way or starting one.
    Sweep,
    /// Every one: a list query waits for them, replicas never hold rows back, and a
    /// stopping broker leaves none behind.
    All,
}

/// How many committed entries the writer keeps for their buffers: about one batch.
const SPARE_ENTRIES: usize = 1_024;

/// A batch on its way to disk, with the answers it releases once there.
struct Pending {
    /// The log index of its first event.
    first: u64,
    batch: Batch,
    answers: Vec<(ReplyTo, Result<Reply, BrokerError>)>,
}

/// What the writer hands the committer thread.
enum ToCommitter {
    Batch(Pending),
    /// After a failed commit: every batch sent before this has been refused; the
    /// committer writes the batches that follow.
    Resume(mpsc::Sender<()>),
}

/// The thread that writes each batch, on a connection of its own, while the writer
/// runs the next one through the engine (a broker alone on its log).
struct Committer {
    inner: Arc<Inner>,
    store: Box<dyn Store>,
    /// Batches sent to this thread and not yet written (or refused).
    in_flight: Arc<AtomicUsize>,
}

impl Committer {
    fn run(mut self, batches: mpsc::Receiver<ToCommitter>, give_back: mpsc::Sender<Vec<NewEvent>>) {
        // Once a commit fails, the batches after it were built on the failed one's
        // state: they are refused until the writer has reloaded the engine.
        let mut failure: Option<String> = None;
        for message in batches {
            match message {
                ToCommitter::Batch(pending) => {
                    let _done = Landed(&self.in_flight);
                    if let Some(error) = &failure {
                        refuse(pending.answers.into_iter().map(|(reply, _)| reply), error);
                        continue;
                    }
                    match finish(&self.inner, self.store.as_mut(), pending) {
                        Ok(entries) => {
                            let _ = give_back.send(entries);
                            checkpoint_if_due(&self.inner, self.store.as_mut());
                        }
                        Err(error) => {
                            failure = Some(error.to_string());
                            self.inner.commit_failed.store(true, Ordering::Release);
                        }
                    }
                }
                ToCommitter::Resume(done) => {
                    failure = None;
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Counts a batch out of the committer's hands when dropped, whichever way it went.
struct Landed<'a>(&'a AtomicUsize);

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps committed entries for their buffers, up to [`SPARE_ENTRIES`].
fn keep_spare(spare: &mut Vec<NewEvent>, entries: Vec<NewEvent>) {
    let room = SPARE_ENTRIES.saturating_sub(spare.len());
    spare.extend(entries.into_iter().take(room));
}

/// Answers each of `replies` that storage failed.
fn refuse(replies: impl IntoIterator<Item = ReplyTo>, error: &str) {
    for reply in replies {
        let _ = reply.send(Err(BrokerError::Setup(format!("storage failed: {error}"))));
    }
}

/// Writes one batch; once it is on disk, appends its leaves to the ledger's tree,
/// publishes the log's new size and releases the answers. When the commit fails, every
/// answer is refused and the error returned. Gives back the written entries.
fn finish(
    inner: &Inner,
    store: &mut dyn Store,
    mut pending: Pending,
) -> Result<Vec<NewEvent>, StoreError> {
    let events = &pending.batch.events;
    if !pending.batch.is_empty() {
        if let Err(error) = store.commit(&pending.batch) {
            tracing::error!(%error, "commit failed; the batch is refused and the engine reloaded from the log");
            let replies = pending.answers.into_iter().map(|(reply, _)| reply);
            refuse(replies, &error.to_string());
            return Err(error);
        }
        inner
            .ledger
            .lock()
            .expect("ledger lock")
            .append(events.iter().map(|e| e.leaf_hash));
        inner.counters.commits.fetch_add(1, Ordering::Relaxed);
        inner
            .counters
            .events_appended
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }
    let size = pending.first + events.len() as u64;
    inner
        .durable
        .send_modify(|(_, on_disk)| *on_disk = (*on_disk).max(size));
    for (reply, answer) in pending.answers {
        let _ = reply.send(answer);
    }
    Ok(std::mem::take(&mut pending.batch.events))
}

/// Signs and stores a checkpoint when the policy says one is due.
fn checkpoint_if_due(inner: &Inner, store: &mut dyn Store) {
    let mut ledger = inner.ledger.lock().expect("ledger lock");
    if !ledger.due() {
        return;
    }
    let (size, note) = ledger.checkpoint();
    if let Err(error) = store.add_checkpoint(size, &note, &crate::ledger::now_text()) {
        tracing::error!(%error, size, "storing a checkpoint failed");
    }
}

struct Writer {
    inner: Arc<Inner>,
    store: Box<dyn Store>,
    next_index: u64,
    /// Needs whose projection rows are not yet written.
    dirty: Touches,
    last_flush: Instant,
    /// While a sweep writes the rows held back: the ids it has still to write, last
    /// first (those held back when it started, in reverse order of id). Rows touched
    /// after it started wait for the next one.
    sweep: Vec<String>,
    /// Where every need's events lie, while the projection is checked against the
    /// log (at start, and after a failed commit).
    settling: Option<Touches>,
    /// Entries of committed batches, kept with their buffers for the next ones: a batch
    /// holds up to a thousand events, and freeing their bytes one by one was a good
    /// part of the writer's time.
    spare: Vec<NewEvent>,
    /// The committer thread, alone on the log; `None` with replicas, whose writer
    /// commits inside the store's exclusive transaction itself.
    committer: Option<mpsc::SyncSender<ToCommitter>>,
    /// Entries the committer has written, coming back for their buffers.
    returned: Option<mpsc::Receiver<Vec<NewEvent>>>,
    /// Batches the committer holds (written by it, counted down by it).
    in_flight: Arc<AtomicUsize>,
    /// Idempotent answers of batches not yet known to be on disk, with the log size
    /// past their command's events: the store cannot answer for them yet.
    unsettled_keys: HashMap<(String, String), (u64, IdempotentResponse)>,
    /// A command panicked in the engine, whose state may now hold part of it: the
    /// engine is reloaded from the log once the batch before it is written.
    poisoned: bool,
}

impl Writer {
    /// At start, under the write lock: folds in what other replicas appended since the
    /// log was read, and rewrites the needs projection if it disagrees with the log.
    fn settle(&mut self) -> Result<(), BrokerError> {
        self.store.begin_exclusive()?;
        let inner = self.inner.clone();
        let mut engine = inner.engine.write().expect("engine lock");
        let settled = self.catch_up(&mut engine).and_then(|()| {
            let touches = self.settling.take().unwrap_or_default();
            if projection_agrees(self.store.as_ref(), &engine, &touches)? {
                return Ok(self.store.abort()?);
            }
            let rows = projection(&engine, &touches);
            tracing::warn!(
                needs = rows.len(),
                "the needs projection disagreed with the event log; rebuilt it from the log"
            );
            self.store.commit(&Batch {
                needs: rows,
                reset_projection: true,
                ..Batch::default()
            })?;
            Ok(())
        });
        if settled.is_err() {
            let _ = self.store.abort();
        }
        settled
    }

    /// Folds into the engine (and the ledger's tree) every event appended after the
    /// ones it holds: by other replicas, when the log is shared.
    fn catch_up(&mut self, engine: &mut Engine) -> Result<(), BrokerError> {
        loop {
            let after = self.next_index.checked_sub(1);
            let rows = self.store.events_after(after, 4096)?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut hashes = Vec::with_capacity(rows.len());
            for row in &rows {
                if row.index != self.next_index {
                    return Err(BrokerError::Setup(format!(
                        "the log jumps from entry {} to entry {}",
                        self.next_index.saturating_sub(1),
                        row.index
                    )));
                }
                engine.apply(&parse_stored(row)?);
                if let Some(touches) = &mut self.settling {
                    touch(touches, &row.need, &row.at, row.index);
                }
                if let Some(t) = self.dirty.get_mut(&row.need) {
                    t.at.clone_from(&row.at);
                    t.last = row.index;
                }
                hashes.push(rofr_ledger::leaf_hash(&row.data));
                self.next_index += 1;
            }
            // What other replicas committed is on disk already.
            self.inner.applied.store(self.next_index, Ordering::Release);
            let size = self.next_index;
            self.inner
                .durable
                .send_modify(|(_, on_disk)| *on_disk = (*on_disk).max(size));
            self.inner
                .ledger
                .lock()
                .expect("ledger lock")
                .append(hashes);
            self.inner
                .counters
                .events_caught_up
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
    }

    fn run(mut self, receiver: mpsc::Receiver<Work>) {
        // Work received and not yet run, in order.
        let mut backlog: VecDeque<Work> = VecDeque::new();
        loop {
            if backlog.is_empty() {
                let wait = self
                    .inner
                    .engine
                    .read()
                    .expect("engine lock")
                    .state()
                    .next_deadline();
                let mut wait = wait
                    .map(|at| self.inner.clock.real_wait_until(at))
                    .unwrap_or(Duration::from_secs(1));
                if !self.dirty.is_empty() {
                    // Rows held back are written within FLUSH_EVERY, even when idle,
                    // and a sweep under way goes on at once.
                    let until_due = FLUSH_EVERY.saturating_sub(self.last_flush.elapsed());
                    wait = wait.min(if !self.sweep.is_empty() {
                        Duration::ZERO
                    } else {
                        until_due
                    });
                }
                let wait = wait.clamp(Duration::from_millis(1), Duration::from_secs(1));
                match receiver.recv_timeout(wait) {
                    Ok(item) => backlog.push_back(item),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        // Stopping: the rows held back go with a last commit.
                        let unrun = self.process(Vec::new(), Vec::new(), Rows::All);
                        debug_assert!(unrun.is_empty(), "a batch without jobs runs none");
                        return;
                    }
                }
            }
            while backlog.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(item) => backlog.push_back(item),
                    Err(_) => break,
                }
            }
            // Clients answered by one commit send their next commands together. Run
            // whole, they would make the committer wait while the writer runs them,
            // and the writer wait while the committer writes them: the two would take
            // turns. An idle committer gets the first half as soon as it is run, and
            // writes it while the writer runs the second.
            let take = if backlog.len() >= SPLIT_AT && self.committer_idle() {
                backlog.len().div_ceil(2)
            } else {
                backlog.len().min(MAX_BATCH)
            };
            let work: Vec<Work> = backlog.drain(..take).collect();
            let mut jobs = Vec::with_capacity(work.len());
            let mut synced = Vec::new();
            let mut flushes = Vec::new();
            for item in work {
                match item {
                    Work::Job(job) => jobs.push(job),
                    Work::Sync(done) => synced.push(done),
                    Work::Wake => {}
                    Work::Flush(reply) => flushes.push(reply),
                }
            }
            // The needs projection is swept every FLUSH_EVERY: a need's row changes
            // with each of its commands, and writing it each time cost as much as
            // appending the events. Replicas write their rows with every commit: a
            // row held back could later overwrite a newer one written by another
            // replica. A list query asks for the rows first (`Work::Flush`).
            let rows = if self.inner.shared || !flushes.is_empty() {
                Rows::All
            } else if !self.sweep.is_empty() || self.last_flush.elapsed() >= FLUSH_EVERY {
                Rows::Sweep
            } else {
                Rows::Held
            };
            let unrun = self.process(jobs, flushes, rows);
            for job in unrun.into_iter().rev() {
                backlog.push_front(Work::Job(job));
            }
            for done in synced {
                let _ = done.send(());
            }
        }
    }

    /// Whether a committer thread has nothing to write.
    fn committer_idle(&self) -> bool {
        self.committer.is_some() && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Runs one batch; returns the jobs it did not get to (those after a command
    /// that panicked), to be run on the reloaded engine.
    fn process(&mut self, jobs: Vec<Job>, flushes: Vec<ReplyTo>, rows: Rows) -> Vec<Job> {
        if self.inner.commit_failed.load(Ordering::Acquire) {
            self.recover();
        }
        if let Some(returned) = &self.returned {
            while let Ok(entries) = returned.try_recv() {
                keep_spare(&mut self.spare, entries);
            }
        }
        let on_disk = self.inner.durable.borrow().1;
        self.unsettled_keys.retain(|_, (end, _)| *end > on_disk);
        let inner = self.inner.clone();
        let mut engine = inner.engine.write().expect("engine lock");
        let due = engine
            .state()
            .next_deadline()
            .is_some_and(|at| at <= inner.clock.now().max(engine.clock()));
        let writes = !jobs.is_empty()
            || !flushes.is_empty()
            || due
            || (rows != Rows::Held && !self.dirty.is_empty());
        // Alone on its log, the broker has folded in every entry already, and its
        // commit is a transaction of its own.
        let ready = if !inner.shared {
            Ok(())
        } else if writes {
            self.store
                .begin_exclusive()
                .map_err(BrokerError::from)
                .and_then(|()| self.catch_up(&mut engine))
        } else {
            self.catch_up(&mut engine)
        };
        if let Err(error) = ready {
            let _ = self.store.abort();
            tracing::error!(%error, "cannot read the log; commands refused until it can be read");
            let replies = jobs.into_iter().map(|job| job.reply).chain(flushes);
            refuse(replies, &error.to_string());
            return Vec::new();
        }
        if !writes {
            return Vec::new();
        }
        if inner.shared {
            // Another replica may have registered a webhook.
            if let Ok(hooks) = self.store.webhooks() {
                *inner.webhooks.write().expect("webhook lock") =
                    hooks.into_iter().map(|(provider, _, _)| provider).collect();
            }
        }
        let now = inner.clock.now().max(engine.clock());
        let mut batch = Batch::default();
        let mut answers: Vec<(ReplyTo, Result<Reply, BrokerError>)> = Vec::new();
        let mut unrun = Vec::new();

        let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.execute(Command::Tick { now })
        }));
        let Ok(ticked) = ticked else {
            // A deadline failed: nothing of this batch is written, and the engine
            // goes back to the log.
            tracing::error!(now = %now, "a deadline failed inside the broker; the batch is refused and the engine reloaded");
            if inner.shared {
                let _ = self.store.abort();
            }
            drop(engine);
            self.poisoned = true;
            self.reload_if_poisoned();
            let replies = jobs.into_iter().map(|job| job.reply).chain(flushes);
            for reply in replies {
                let _ = reply.send(Err(BrokerError::Failed));
            }
            return Vec::new();
        };
        let ticked = ticked.expect("the broker's clock never goes back");
        self.append(&mut batch, &ticked);

        let fault = inner.fault.read().expect("fault lock").clone();
        // One buffer for every command's events.
        let mut events = Vec::with_capacity(8);
        let mut jobs = jobs.into_iter();
        while let Some(job) = jobs.next() {
            // The party's key scopes idempotency keys; most commands carry none.
            if let Some(idem) = &job.idempotency {
                let party = job.party.key();
                let key = (party.clone(), idem.key.clone());
                let earlier = match self.unsettled_keys.get(&key) {
                    Some((_, answer)) => Some(answer.clone()),
                    None => match self.store.idempotent(&party, &idem.key) {
                        Ok(found) => found,
                        Err(error) => {
                            answers.push((job.reply, Err(error.into())));
                            continue;
                        }
                    },
                };
                if let Some(earlier) = earlier {
                    let answer = if earlier.request_hash == idem.request_hash {
                        inner
                            .counters
                            .idempotent_replays
                            .fetch_add(1, Ordering::Relaxed);
                        Ok(Reply {
                            status: earlier.status,
                            body: earlier.body,
                            replayed: true,
                        })
                    } else {
                        Err(BrokerError::KeyReused(idem.key.clone()))
                    };
                    answers.push((job.reply, answer));
                    continue;
                }
            }
            let status = if matches!(job.command, Command::SubmitNeed { .. }) {
                201
            } else {
                200
            };
            events.clear();
            let need = job.command.need().cloned();
            let probe = fault.as_ref().map(|_| job.command.clone());
            let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let result = engine.execute_into(job.command, &mut events);
                if let (Some(hook), Some(command)) = (&fault, &probe) {
                    hook(command);
                }
                result
            }));
            let Ok(applied) = applied else {
                // The engine may hold part of the command: refuse it alone, write the
                // batch so far, and run the rest after reloading from the log.
                tracing::error!(
                    need.id = need.as_ref().map(|n| n.as_str()),
                    party = %job.party.key(),
                    "a command failed inside the broker; refused, nothing of it written"
                );
                answers.push((job.reply, Err(BrokerError::Failed)));
                self.poisoned = true;
                unrun.extend(jobs.by_ref());
                break;
            };
            match applied {
                Ok(()) => {
                    inner
                        .counters
                        .commands_accepted
                        .fetch_add(1, Ordering::Relaxed);
                    let first = self.next_index + batch.events.len() as u64;
                    let start = batch.events.len();
                    self.append(&mut batch, &events);
                    let body = command_body(first, &batch.events[start..]);
                    if let Some(idem) = job.idempotency {
                        let party = job.party.key();
                        let answer = IdempotentResponse {
                            party: party.clone(),
                            key: idem.key.clone(),
                            request_hash: idem.request_hash,
                            status,
                            body: body.clone(),
                        };
                        let end = self.next_index + batch.events.len() as u64;
                        self.unsettled_keys
                            .insert((party, idem.key), (end, answer.clone()));
                        batch.idempotency.push(answer);
                    }
                    answers.push((
                        job.reply,
                        Ok(Reply {
                            status,
                            body,
                            replayed: false,
                        }),
                    ));
                }
                Err(rejection) => {
                    inner
                        .counters
                        .commands_rejected
                        .fetch_add(1, Ordering::Relaxed);
                    answers.push((job.reply, Err(rejection.into())));
                }
            }
        }

        // A flush is answered once its rows are on disk.
        answers.extend(flushes.into_iter().map(|reply| {
            let done = Reply {
                status: 200,
                body: String::new(),
                replayed: false,
            };
            (reply, Ok(done))
        }));
        for (offset, event) in batch.events.iter().enumerate() {
            touch(
                &mut self.dirty,
                &event.need,
                &event.at,
                self.next_index + offset as u64,
            );
        }
        match rows {
            Rows::Held => {}
            Rows::All => {
                batch.needs = projection(&engine, &self.dirty);
                self.dirty.clear();
                self.sweep.clear();
                self.last_flush = Instant::now();
            }
            Rows::Sweep => {
                if self.sweep.is_empty() {
                    self.sweep = self.dirty.keys().cloned().collect();
                    self.sweep.sort_unstable_by(|a, b| b.cmp(a));
                }
                let state = engine.state();
                let start = self.sweep.len().saturating_sub(SWEEP_ROWS);
                for id in self.sweep.drain(start..).rev() {
                    // Written already where a list query wrote every row since.
                    let Some(touch) = self.dirty.remove(&id) else {
                        continue;
                    };
                    if let Some(need) = state.need(id.as_str()) {
                        batch.needs.push(need_row(&need, &touch));
                    }
                }
                if self.sweep.is_empty() {
                    self.last_flush = Instant::now();
                }
            }
        }
        let first = self.next_index;
        self.next_index += batch.events.len() as u64;
        inner.applied.store(self.next_index, Ordering::Release);
        // Answers, rejections included, leave only once everything the engine held
        // when it gave them is on disk.
        let pending = Pending {
            first,
            batch,
            answers,
        };
        if let Some(committer) = &self.committer {
            drop(engine);
            self.in_flight.fetch_add(1, Ordering::AcqRel);
            if committer.send(ToCommitter::Batch(pending)).is_err() {
                self.in_flight.fetch_sub(1, Ordering::AcqRel);
                tracing::error!(
                    "the committer thread is gone; the batch's commands see the broker as stopped"
                );
            }
            self.reload_if_poisoned();
            return unrun;
        }
        if pending.batch.is_empty() {
            if let Err(error) = self.store.abort() {
                tracing::error!(%error, "ending an empty transaction failed");
            }
        }
        match finish(&inner, self.store.as_mut(), pending) {
            Ok(entries) => {
                drop(engine);
                keep_spare(&mut self.spare, entries);
                checkpoint_if_due(&inner, self.store.as_mut());
                self.reload_if_poisoned();
            }
            Err(_) => {
                self.poisoned = false;
                self.reload(&mut engine);
                drop(engine);
                if let Err(error) = self.settle() {
                    tracing::error!(%error, "checking the projection failed; it is checked again at the next start");
                }
            }
        }
        unrun
    }

    /// After a command or deadline panicked: the engine goes back to the log (once
    /// the batch before the failure is written), before any read or command sees it.
    fn reload_if_poisoned(&mut self) {
        if std::mem::take(&mut self.poisoned) {
            self.recover();
        }
    }

    /// After the committer refused a batch: waits until it has dealt with every batch
    /// sent so far, then brings the engine back to what the log holds.
    fn recover(&mut self) {
        let (done, finished) = mpsc::channel();
        if let Some(committer) = &self.committer {
            if committer.send(ToCommitter::Resume(done)).is_ok() {
                let _ = finished.recv();
            }
        }
        self.inner.commit_failed.store(false, Ordering::Release);
        let inner = self.inner.clone();
        let mut engine = inner.engine.write().expect("engine lock");
        self.reload(&mut engine);
        drop(engine);
        if let Err(error) = self.settle() {
            tracing::error!(%error, "checking the projection failed; it is checked again at the next start");
        }
    }

    /// Nothing of a failed batch is on disk and nobody was told it succeeded: the
    /// engine returns to the entries on disk, and the projection is checked against
    /// the log as at start (by [`Writer::settle`], which the caller runs next).
    fn reload(&mut self, engine: &mut Engine) {
        // The entries on disk that the engine (and the ledger's tree) had folded in;
        // with replicas, later ones are caught up as usual.
        let known = self.inner.durable.borrow().1;
        let folded = loop {
            let clock = engine.clock();
            let deal = &self.inner.deal;
            match fold_log(
                self.store.as_ref(),
                deal,
                Some(clock),
                clock,
                Some(known),
                &mut |_| {},
            ) {
                Ok(folded) if folded.size == known => break folded,
                Ok(_) => tracing::error!("the log is shorter than before; waiting"),
                Err(error) => tracing::error!(%error, "cannot read the log; waiting"),
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        *engine = folded.engine;
        self.next_index = folded.size;
        self.dirty.clear();
        self.unsettled_keys.clear();
        self.settling = Some(folded.touches);
        self.inner.applied.store(self.next_index, Ordering::Release);
        let size = self.next_index;
        self.inner
            .durable
            .send_modify(|(epoch, on_disk)| (*epoch, *on_disk) = (*epoch + 1, size));
    }

    fn append(&mut self, batch: &mut Batch, events: &[Event]) {
        let webhooks = self.inner.webhooks.read().expect("webhook lock");
        for event in events {
            let mut entry = self.spare.pop().unwrap_or_else(|| NewEvent {
                need: String::new(),
                kind: String::new(),
                at: String::new(),
                data: Vec::new(),
                leaf_hash: [0; 32],
            });
            entry.need.clear();
            entry.need.push_str(event.need.as_str());
            entry.kind.clear();
            entry.kind.push_str(event.kind.type_name());
            entry.at.clear();
            event.at.push_to(&mut entry.at);
            entry.data.clear();
            event.write_json(&mut entry.data);
            entry.leaf_hash = rofr_ledger::leaf_hash(&entry.data);
            if let Some(provider) = addressee(event).filter(|p| webhooks.contains(p.as_str())) {
                let index = self.next_index + batch.events.len() as u64;
                let body = serde_json::to_string(&IndexedEvent {
                    index,
                    event: raw_json(&entry.data),
                })
                .expect("deliveries serialize");
                batch.deliveries.push(NewDelivery {
                    provider: provider.to_string(),
                    event_offset: batch.events.len(),
                    body,
                    due_ms: crate::webhook::unix_ms(),
                });
            }
            batch.events.push(entry);
        }
    }
}

/// The provider an event asks to act: offers, match offers, requests for quotes and
/// awards are announced to it by webhook.
fn addressee(event: &Event) -> Option<&ProviderId> {
    match &event.kind {
        EventKind::OfferSent { provider, .. }
        | EventKind::MatchOffered { provider, .. }
        | EventKind::RfqSent { provider, .. }
        | EventKind::AwardMade { provider, .. } => Some(provider),
        _ => None,
    }
}

/// `{"need": …, "events": [{"index": …, "event": …}, …]}`, quoting each event's stored
/// bytes as they are. Written by hand: the bytes are the engine's own JSON, so parsing
/// them again (as `RawValue` would) only costs the writer time. The same text as
/// serializing [`IndexedEvent`]s, as a test checks.
fn command_body(first: u64, events: &[NewEvent]) -> String {
    let size: usize = events.iter().map(|e| e.data.len() + 32).sum();
    let mut body = String::with_capacity(size + 64);
    body.push_str("{\"need\":");
    match events.first() {
        Some(event) => {
            body.push_str(&serde_json::to_string(&event.need).expect("strings serialize"))
        }
        None => body.push_str("null"),
    }
    body.push_str(",\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        write!(body, "{{\"index\":{},\"event\":", first + i as u64).expect("writing to a string");
        body.push_str(std::str::from_utf8(&event.data).expect("events are UTF-8 JSON"));
        body.push('}');
    }
    body.push_str("]}");
    body
}

/// An event with its position in the log, its bytes quoted exactly as stored.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct IndexedEvent {
    /// Position in the log, from 0: the ledger's leaf index.
    pub index: u64,
    /// The event: `type`, its fields, `need` and `at` (docs/events.md).
    #[schema(value_type = Object)]
    pub event: Box<RawValue>,
}

/// Stored event bytes, embedded in a response without re-serializing them.
pub fn raw_json(bytes: &[u8]) -> Box<RawValue> {
    let text = String::from_utf8(bytes.to_vec()).expect("events are UTF-8 JSON");
    RawValue::from_string(text).expect("events are valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serde form the hand-written body must equal, byte for byte.
    fn by_serde(first: u64, events: &[NewEvent]) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            need: Option<&'a str>,
            events: Vec<IndexedEvent>,
        }
        let body = Body {
            need: events.first().map(|e| e.need.as_str()),
            events: events
                .iter()
                .enumerate()
                .map(|(i, event)| IndexedEvent {
                    index: first + i as u64,
                    event: raw_json(&event.data),
                })
                .collect(),
        };
        serde_json::to_string(&body).unwrap()
    }

    #[test]
    fn command_bodies_are_what_serde_writes() {
        let event = |need: &str, data: &str| NewEvent {
            need: need.into(),
            kind: "offer_sent".into(),
            at: "2025-01-21T09:00:00Z".into(),
            data: data.as_bytes().to_vec(),
            leaf_hash: [0; 32],
        };
        let cases = [
            vec![],
            vec![event(
                "n1",
                r#"{"type":"need_completed","need":"n1","at":"2025-01-21T09:00:00Z"}"#,
            )],
            vec![
                event(
                    "n-2.b",
                    r#"{"type":"need_cancelled","reason":"a \"quoted\" \\ reason","need":"n-2.b","at":"2025-01-21T09:00:00Z"}"#,
                ),
                event(
                    "n-2.b",
                    r#"{"type":"need_expired","gpus":8,"need":"n-2.b","at":"2025-01-22T09:00:00Z"}"#,
                ),
            ],
        ];
        for (first, events) in [0u64, 9, 123_456_789].into_iter().zip(&cases) {
            assert_eq!(command_body(first, events), by_serde(first, events));
        }
    }
}
