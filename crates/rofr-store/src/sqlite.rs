//! The embedded store: one SQLite file in WAL mode with full synchronous commits, so a
//! commit that returned is on disk.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{LogVisitor, Store};

use crate::{
    Batch, Delivery, IdempotentResponse, NeedRow, Result, StoreError, StoredEvent, StoredToken,
    TokenRow,
};

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE events (
    idx INTEGER PRIMARY KEY,
    need TEXT NOT NULL,
    kind TEXT NOT NULL,
    at TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX events_need ON events (need, idx);
CREATE TABLE needs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    sku TEXT NOT NULL,
    gpus INTEGER NOT NULL,
    awarded INTEGER NOT NULL,
    holder TEXT,
    submitted_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    next_deadline TEXT
);
CREATE INDEX needs_status ON needs (status, id);
CREATE INDEX needs_deadline ON needs (next_deadline) WHERE next_deadline IS NOT NULL;
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
"#,
    r#"
CREATE TABLE webhooks (
    provider TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY,
    provider TEXT NOT NULL,
    event_index INTEGER NOT NULL,
    body TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_ms) WHERE status = 'pending';
CREATE INDEX deliveries_provider ON deliveries (provider, id);
"#,
    // The log loses its index by need (it halved the append rate); the projection
    // records where each need's events lie instead.
    r#"
DROP INDEX events_need;
DROP INDEX needs_deadline;
ALTER TABLE needs ADD COLUMN first_event INTEGER NOT NULL DEFAULT 0;
ALTER TABLE needs ADD COLUMN last_event INTEGER NOT NULL DEFAULT 0;
"#,
    // The ledger: each entry's RFC 9162 leaf hash beside its bytes, and every signed
    // checkpoint.
    r#"
ALTER TABLE events ADD COLUMN leaf_hash BLOB;
CREATE TABLE checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"#,
    // Each need's runs of entries, `first-last,` for every batch of rows that wrote it:
    // a need whose events lie far apart (submitted early, completed late) is read from
    // its runs rather than by scanning everything between its first and last entry.
    // Rows already written hold one run, their bounds.
    r#"
ALTER TABLE needs ADD COLUMN runs TEXT NOT NULL DEFAULT '';
UPDATE needs SET runs = first_event || '-' || last_event || ',';
"#,
];

fn db(doing: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Database { doing, source }
}

pub struct SqliteStore {
    conn: Connection,
    /// Whether `begin_exclusive` opened a transaction that `commit` or `abort` ends.
    in_transaction: bool,
}

