//! The server store: a PostgreSQL database that several broker replicas share.
//!
//! Appends take turns under one transaction-scoped advisory lock, taken by
//! [`Store::begin_exclusive`]: the writer that holds it reads what others committed,
//! numbers its entries after the last one and commits before the next writer may
//! begin, so the log has one total order and no gaps. Each commit sends a `NOTIFY` so
//! that the other replicas catch up at once rather than at their next poll.
//!
//! The `postgres` client drives its own small runtime, which cannot run inside another
//! one; calls made from async code run on a short-lived thread of their own.

use std::sync::Mutex;
use std::time::Duration;

use fallible_iterator::FallibleIterator as _;
use postgres::{Client, NoTls, Row};

use crate::location::redact;
use crate::{
    Batch, Delivery, IdempotentResponse, LogVisitor, NeedRow, Result, Store, StoreError,
    StoredEvent, StoredToken, TokenRow,
};

/// The advisory lock that serializes appends to the log.
const LOG_LOCK: i64 = 0x726f_6672_6c6f_6701;
/// The advisory lock held while migrations run, so replicas starting together apply
/// each one once.
const MIGRATION_LOCK: i64 = 0x726f_6672_6d69_6701;
/// The channel each commit notifies with the new length of the log.
pub const CHANNEL: &str = "rofr_log";

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    idx BIGINT PRIMARY KEY,
    need TEXT COLLATE "C" NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    data BYTEA NOT NULL,
    leaf_hash BYTEA
);
CREATE INDEX events_need ON events (need, idx);
CREATE TABLE needs (
    id TEXT COLLATE "C" PRIMARY KEY,
    status TEXT NOT NULL,
    sku TEXT NOT NULL,
    gpus INTEGER NOT NULL,
    awarded INTEGER NOT NULL,
    holder TEXT,
    submitted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    next_deadline TEXT,
    first_event BIGINT NOT NULL,
    last_event BIGINT NOT NULL
);
CREATE INDEX needs_status ON needs (status, id);
CREATE TABLE idempotency (
    party TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (party, key)
);
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY,
    party TEXT NOT NULL,
    provider TEXT,
    label TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE webhooks (
    provider TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE deliveries (
    id BIGSERIAL PRIMARY KEY,
    provider TEXT NOT NULL,
    event_index BIGINT NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_ms) WHERE status = 'pending';
CREATE INDEX deliveries_provider ON deliveries (provider, id);
CREATE TABLE checkpoints (
    size BIGINT PRIMARY KEY,
    note TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"#];

fn pg(doing: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |error| StoreError::Postgres {
        doing,
        message: describe(&error),
    }
}

/// An error with its causes, `: `-separated.
fn describe(error: &postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Runs `f` where the client's own runtime may block: on this thread, or on a
/// short-lived one when this thread is driving async tasks.
fn blocking<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

fn connect(url: &str) -> Result<Client> {
    blocking(|| Client::connect(url, NoTls)).map_err(|error| {
        let missing = error
            .as_db_error()
            .is_some_and(|e| *e.code() == postgres::error::SqlState::INVALID_CATALOG_NAME);
        let hint = if missing {
            " (rofr does not create databases: make it first, e.g. `createdb NAME`)"
        } else {
            ""
        };
        StoreError::Setup(format!(
            "cannot connect to {}: {}{hint}",
            redact(url),
            describe(&error)
        ))
    })
}

pub struct PostgresStore {
    url: String,
    client: Mutex<Option<Client>>,
    in_transaction: bool,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // Dropping the client stops its runtime, which must not happen on a thread
        // that drives async tasks.
        if let Some(client) = self.client.get_mut().ok().and_then(Option::take) {
            blocking(move || drop(client));
        }
    }
}

impl PostgresStore {
    /// Connects, leaving the schema as it is.
    fn connected(url: &str) -> Result<PostgresStore> {
        Ok(PostgresStore {
            url: url.to_owned(),
            client: Mutex::new(Some(connect(url)?)),
            in_transaction: false,
        })
    }

    /// Connects and brings the schema up to date.
    pub fn open(url: &str) -> Result<PostgresStore> {
        let mut store = PostgresStore::connected(url)?;
        store.migrate()?;
        Ok(store)
    }

    /// Connects and applies the migrations not yet applied; returns the schema version
    /// before and after.
    pub fn migrate_url(url: &str) -> Result<(usize, usize)> {
        let mut store = PostgresStore::connected(url)?;
        let before = store.with(schema_version)?;
        store.migrate()?;
        let after = store.with(schema_version)?;
        Ok((before, after))
    }

    /// Runs one statement on the server that `url` points at, outside a transaction
    /// (creating and dropping databases).
    pub(crate) fn admin(url: &str, sql: &str) -> Result<()> {
        let mut client = connect(url)?;
        let done = blocking(|| client.batch_execute(sql)).map_err(pg("managing a database"));
        blocking(move || drop(client));
        done
    }

    /// Waits for commits by any broker on the database at `url` and calls `changed`
    /// after each (and at least every `poll`, in case a notice is missed), on a thread
    /// of its own, until `changed` returns false.
    pub fn watch(
        url: &str,
        poll: Duration,
        mut changed: impl FnMut() -> bool + Send + 'static,
    ) -> Result<()> {
        let mut client = connect(url)?;
        blocking(|| client.batch_execute(&format!("LISTEN {CHANNEL}")))
            .map_err(pg("listening for commits"))?;
        std::thread::Builder::new()
            .name("rofr-listen".into())
            .spawn(move || loop {
                let mut notifications = client.notifications();
                let mut waiting = notifications.timeout_iter(poll);
                let went_on = match waiting.next() {
                    Ok(_) => changed(),
                    // Gone with the broker that listened, or the connection lost.
                    Err(_) if !changed() => false,
                    Err(error) => {
                        tracing::warn!(%error, "the commit listener lost its connection; polling only");
                        loop {
                            std::thread::sleep(poll);
                            if !changed() {
                                break;
                            }
                        }
                        false
                    }
                };
                if !went_on {
                    return;
                }
            })
            .map_err(|e| StoreError::Setup(format!("cannot start the commit listener: {e}")))?;
        Ok(())
    }

    fn migrate(&mut self) -> Result<usize> {
        self.with(|c| {
            // Under the lock from the start: two sessions creating the same table at
            // once can both fail `IF NOT EXISTS`.
            c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
                .map_err(pg("waiting for other migrations"))?;
            let ran = c
                .batch_execute("CREATE TABLE IF NOT EXISTS rofr_schema (version INTEGER NOT NULL);")
                .map_err(pg("preparing the schema table"))
                .and_then(|()| apply_migrations(c));
            let unlocked = c
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                .map_err(pg("ending migrations"));
            let ran = ran?;
            unlocked?;
            Ok(ran)
        })
    }

    /// The number of migrations applied.
    pub fn schema_version(&self) -> Result<usize> {
        self.with(schema_version)
    }

    /// The rows of one query, each made into a `T`.
    fn select<T: Send>(
        &self,
        doing: &'static str,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        row: impl Fn(&Row) -> T + Send,
    ) -> Result<Vec<T>> {
        self.with(|c| {
            let rows = c.query(sql, params).map_err(pg(doing))?;
            Ok(rows.iter().map(row).collect())
        })
    }

    /// Runs `f` with the connection. A connection the server closed is replaced
    /// first, unless a transaction was open on it: then the calls fail until `abort`,
    /// so nothing of that transaction is written outside it.
    fn with<T: Send>(&self, f: impl FnOnce(&mut Client) -> T + Send) -> T {
        let mut guard = self.client.lock().expect("client lock poisoned");
        let client = guard
            .as_mut()
            .expect("the client lives as long as the store");
        if client.is_closed() && !self.in_transaction {
            match connect(&self.url) {
                Ok(fresh) => {
                    tracing::warn!("reconnected to the database");
                    let old = std::mem::replace(client, fresh);
                    blocking(move || drop(old));
                }
                Err(error) => tracing::warn!(%error, "cannot reconnect to the database"),
            }
        }
        blocking(|| f(client))
    }

    /// Deliveries meeting `condition`, with their provider's current webhook.
    fn deliveries_where(
        &self,
        condition: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT d.id, d.provider, d.event_index, d.body, d.status, d.attempts, d.next_attempt_ms, d.last_error,
                    w.url, w.secret
             FROM deliveries d LEFT JOIN webhooks w ON w.provider = d.provider WHERE {condition}"
        );
        self.select("reading deliveries", &sql, params, delivery)
    }
}

fn schema_version(c: &mut Client) -> Result<usize> {
    let made: bool = c
        .query_one("SELECT to_regclass('rofr_schema') IS NOT NULL", &[])
        .map_err(pg("reading the schema version"))?
        .get(0);
    if !made {
        return Ok(0);
    }
    let row = c
        .query_opt("SELECT version FROM rofr_schema", &[])
        .map_err(pg("reading the schema version"))?;
    Ok(row.map_or(0, |r| r.get::<_, i32>(0) as usize))
}

fn apply_migrations(c: &mut Client) -> Result<usize> {
    let version = schema_version(c)?;
    let mut ran = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let mut tx = c.transaction().map_err(pg("starting a migration"))?;
        tx.batch_execute(sql).map_err(pg("running a migration"))?;
        tx.execute("DELETE FROM rofr_schema", &[])
            .map_err(pg("recording the schema version"))?;
        tx.execute(
            "INSERT INTO rofr_schema (version) VALUES ($1)",
            &[&((i + 1) as i32)],
        )
        .map_err(pg("recording the schema version"))?;
        tx.commit().map_err(pg("committing a migration"))?;
        ran += 1;
    }
    Ok(ran)
}

