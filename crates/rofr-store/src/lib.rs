//! Durable storage for the broker: the event log (each event's JSON bytes exactly as
//! the ledger hashes them), the projections list queries read, each need's next
//! deadline, idempotency keys and party tokens.
//!
//! This crate is the only one that knows SQL. It knows nothing of the rules: it stores
//! bytes and rows that the server hands it, and every write is one transaction.

mod sqlite;

pub use sqlite::SqliteStore;

/// Why storage failed. Every variant carries the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error while {doing}: {source}")]
    Database {
        doing: &'static str,
        #[source]
        source: rusqlite::Error,
    },
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
}

/// A row of the needs projection: what list queries read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedRow {
    pub id: String,
    pub status: String,
    pub sku: String,
    pub gpus: u32,
    pub awarded: u32,
    pub holder: Option<String>,
    pub submitted_at: String,
    pub updated_at: String,
    /// The need's next deadline (RFC 3339), if any: the durable timer.
    pub next_deadline: Option<String>,
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
    pub idempotency: Vec<IdempotentResponse>,
    /// Webhook deliveries to queue, each for one of this batch's events.
    pub deliveries: Vec<NewDelivery>,
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
}

/// Which party a bearer token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub party: String,
    pub provider: Option<String>,
    pub label: String,
}