impl SqliteStore {
    /// Opens (creating if need be) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let conn = Connection::open(path).map_err(db("opening the database"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db("setting synchronous commits"))?;
        // An 8 MB page cache (appends touch the same few pages at the end of each
        // b-tree; 64 MB was no faster and held 57 MB more at 100,000 needs), and fewer,
        // larger WAL checkpoints, since each costs an fsync.
        conn.pragma_update(None, "cache_size", -8_000)
            .map_err(db("sizing the page cache"))?;
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)
            .map_err(db("setting the checkpoint interval"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db("setting the busy timeout"))?;
        let mut store = SqliteStore {
            conn,
            in_transaction: false,
        };
        store.migrate()?;
        Ok(store)
    }

    fn scan_mapped(&self, visit: &mut LogVisitor<'_>) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare("SELECT idx, data, leaf_hash FROM events ORDER BY idx")
            .map_err(db("scanning the log"))?;
        let mut rows = stmt.query([]).map_err(db("scanning the log"))?;
        while let Some(row) = rows.next().map_err(db("scanning the log"))? {
            let index = row.get::<_, i64>(0).map_err(db("scanning the log"))? as u64;
            let data = row
                .get_ref(1)
                .and_then(|v| Ok(v.as_blob()?))
                .map_err(db("scanning the log"))?;
            let hash = row
                .get_ref(2)
                .and_then(|v| Ok(v.as_blob_or_null()?))
                .map_err(db("scanning the log"))?;
            if !visit(index, data, hash) {
                break;
            }
        }
        Ok(())
    }

    /// Starts a thread that copies the write-ahead log into the database file in the
    /// background, on a connection of its own, so that a commit seldom finds the log
    /// long enough to copy it itself (SQLite's automatic checkpoint, at 10,000 pages,
    /// then finds little left to do). It looks every 20 ms while the log grows and
    /// backs off to once a second while it does not; it stops once `keep_going` says so.
    /// The checkpoints are PASSIVE: they never wait for, or block, the writer.
    pub fn spawn_checkpointer(
        path: &Path,
        keep_going: impl Fn() -> bool + Send + 'static,
    ) -> Result<()> {
        const BUSY: std::time::Duration = std::time::Duration::from_millis(20);
        const IDLE: std::time::Duration = std::time::Duration::from_secs(1);
        let conn = Connection::open(path).map_err(db("opening the database"))?;
        std::thread::Builder::new()
            .name("rofr-checkpointer".into())
            .spawn(move || {
                let mut pause = BUSY;
                let mut copied_before = -1i64;
                loop {
                    std::thread::sleep(pause);
                    if !keep_going() {
                        return;
                    }
                    // (busy, frames in the log, frames copied into the database)
                    let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    pause = match done {
                        Ok((_, copied)) if copied != copied_before => {
                            copied_before = copied;
                            BUSY
                        }
                        Ok(_) => (pause * 2).min(IDLE),
                        Err(error) => {
                            tracing::warn!(%error, "a background checkpoint failed; retrying");
                            IDLE
                        }
                    };
                }
            })
            .map_err(|e| StoreError::Setup(format!("cannot start the checkpointer thread: {e}")))?;
        Ok(())
    }

    /// The schema version of a database file, read without migrating it.
    pub fn version_of(path: &Path) -> Result<usize> {
        let conn = Connection::open(path).map_err(db("opening the database"))?;
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map(|v| v as usize)
            .map_err(db("reading the schema version"))
    }

    /// The number of migrations applied to this database.
    pub fn schema_version(&self) -> Result<usize> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map(|v| v as usize)
            .map_err(db("reading the schema version"))
    }

    /// Applies the migrations not yet applied; returns how many ran.
    pub fn migrate(&mut self) -> Result<usize> {
        let version: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db("reading the schema version"))?;
        let mut ran = 0;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self
                .conn
                .transaction()
                .map_err(db("starting a migration"))?;
            tx.execute_batch(sql).map_err(db("running a migration"))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(db("recording the schema version"))?;
            tx.commit().map_err(db("committing a migration"))?;
            ran += 1;
        }
        Ok(ran)
    }
}