impl Store for PostgresStore {
    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_opt("SELECT value FROM meta WHERE key = $1", &[&key])
                .map(|row| row.map(|r| r.get(0)))
                .map_err(pg("reading settings"))
        })
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
            )
            .map_err(pg("writing settings"))
        })?;
        Ok(())
    }

    fn init_meta(&mut self, key: &str, value: &str) -> Result<String> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                &[&key, &value],
            )
            .map_err(pg("writing settings"))?;
            c.query_one("SELECT value FROM meta WHERE key = $1", &[&key])
                .map(|r| r.get(0))
                .map_err(pg("reading settings"))
        })
    }

    fn all_events(&self) -> Result<Vec<StoredEvent>> {
        self.events_after(None, u32::MAX)
    }

    fn events_after(&self, after: Option<u64>, limit: u32) -> Result<Vec<StoredEvent>> {
        let after = after.map_or(-1, |a| a as i64);
        self.select("reading events", "SELECT idx, need, kind, at, data, leaf_hash FROM events WHERE idx > $1 ORDER BY idx LIMIT $2", &[&after, &i64::from(limit)], stored_event)
    }

    fn events_of(&self, need: &str, _projected: bool) -> Result<Vec<StoredEvent>> {
        // By the log's index by need.
        self.select(
            "reading a need's events",
            "SELECT idx, need, kind, at, data, leaf_hash FROM events WHERE need = $1 ORDER BY idx",
            &[&need],
            stored_event,
        )
    }

    fn event_count(&self) -> Result<u64> {
        self.with(|c| {
            c.query_one("SELECT COUNT(*) FROM events", &[])
                .map(|r| r.get::<_, i64>(0) as u64)
                .map_err(pg("counting events"))
        })
    }

    fn begin_exclusive(&mut self) -> Result<()> {
        self.with(|c| {
            c.batch_execute("BEGIN").map_err(pg("starting a commit"))?;
            c.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK])
                .map_err(pg("waiting for the log's write lock"))
        })?;
        self.in_transaction = true;
        Ok(())
    }

    fn abort(&mut self) -> Result<()> {
        if std::mem::take(&mut self.in_transaction) {
            self.with(|c| c.batch_execute("ROLLBACK").map_err(pg("rolling back")))?;
        }
        Ok(())
    }

    fn commit(&mut self, batch: &Batch) -> Result<u64> {
        // The flag stays up during the call, so a lost connection is not replaced
        // under an open transaction.
        let open = self.in_transaction;
        let written = self.with(|c| {
            if !open {
                c.batch_execute("BEGIN").map_err(pg("starting a commit"))?;
                c.execute("SELECT pg_advisory_xact_lock($1)", &[&LOG_LOCK])
                    .map_err(pg("waiting for the log's write lock"))?;
            }
            let first = write_batch(c, batch);
            match first {
                Ok(first) => {
                    c.batch_execute("COMMIT").map_err(pg("committing"))?;
                    Ok(first)
                }
                Err(error) => {
                    let _ = c.batch_execute("ROLLBACK");
                    Err(error)
                }
            }
        });
        self.in_transaction = false;
        written
    }

    fn idempotent(&self, party: &str, key: &str) -> Result<Option<IdempotentResponse>> {
        self.with(|c| {
            c.query_opt(
                "SELECT request_hash, status, body FROM idempotency WHERE party = $1 AND key = $2",
                &[&party, &key],
            )
            .map(|row| {
                row.map(|r| IdempotentResponse {
                    party: party.to_owned(),
                    key: key.to_owned(),
                    request_hash: r.get(0),
                    status: r.get::<_, i32>(1) as u16,
                    body: r.get(2),
                })
            })
            .map_err(pg("reading an idempotency key"))
        })
    }

    fn list_needs(
        &self,
        status: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NeedRow>> {
        let after = after.unwrap_or("");
        let limit = i64::from(limit);
        // Two statements, so that a list by status is planned on the index by status.
        match status {
            Some(status) => self.select("listing needs", "SELECT id, status, sku, gpus, awarded, holder, submitted_at, updated_at, next_deadline,
                            first_event, last_event
                     FROM needs WHERE status = $1 AND id > $2 ORDER BY status, id LIMIT $3", &[&status, &after, &limit], need_row),
            None => self.select("listing needs", "SELECT id, status, sku, gpus, awarded, holder, submitted_at, updated_at, next_deadline,
                            first_event, last_event
                     FROM needs WHERE id > $1 ORDER BY id LIMIT $2", &[&after, &limit], need_row),
        }
    }

    fn set_webhook(&mut self, provider: &str, url: &str, secret: &str, now: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO webhooks (provider, url, secret, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (provider) DO UPDATE SET url = excluded.url, secret = excluded.secret,
                   updated_at = excluded.updated_at",
                &[&provider, &url, &secret, &now],
            )
            .map_err(pg("storing a webhook"))
        })?;
        Ok(())
    }

    fn webhooks(&self) -> Result<Vec<(String, String, String)>> {
        self.select(
            "listing webhooks",
            "SELECT provider, url, secret FROM webhooks ORDER BY provider",
            &[],
            |r| (r.get(0), r.get(1), r.get(2)),
        )
    }

    fn claim_deliveries(
        &mut self,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        // Rows another replica is claiming right now are skipped, not waited for.
        let claimed: Vec<i64> = self.select(
            "claiming webhook deliveries",
            "UPDATE deliveries SET next_attempt_ms = $2 + $3
             WHERE id IN (SELECT id FROM deliveries
                          WHERE status = 'pending' AND next_attempt_ms <= $2
                          ORDER BY next_attempt_ms, id LIMIT $1
                          FOR UPDATE SKIP LOCKED)
             RETURNING id",
            &[&i64::from(limit), &now_ms, &lease_ms],
            |r| r.get(0),
        )?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        self.deliveries_where("d.id = ANY($1) ORDER BY d.id", &[&claimed])
    }

    fn list_deliveries(&self, status: Option<&str>, limit: u32) -> Result<Vec<Delivery>> {
        self.deliveries_where(
            "($1::TEXT IS NULL OR d.status = $1) ORDER BY d.id DESC LIMIT $2",
            &[&status, &i64::from(limit)],
        )
    }

    fn record_attempt(
        &mut self,
        id: i64,
        status: &str,
        next_attempt_ms: i64,
        error: Option<&str>,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE deliveries SET status = $2, attempts = attempts + 1, next_attempt_ms = $3, last_error = $4
                 WHERE id = $1",
                &[&id, &status, &next_attempt_ms, &error],
            )
            .map_err(pg("recording a delivery attempt"))
        })?;
        Ok(())
    }

    fn scan_log(&self, visit: &mut LogVisitor<'_>) -> Result<()> {
        // In pages, so that memory stays flat however long the log is.
        const PAGE: i64 = 10_000;
        let mut after = -1i64;
        loop {
            let rows = self.with(|c| {
                c.query(
                    "SELECT idx, data, leaf_hash FROM events WHERE idx > $1 ORDER BY idx LIMIT $2",
                    &[&after, &PAGE],
                )
                .map_err(pg("scanning the log"))
            })?;
            for row in &rows {
                let index: i64 = row.get(0);
                let data: &[u8] = row.get(1);
                let hash: Option<&[u8]> = row.get(2);
                if !visit(index as u64, data, hash) {
                    return Ok(());
                }
                after = index;
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn add_checkpoint(&mut self, size: u64, note: &str, created_at: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO checkpoints (size, note, created_at) VALUES ($1, $2, $3)
                 ON CONFLICT (size) DO NOTHING",
                &[&(size as i64), &note, &created_at],
            )
            .map_err(pg("storing a checkpoint"))
        })?;
        Ok(())
    }

    fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        self.select(
            "reading checkpoints",
            "SELECT size, note FROM checkpoints ORDER BY size",
            &[],
            |r| (r.get::<_, i64>(0) as u64, r.get(1)),
        )
    }

    fn cosign_checkpoint(&mut self, size: u64, note: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "UPDATE checkpoints SET note = $2 WHERE size = $1",
                &[&(size as i64), &note],
            )
            .map_err(pg("storing a checkpoint's cosignatures"))
        })?;
        Ok(())
    }

    fn create_token(&mut self, hash: &str, token: &TokenRow, created_at: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO tokens (hash, party, provider, label, created_at) VALUES ($1, $2, $3, $4, $5)",
                &[&hash, &token.party, &token.provider, &token.label, &created_at],
            )
            .map_err(pg("storing a token"))
        })?;
        Ok(())
    }

    fn token(&self, hash: &str) -> Result<Option<TokenRow>> {
        self.with(|c| {
            c.query_opt(
                "SELECT party, provider, label FROM tokens WHERE hash = $1",
                &[&hash],
            )
            .map(|row| {
                row.map(|r| TokenRow {
                    party: r.get(0),
                    provider: r.get(1),
                    label: r.get(2),
                })
            })
            .map_err(pg("reading a token"))
        })
    }

    fn tokens(&self) -> Result<Vec<StoredToken>> {
        self.select(
            "listing tokens",
            "SELECT hash, party, provider, label, created_at FROM tokens ORDER BY created_at, label",
            &[],
            |r| StoredToken {
                hash: r.get(0),
                row: TokenRow {
                    party: r.get(1),
                    provider: r.get(2),
                    label: r.get(3),
                },
                created_at: r.get(4),
            },
        )
    }

    fn delete_token(&mut self, hash: &str) -> Result<bool> {
        let deleted = self.with(|c| {
            c.execute("DELETE FROM tokens WHERE hash = $1", &[&hash])
                .map_err(pg("deleting a token"))
        })?;
        Ok(deleted > 0)
    }
}

