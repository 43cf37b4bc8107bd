//! Durable storage for the broker: the event log (each event's JSON bytes exactly as
//! the ledger hashes them), the projections list queries read, each need's next
//! deadline, idempotency keys and party tokens.
//!
//! This crate is the only one that knows SQL. It knows nothing of the rules: it stores
//! bytes and rows that the server hands it, and every write is one transaction.
//!
//! Two backends implement [`Store`]: an embedded SQLite file (the default, one broker
//! process) and a PostgreSQL database, which several broker replicas can share. Where
//! they share one, [`Store::begin_exclusive`] makes their appends take turns, so the log
//! keeps one total order with no gaps.

mod location;
mod pg;
mod sqlite;

pub use location::{Location, ScratchDatabase};
pub use pg::PostgresStore;
pub use sqlite::SqliteStore;

/// Called for each entry of a log scan with (index, data, recorded leaf hash); returns
/// whether to go on.
pub type LogVisitor<'a> = dyn FnMut(u64, &[u8], Option<&[u8]>) -> bool + 'a;

/// What the broker needs of durable storage. SQLite implements it here; a server
/// database can implement it the same way. Every method is one round trip or one
/// transaction; none decides a rule.
pub trait Store: Send {
    fn meta(&self, key: &str) -> Result<Option<String>>;

    fn set_meta(&mut self, key: &str, value: &str) -> Result<()>;

    /// Records `value` under `key` unless something is recorded there already; returns
    /// what is recorded (so that brokers starting together agree on one value).
    fn init_meta(&mut self, key: &str, value: &str) -> Result<String>;

    /// Every stored event, in log order.
    fn all_events(&self) -> Result<Vec<StoredEvent>>;

    /// Up to `limit` events after index `after` (from the start where `None`).
    fn events_after(&self, after: Option<u64>, limit: u32) -> Result<Vec<StoredEvent>>;

    /// The events of one need, in log order. `projected`: the needs projection has
    /// rows for every entry of the log (as after the broker's flush), so an open need's
    /// events lie where its row says and the log after it need not be read.
    fn events_of(&self, need: &str, projected: bool) -> Result<Vec<StoredEvent>>;

    fn event_count(&self) -> Result<u64>;

    /// Opens the transaction one broker writes in. It holds the log's write lock until
    /// [`Store::commit`] or [`Store::abort`]: brokers sharing the database take turns,
    /// and every read made inside it sees all that was committed before it began.
    fn begin_exclusive(&mut self) -> Result<()>;

    /// Ends the transaction opened by [`Store::begin_exclusive`], writing nothing.
    fn abort(&mut self) -> Result<()>;

    /// Writes a whole batch in one transaction (the exclusive one, if open): events
    /// appended after the last one, projections replaced, idempotent answers recorded.
    /// Returns the index of the first new event.
    fn commit(&mut self, batch: &Batch) -> Result<u64>;

    fn idempotent(&self, party: &str, key: &str) -> Result<Option<IdempotentResponse>>;