impl Store for SqliteStore {
    fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(db("reading settings"))
    }

    fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(db("writing settings"))?;
        Ok(())
    }

    fn init_meta(&mut self, key: &str, value: &str) -> Result<String> {
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                params![key, value],
            )
            .map_err(db("writing settings"))?;
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .map_err(db("reading settings"))
    }

    fn all_events(&self) -> Result<Vec<StoredEvent>> {
        self.events_after(None, u32::MAX)
    }

    fn events_after(&self, after: Option<u64>, limit: u32) -> Result<Vec<StoredEvent>> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT idx, need, kind, at, data, leaf_hash FROM events WHERE idx > ?1 ORDER BY idx LIMIT ?2",
            )
            .map_err(db("reading events"))?;
        let after = after.map_or(-1, |a| a as i64);
        let rows = stmt
            .query_map(params![after, limit], stored_event)
            .map_err(db("reading events"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(db("reading events"))
    }

    fn events_of(&self, need: &str, projected: bool) -> Result<Vec<StoredEvent>> {
        // The log has no index by need (it would halve the append rate); the projection
        // keeps the runs of entries where each need's events lie instead. Events not yet
        // in the projection lie after its last entry, unless it is `projected`; a need
        // not yet in it at all is found by a full scan (unless it is `projected`: then
        // there is none), which only happens in the moment after it was submitted.
        let bounds: Option<(i64, i64, String, String)> = self
            .conn
            .query_row(
                "SELECT first_event, last_event, status, runs FROM needs WHERE id = ?1",
                [need],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db("reading a need's bounds"))?;
        let ranges = match bounds {
            Some((first, last, status, runs)) => {
                let closed = matches!(status.as_str(), "completed" | "expired" | "cancelled");
                let mut ranges = parse_runs(&runs).unwrap_or_else(|| vec![(first, last)]);
                if !closed && !projected {
                    ranges.push((last.saturating_add(1), i64::MAX));
                }
                merge_ranges(ranges)
            }
            // Every need with an entry has its row: there is none to find.
            None if projected => Vec::new(),
            None => vec![(0, i64::MAX)],
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT idx, need, kind, at, data, leaf_hash FROM events WHERE idx BETWEEN ?2 AND ?3 AND need = ?1 ORDER BY idx",
            )
            .map_err(db("reading a need's events"))?;
        let mut events = Vec::new();
        for (low, high) in ranges {
            let rows = stmt
                .query_map(params![need, low, high], stored_event)
                .map_err(db("reading a need's events"))?;
            for row in rows {
                events.push(row.map_err(db("reading a need's events"))?);
            }
        }
        Ok(events)
    }

    fn event_count(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(db("counting events"))
    }

    fn begin_exclusive(&mut self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(db("starting a commit"))?;
        self.in_transaction = true;
        Ok(())
    }

    fn abort(&mut self) -> Result<()> {
        if std::mem::take(&mut self.in_transaction) {
            self.conn
                .execute_batch("ROLLBACK")
                .map_err(db("rolling back"))?;
        }
        Ok(())
    }

    fn commit(&mut self, batch: &Batch) -> Result<u64> {
        if !std::mem::take(&mut self.in_transaction) {
            self.conn
                .execute_batch("BEGIN IMMEDIATE")
                .map_err(db("starting a commit"))?;
        }
        let written = write_batch(&self.conn, batch).and_then(|first| {
            self.conn
                .execute_batch("COMMIT")
                .map_err(db("committing"))?;
            Ok(first)
        });
        if written.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        written
    }

    fn idempotent(&self, party: &str, key: &str) -> Result<Option<IdempotentResponse>> {
        self.conn
            .query_row(
                "SELECT request_hash, status, body FROM idempotency WHERE party = ?1 AND key = ?2",
                params![party, key],
                |r| {
                    Ok(IdempotentResponse {
                        party: party.to_owned(),
                        key: key.to_owned(),
                        request_hash: r.get(0)?,
                        status: r.get(1)?,
                        body: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(db("reading an idempotency key"))
    }

    fn list_needs(
        &self,
        status: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<NeedRow>> {
        // Two statements, so that a list by status reads the index by status and id
        // (with `?1 IS NULL OR status = ?1` SQLite plans one scan by id for both, and a
        // status that few needs have was looked for through every row).
        let sql = if status.is_some() {
            "SELECT id, status, sku, gpus, awarded, holder, submitted_at, updated_at, next_deadline,
                    first_event, last_event
             FROM needs WHERE status = ?1 AND id > ?2 ORDER BY status, id LIMIT ?3"
        } else {
            "SELECT id, status, sku, gpus, awarded, holder, submitted_at, updated_at, next_deadline,
                    first_event, last_event
             FROM needs WHERE id > ?2 ORDER BY id LIMIT ?3"
        };
        // Both take the same three parameters; the list of all needs leaves ?1 unread.
        let mut stmt = self.conn.prepare_cached(sql).map_err(db("listing needs"))?;
        let rows = stmt
            .query_map(params![status, after.unwrap_or(""), limit], need_row)
            .map_err(db("listing needs"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(db("listing needs"))
    }

    fn set_webhook(&mut self, provider: &str, url: &str, secret: &str, now: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO webhooks (provider, url, secret, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (provider) DO UPDATE SET url = excluded.url, secret = excluded.secret,
                   updated_at = excluded.updated_at",
                params![provider, url, secret, now],
            )
            .map_err(db("storing a webhook"))?;
        Ok(())
    }

    fn webhooks(&self) -> Result<Vec<(String, String, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT provider, url, secret FROM webhooks ORDER BY provider")
            .map_err(db("listing webhooks"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db("listing webhooks"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(db("listing webhooks"))
    }

    fn claim_deliveries(
        &mut self,
        now_ms: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        let due = self.deliveries_where(
            "d.status = 'pending' AND d.next_attempt_ms <= ?1 ORDER BY d.next_attempt_ms, d.id LIMIT ?2",
            params![now_ms, limit],
        )?;
        let mut lease = self
            .conn
            .prepare_cached("UPDATE deliveries SET next_attempt_ms = ?2 WHERE id = ?1")
            .map_err(db("claiming webhook deliveries"))?;
        for delivery in &due {
            lease
                .execute(params![delivery.id, now_ms + lease_ms])
                .map_err(db("claiming webhook deliveries"))?;
        }
        Ok(due)
    }

    fn list_deliveries(&self, status: Option<&str>, limit: u32) -> Result<Vec<Delivery>> {
        self.deliveries_where(
            "(?1 IS NULL OR d.status = ?1) ORDER BY d.id DESC LIMIT ?2",
            params![status, limit],
        )
    }

    fn record_attempt(
        &mut self,
        id: i64,
        status: &str,
        next_attempt_ms: i64,
        error: Option<&str>,
    ) -> Result<()> {
        self.conn
            .execute(
                "UPDATE deliveries SET status = ?2, attempts = attempts + 1, next_attempt_ms = ?3, last_error = ?4
                 WHERE id = ?1",
                params![id, status, next_attempt_ms, error],
            )
            .map_err(db("recording a delivery attempt"))?;
        Ok(())
    }

    fn scan_log(&self, visit: &mut LogVisitor<'_>) -> Result<()> {
        // Reading through a memory map saves a system call per page on a full scan. The
        // map goes with the scan: left in place, every page the connection later reads
        // would stay mapped and count as the process's memory.
        self.conn
            .pragma_update(None, "mmap_size", 1i64 << 34)
            .map_err(db("mapping the database"))?;
        let scanned = self.scan_mapped(visit);
        let unmapped = self
            .conn
            .pragma_update(None, "mmap_size", 0)
            .map_err(db("unmapping the database"));
        scanned.and(unmapped)
    }

    fn add_checkpoint(&mut self, size: u64, note: &str, created_at: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO checkpoints (size, note, created_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (size) DO NOTHING",
                params![size as i64, note, created_at],
            )
            .map_err(db("storing a checkpoint"))?;
        Ok(())
    }

    fn checkpoints(&self) -> Result<Vec<(u64, String)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT size, note FROM checkpoints ORDER BY size")
            .map_err(db("reading checkpoints"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
            .map_err(db("reading checkpoints"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(db("reading checkpoints"))
    }

    fn cosign_checkpoint(&mut self, size: u64, note: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE checkpoints SET note = ?2 WHERE size = ?1",
                params![size as i64, note],
            )
            .map_err(db("storing a checkpoint's cosignatures"))?;
        Ok(())
    }

    fn create_token(&mut self, hash: &str, token: &TokenRow, created_at: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO tokens (hash, party, provider, label, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![hash, token.party, token.provider, token.label, created_at],
            )
            .map_err(db("storing a token"))?;
        Ok(())
    }

    fn token(&self, hash: &str) -> Result<Option<TokenRow>> {
        self.conn
            .query_row(
                "SELECT party, provider, label FROM tokens WHERE hash = ?1",
                [hash],
                |r| {
                    Ok(TokenRow {
                        party: r.get(0)?,
                        provider: r.get(1)?,
                        label: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(db("reading a token"))
    }

    fn tokens(&self) -> Result<Vec<StoredToken>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT hash, party, provider, label, created_at FROM tokens ORDER BY created_at, label",
            )
            .map_err(db("listing tokens"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(StoredToken {
                    hash: r.get(0)?,
                    row: TokenRow {
                        party: r.get(1)?,
                        provider: r.get(2)?,
                        label: r.get(3)?,
                    },
                    created_at: r.get(4)?,
                })
            })
            .map_err(db("listing tokens"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(db("listing tokens"))
    }

    fn delete_token(&mut self, hash: &str) -> Result<bool> {
        let deleted = self
            .conn
            .execute("DELETE FROM tokens WHERE hash = ?1", params![hash])
            .map_err(db("deleting a token"))?;
        Ok(deleted > 0)
    }
}

impl SqliteStore {
    fn deliveries_where(
        &self,
        condition: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT d.id, d.provider, d.event_index, d.body, d.status, d.attempts, d.next_attempt_ms, d.last_error,
                    w.url, w.secret
             FROM deliveries d LEFT JOIN webhooks w ON w.provider = d.provider WHERE {condition}"
        );
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(db("reading deliveries"))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok(Delivery {
                    id: r.get(0)?,
                    provider: r.get(1)?,
                    event_index: r.get::<_, i64>(2)? as u64,
                    body: r.get(3)?,
                    status: r.get(4)?,
                    attempts: r.get(5)?,
                    next_attempt_ms: r.get(6)?,
                    last_error: r.get(7)?,
                    url: r.get(8)?,
                    secret: r.get(9)?,
                })
            })
            .map_err(db("reading deliveries"))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(db("reading deliveries"))
    }
}

/// A need's runs of entries as the projection keeps them (`first-last,` each); `None`
/// where there are none or they do not read as runs.
fn parse_runs(runs: &str) -> Option<Vec<(i64, i64)>> {
    let ranges: Option<Vec<(i64, i64)>> = runs
        .split(',')
        .filter(|run| !run.is_empty())
        .map(|run| {
            let (low, high) = run.split_once('-')?;
            Some((low.parse().ok()?, high.parse().ok()?))
        })
        .collect();
    ranges.filter(|r| !r.is_empty())
}

/// `ranges` in order, those that overlap or touch made one.
fn merge_ranges(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for (low, high) in ranges {
        match merged.last_mut() {
            Some(last) if low <= last.1.saturating_add(1) => last.1 = last.1.max(high),
            _ => merged.push((low, high)),
        }
    }
    merged
}

/// Writes a batch inside an open transaction; returns the index of the first new event.
fn write_batch(tx: &Connection, batch: &Batch) -> Result<u64> {
    let first: i64 = tx
        .query_row("SELECT COALESCE(MAX(idx) + 1, 0) FROM events", [], |r| {
            r.get(0)
        })
        .map_err(db("finding the end of the log"))?;
    if batch.reset_projection {
        tx.execute("DELETE FROM needs", [])
            .map_err(db("clearing the projection"))?;
    }
    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO events (idx, need, kind, at, data, leaf_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db("preparing the event insert"))?;
        for (offset, event) in batch.events.iter().enumerate() {
            insert
                .execute(params![
                    first + offset as i64,
                    event.need,
                    event.kind,
                    event.at,
                    event.data,
                    event.leaf_hash.as_slice()
                ])
                .map_err(db("appending an event"))?;
        }
        let mut upsert = tx
            .prepare_cached(
                "INSERT INTO needs (id, status, sku, gpus, awarded, holder, submitted_at, updated_at, next_deadline,
                                    first_event, last_event, runs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?10 || '-' || ?11 || ',')
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, awarded = excluded.awarded, holder = excluded.holder,
                   updated_at = excluded.updated_at, next_deadline = excluded.next_deadline,
                   last_event = excluded.last_event, runs = needs.runs || excluded.runs",
            )
            .map_err(db("preparing the projection update"))?;
        for need in &batch.needs {
            upsert
                .execute(params![
                    need.id,
                    need.status,
                    need.sku,
                    need.gpus,
                    need.awarded,
                    need.holder,
                    need.submitted_at,
                    need.updated_at,
                    need.next_deadline,
                    need.first_event as i64,
                    need.last_event as i64
                ])
                .map_err(db("updating the needs projection"))?;
        }
        let mut enqueue = tx
        .prepare_cached(
            "INSERT INTO deliveries (provider, event_index, body, status, next_attempt_ms) VALUES (?1, ?2, ?3, 'pending', ?4)",
        )
        .map_err(db("preparing the delivery insert"))?;
        for delivery in &batch.deliveries {
            enqueue
                .execute(params![
                    delivery.provider,
                    first + delivery.event_offset as i64,
                    delivery.body,
                    delivery.due_ms
                ])
                .map_err(db("queueing a webhook delivery"))?;
        }
        let mut remember = tx
            .prepare_cached(
                "INSERT INTO idempotency (party, key, request_hash, status, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(db("preparing the idempotency insert"))?;
        for answer in &batch.idempotency {
            remember
                .execute(params![
                    answer.party,
                    answer.key,
                    answer.request_hash,
                    answer.status,
                    answer.body
                ])
                .map_err(db("recording an idempotency key"))?;
        }
    }
    Ok(first as u64)
}

/// A row of `SELECT idx, need, kind, at, data, leaf_hash FROM events`.
fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        index: r.get::<_, i64>(0)? as u64,
        need: r.get(1)?,
        kind: r.get(2)?,
        at: r.get(3)?,
        data: r.get(4)?,
        leaf_hash: r.get(5)?,
    })
}

fn need_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NeedRow> {
    Ok(NeedRow {
        id: r.get(0)?,
        status: r.get(1)?,
        sku: r.get(2)?,
        gpus: r.get(3)?,
        awarded: r.get(4)?,
        holder: r.get(5)?,
        submitted_at: r.get(6)?,
        updated_at: r.get(7)?,
        next_deadline: r.get(8)?,
        first_event: r.get::<_, i64>(9)? as u64,
        last_event: r.get::<_, i64>(10)? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewEvent;

    fn event_of(need: &str) -> NewEvent {
        NewEvent {
            need: need.into(),
            kind: "need_submitted".into(),
            at: "2025-01-01T00:00:00Z".into(),
            data: b"{}".to_vec(),
            leaf_hash: [0; 32],
        }
    }

    fn row(id: &str, status: &str, first_event: u64, last_event: u64) -> NeedRow {
        NeedRow {
            id: id.into(),
            status: status.into(),
            sku: "H100".into(),
            gpus: 8,
            awarded: 0,
            holder: None,
            submitted_at: "2025-01-01T00:00:00Z".into(),
            updated_at: "2025-01-01T00:00:00Z".into(),
            next_deadline: None,
            first_event,
            last_event,
        }
    }

    fn runs_of(store: &SqliteStore, need: &str) -> String {
        store
            .conn
            .query_row("SELECT runs FROM needs WHERE id = ?1", [need], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_needs_events_are_read_from_the_runs_its_rows_were_written_with() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("rofr.db")).unwrap();
        let commit = |store: &mut SqliteStore, events: Vec<NewEvent>, needs: Vec<NeedRow>| {
            store
                .commit(&Batch {
                    events,
                    needs,
                    ..Batch::default()
                })
                .unwrap()
        };
        commit(
            &mut store,
            vec![event_of("a"), event_of("a")],
            vec![row("a", "offered", 0, 1)],
        );
        commit(
            &mut store,
            (0..100).map(|_| event_of("b")).collect(),
            vec![row("b", "offered", 2, 101)],
        );
        commit(
            &mut store,
            vec![event_of("a"), event_of("a")],
            vec![row("a", "completed", 102, 103)],
        );
        assert_eq!(runs_of(&store, "a"), "0-1,102-103,");
        let indexes = |store: &SqliteStore, need: &str| -> Vec<u64> {
            store
                .events_of(need, false)
                .unwrap()
                .iter()
                .map(|e| e.index)
                .collect()
        };
        assert_eq!(indexes(&store, "a"), [0, 1, 102, 103]);
        // An open need's events after its last row are found too, unless the caller
        // knows the projection has rows for every entry.
        commit(&mut store, vec![event_of("b")], vec![]);
        assert_eq!(
            indexes(&store, "b"),
            (2..=101).chain([104]).collect::<Vec<u64>>()
        );
        let projected: Vec<u64> = store
            .events_of("b", true)
            .unwrap()
            .iter()
            .map(|e| e.index)
            .collect();
        assert_eq!(projected, (2..=101).collect::<Vec<u64>>(), "the runs alone");
        // A need without a row has no entries, once every entry has its row.
        commit(&mut store, vec![event_of("c")], vec![]);
        assert_eq!(indexes(&store, "c"), [105], "found by the full scan");
        assert!(store.events_of("c", true).unwrap().is_empty());
        // Only the runs are read for a closed need: an entry of `a` outside them (which
        // the broker never writes) is not seen, where the scan between its first and last
        // entry found it.
        store
            .conn
            .execute("UPDATE events SET need = 'a' WHERE idx = 50", [])
            .unwrap();
        assert_eq!(indexes(&store, "a"), [0, 1, 102, 103]);
    }

    #[test]
    fn rows_written_before_runs_were_kept_get_their_bounds_as_one_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rofr.db");
        {
            let conn = Connection::open(&path).unwrap();
            // The schema just before runs were kept.
            let before = 4;
            for sql in &MIGRATIONS[..before] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", before as i64)
                .unwrap();
            conn.execute(
                "INSERT INTO needs (id, status, sku, gpus, awarded, submitted_at, updated_at, first_event, last_event)
                 VALUES ('a', 'active', 'H100', 8, 8, 't', 't', 5, 9)",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(runs_of(&store, "a"), "5-9,");
    }

    #[test]
    fn runs_read_back_in_order_and_merged() {
        assert_eq!(parse_runs("0-1,102-103,"), Some(vec![(0, 1), (102, 103)]));
        assert_eq!(parse_runs(""), None);
        assert_eq!(parse_runs("0-1,x-3,"), None);
        assert_eq!(
            merge_ranges(vec![(10, 20), (0, 1), (2, 5), (15, 30), (40, 41)]),
            [(0, 5), (10, 30), (40, 41)]
        );
    }

    #[test]
    fn the_background_checkpointer_copies_the_log_into_the_database_file() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rofr.db");
        let mut store = SqliteStore::open(&path).unwrap();
        // About a megabyte: a few hundred pages, far from the automatic checkpoint's
        // 10,000, so nothing else copies them while the store stays open.
        for batch in 0..50 {
            let events = (0..20)
                .map(|n| NewEvent {
                    need: format!("n{batch}"),
                    kind: "need_submitted".into(),
                    at: "2025-01-01T00:00:00Z".into(),
                    data: vec![b'x'; 1_000],
                    leaf_hash: [n; 32],
                })
                .collect();
            store
                .commit(&Batch {
                    events,
                    ..Batch::default()
                })
                .unwrap();
        }
        let size = || std::fs::metadata(&path).unwrap().len();
        let before = size();
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            size(),
            before,
            "nothing copied the log without the checkpointer"
        );
        let running = Arc::new(AtomicBool::new(true));
        let flag = running.clone();
        SqliteStore::spawn_checkpointer(&path, move || flag.load(Ordering::Relaxed)).unwrap();
        let started = std::time::Instant::now();
        while size() <= before + 1_000_000 && started.elapsed() < std::time::Duration::from_secs(5)
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        running.store(false, Ordering::Relaxed);
        assert!(
            size() > before + 1_000_000,
            "the database file grew from {before} to {} bytes",
            size()
        );
        assert_eq!(store.event_count().unwrap(), 1_000);
    }

    #[test]
    fn committed_events_come_back_in_order_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rofr.db");
        let mut store = SqliteStore::open(&path).unwrap();
        let event = |n: u8| NewEvent {
            need: "n1".into(),
            kind: "need_submitted".into(),
            at: "2025-01-01T00:00:00Z".into(),
            data: vec![b'{', n, b'}'],
            leaf_hash: [n; 32],
        };
        let first = store
            .commit(&Batch {
                events: vec![event(1), event(2)],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(first, 0);
        drop(store);
        let mut store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.migrate().unwrap(), 0, "migrations run once");
        let second = store
            .commit(&Batch {
                events: vec![event(3)],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(second, 2);
        let data: Vec<Vec<u8>> = store
            .all_events()
            .unwrap()
            .into_iter()
            .map(|e| e.data)
            .collect();
        assert_eq!(
            data,
            vec![b"{\x01}".to_vec(), b"{\x02}".to_vec(), b"{\x03}".to_vec()]
        );
    }

    #[test]
    fn an_idempotency_key_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("rofr.db")).unwrap();
        let answer = IdempotentResponse {
            party: "buyer".into(),
            key: "k1".into(),
            request_hash: "h".into(),
            status: 201,
            body: "{}".into(),
        };
        let batch = Batch {
            idempotency: vec![answer.clone()],
            ..Batch::default()
        };
        store.commit(&batch).unwrap();
        assert_eq!(store.idempotent("buyer", "k1").unwrap(), Some(answer));
        assert!(
            store.commit(&batch).is_err(),
            "a key cannot be stored twice"
        );
        assert_eq!(store.event_count().unwrap(), 0);
    }
}