/// Writes a batch inside the open, locked transaction: one statement per table, the
/// rows passed as arrays. Returns the index of the first new event.
fn write_batch(c: &mut Client, batch: &Batch) -> Result<u64> {
    let first: i64 = c
        .query_one("SELECT COALESCE(MAX(idx) + 1, 0) FROM events", &[])
        .map_err(pg("finding the end of the log"))?
        .get(0);
    if !batch.events.is_empty() {
        let index: Vec<i64> = (0..batch.events.len() as i64).map(|i| first + i).collect();
        let need: Vec<&str> = batch.events.iter().map(|e| e.need.as_str()).collect();
        let kind: Vec<&str> = batch.events.iter().map(|e| e.kind.as_str()).collect();
        let at: Vec<&str> = batch.events.iter().map(|e| e.at.as_str()).collect();
        let data: Vec<&[u8]> = batch.events.iter().map(|e| e.data.as_slice()).collect();
        let hash: Vec<&[u8]> = batch
            .events
            .iter()
            .map(|e| e.leaf_hash.as_slice())
            .collect();
        c.execute(
            "INSERT INTO events (idx, need, kind, at, data, leaf_hash)
             SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BYTEA[], $6::BYTEA[])",
            &[&index, &need, &kind, &at, &data, &hash],
        )
        .map_err(pg("appending events"))?;
    }
    if batch.reset_projection {
        c.execute("DELETE FROM needs", &[])
            .map_err(pg("clearing the projection"))?;
    }
    upsert_needs(c, &batch.needs)?;
    if !batch.deliveries.is_empty() {
        let provider: Vec<&str> = batch
            .deliveries
            .iter()
            .map(|d| d.provider.as_str())
            .collect();
        let index: Vec<i64> = batch
            .deliveries
            .iter()
            .map(|d| first + d.event_offset as i64)
            .collect();
        let body: Vec<&str> = batch.deliveries.iter().map(|d| d.body.as_str()).collect();
        let due: Vec<i64> = batch.deliveries.iter().map(|d| d.due_ms).collect();
        c.execute(
            "INSERT INTO deliveries (provider, event_index, body, status, next_attempt_ms)
             SELECT p, i, b, 'pending', d FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[]) AS t(p, i, b, d)",
            &[&provider, &index, &body, &due],
        )
        .map_err(pg("queueing webhook deliveries"))?;
    }
    if !batch.idempotency.is_empty() {
        let party: Vec<&str> = batch.idempotency.iter().map(|a| a.party.as_str()).collect();
        let key: Vec<&str> = batch.idempotency.iter().map(|a| a.key.as_str()).collect();
        let hash: Vec<&str> = batch
            .idempotency
            .iter()
            .map(|a| a.request_hash.as_str())
            .collect();
        let status: Vec<i32> = batch
            .idempotency
            .iter()
            .map(|a| i32::from(a.status))
            .collect();
        let body: Vec<&str> = batch.idempotency.iter().map(|a| a.body.as_str()).collect();
        c.execute(
            "INSERT INTO idempotency (party, key, request_hash, status, body)
             SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::INTEGER[], $5::TEXT[])",
            &[&party, &key, &hash, &status, &body],
        )
        .map_err(pg("recording idempotency keys"))?;
    }
    let end = first + batch.events.len() as i64;
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &end.to_string()])
        .map_err(pg("notifying other brokers"))?;
    Ok(first as u64)
}