    /// A page of the needs projection, ordered by id, optionally of one status.
    fn list_needs(
        &self,
        status: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NeedRow>>;

    /// Registers (or replaces) a provider's webhook.
    fn set_webhook(&mut self, provider: &str, url: &str, secret: &str, now: &str) -> Result<()>;

    /// Every registered webhook: provider, URL, secret.
    fn webhooks(&self) -> Result<Vec<(String, String, String)>>;

    /// Claims up to `limit` pending deliveries due at or before `now_ms`, oldest first:
    /// each is pushed `lease_ms` into the future, so that no other broker sharing the
    /// database takes it meanwhile, and comes back if this one stops before recording
    /// the attempt.
    fn claim_deliveries(&mut self, now_ms: i64, lease_ms: i64, limit: u32)
        -> Result<Vec<Delivery>>;

    /// A page of deliveries, newest first, optionally of one status.
    fn list_deliveries(&self, status: Option<&str>, limit: u32) -> Result<Vec<Delivery>>;

    /// Records the outcome of one delivery attempt.
    fn record_attempt(
        &mut self,
        id: i64,
        status: &str,
        next_attempt_ms: i64,
        error: Option<&str>,
    ) -> Result<()>;

    /// Streams the whole log in index order without copying it: `visit(index, data,
    /// recorded leaf hash)`; stops early when `visit` returns false.
    fn scan_log(&self, visit: &mut LogVisitor<'_>) -> Result<()>;

    /// Stores a signed checkpoint of the first `size` entries (kept forever).
    fn add_checkpoint(&mut self, size: u64, note: &str, created_at: &str) -> Result<()>;

    /// Every stored checkpoint, by size.
    fn checkpoints(&self) -> Result<Vec<(u64, String)>>;

    /// Replaces the note of the checkpoint of `size` with the same note carrying more
    /// signature lines: witnesses' cosignatures.
    fn cosign_checkpoint(&mut self, size: u64, note: &str) -> Result<()>;

    fn create_token(&mut self, hash: &str, token: &TokenRow, created_at: &str) -> Result<()>;

    fn token(&self, hash: &str) -> Result<Option<TokenRow>>;

    /// Every token, oldest first.
    fn tokens(&self) -> Result<Vec<StoredToken>>;

    /// Deletes the token with this hash; whether there was one.
    fn delete_token(&mut self, hash: &str) -> Result<bool>;
}

/// Why storage failed. Every variant carries the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error while {doing}: {source}")]
    Database {
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    /// The server's own words, with the causes `postgres` keeps behind its short
    /// message ("db error", "error connecting to server").
    #[error("database error while {doing}: {message}")]
    Postgres {
        doing: &'static str,
        message: String,
    },
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Conflict(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One event as stored: its position in the log and its JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the log, from 0. The ledger's leaf index.
    pub index: u64,
    pub need: String,
    pub kind: String,
    pub at: String,
    pub data: Vec<u8>,
    /// The RFC 9162 leaf hash recorded when the entry was appended (absent in logs
    /// written before the ledger existed).
    pub leaf_hash: Option<Vec<u8>>,
}

/// A row of the needs projection: what list queries read. The broker writes rows up to
/// about a second after the log, and before any list query; at start the projection is
/// checked against the log and rebuilt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NeedRow {
    pub id: String,
    pub status: String,
    pub sku: String,
    pub gpus: u32,
    pub awarded: u32,
    pub holder: Option<String>,
    pub submitted_at: String,
    pub updated_at: String,
    /// The need's next deadline (RFC 3339), if any.
    pub next_deadline: Option<String>,
    /// Log indexes of the need's first and latest events (bounds for reading them).
    /// An update keeps the stored `first_event`.
    pub first_event: u64,
    pub last_event: u64,
}

/// The answer stored under an idempotency key, replayed on a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentResponse {
    pub party: String,
    pub key: String,
    /// A hash of the request, so that a key reused for another request is refused.
    pub request_hash: String,
    pub status: u16,
    pub body: String,
}

/// Everything one group commit writes.
#[derive(Debug, Default)]
pub struct Batch {
    /// New events, appended in order after the last stored one.
    pub events: Vec<NewEvent>,
    /// Projection rows to insert or replace.
    pub needs: Vec<NeedRow>,
    /// Whether `needs` is the whole projection, replacing every row (when the stored
    /// one disagreed with the log).
    pub reset_projection: bool,
    pub idempotency: Vec<IdempotentResponse>,
    /// Webhook deliveries to queue, each for one of this batch's events.
    pub deliveries: Vec<NewDelivery>,
}

impl Batch {
    /// Whether committing it would write nothing.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.needs.is_empty()
            && self.idempotency.is_empty()
            && !self.reset_projection
    }
}

/// A webhook delivery to queue with a batch.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub provider: String,
    /// Which of the batch's events it carries (0 is the batch's first).
    pub event_offset: usize,
    pub body: String,
    /// When to make the first attempt, in Unix milliseconds.
    pub due_ms: i64,
}

/// A queued webhook delivery and its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub provider: String,
    pub event_index: u64,
    pub body: String,
    /// `pending`, `delivered` or `failed` (gave up after the last retry).
    pub status: String,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    /// The provider's current webhook URL and secret, if it still has one.
    pub url: Option<String>,
    pub secret: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub need: String,
    pub kind: String,
    pub at: String,
    pub data: Vec<u8>,
    /// SHA-256(0x00 ‖ data), the entry's leaf in the ledger's Merkle tree.
    pub leaf_hash: [u8; 32],
}

/// Which party a bearer token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub party: String,
    pub provider: Option<String>,
    pub label: String,
}

/// A stored token as listed: its hash (the token itself is never stored), whom it
/// speaks for, and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub hash: String,
    pub row: TokenRow,
    pub created_at: String,
}