fn upsert_needs(c: &mut Client, rows: &[NeedRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let id: Vec<&str> = rows.iter().map(|n| n.id.as_str()).collect();
    let status: Vec<&str> = rows.iter().map(|n| n.status.as_str()).collect();
    let sku: Vec<&str> = rows.iter().map(|n| n.sku.as_str()).collect();
    let gpus: Vec<i32> = rows.iter().map(|n| n.gpus as i32).collect();
    let awarded: Vec<i32> = rows.iter().map(|n| n.awarded as i32).collect();
    let holder: Vec<Option<&str>> = rows.iter().map(|n| n.holder.as_deref()).collect();
    let submitted: Vec<&str> = rows.iter().map(|n| n.submitted_at.as_str()).collect();
    let updated: Vec<&str> = rows.iter().map(|n| n.updated_at.as_str()).collect();
    let deadline: Vec<Option<&str>> = rows.iter().map(|n| n.next_deadline.as_deref()).collect();
    let first: Vec<i64> = rows.iter().map(|n| n.first_event as i64).collect();
    let last: Vec<i64> = rows.iter().map(|n| n.last_event as i64).collect();
    c.execute(
        "INSERT INTO needs (id, status, sku, gpus, awarded, holder, submitted_at, updated_at, next_deadline,
                            first_event, last_event)
         SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::INTEGER[], $5::INTEGER[], $6::TEXT[],
                              $7::TEXT[], $8::TEXT[], $9::TEXT[], $10::BIGINT[], $11::BIGINT[])
         ON CONFLICT (id) DO UPDATE SET status = excluded.status, awarded = excluded.awarded, holder = excluded.holder,
           updated_at = excluded.updated_at, next_deadline = excluded.next_deadline,
           last_event = excluded.last_event",
        &[
            &id, &status, &sku, &gpus, &awarded, &holder, &submitted, &updated, &deadline, &first,
            &last,
        ],
    )
    .map_err(pg("updating the needs projection"))?;
    Ok(())
}

fn stored_event(r: &Row) -> StoredEvent {
    StoredEvent {
        index: r.get::<_, i64>(0) as u64,
        need: r.get(1),
        kind: r.get(2),
        at: r.get(3),
        data: r.get(4),
        leaf_hash: r.get(5),
    }
}

fn need_row(r: &Row) -> NeedRow {
    NeedRow {
        id: r.get(0),
        status: r.get(1),
        sku: r.get(2),
        gpus: r.get::<_, i32>(3) as u32,
        awarded: r.get::<_, i32>(4) as u32,
        holder: r.get(5),
        submitted_at: r.get(6),
        updated_at: r.get(7),
        next_deadline: r.get(8),
        first_event: r.get::<_, i64>(9) as u64,
        last_event: r.get::<_, i64>(10) as u64,
    }
}

fn delivery(r: &Row) -> Delivery {
    Delivery {
        id: r.get(0),
        provider: r.get(1),
        event_index: r.get::<_, i64>(2) as u64,
        body: r.get(3),
        status: r.get(4),
        attempts: r.get::<_, i32>(5) as u32,
        next_attempt_ms: r.get(6),
        last_error: r.get(7),
        url: r.get(8),
        secret: r.get(9),
    }
}
