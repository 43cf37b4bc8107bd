//! `rofr witness`: a C2SP `tlog-witness` anyone can run. It holds, per log origin, the
//! last checkpoint it cosigned, durably in its own SQLite file, and cosigns a new one
//! only where a consistency proof shows it extends that one. A fork — the same size
//! with another root, or a checkpoint the log cannot prove consistent — is refused, and
//! both signed checkpoints are kept as proof that the log showed two histories.

use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rofr_ledger::witness::{judge, AddCheckpoint, Judgement, SIZE_MEDIA_TYPE};
use rofr_ledger::{Checkpoint, CosigningKey, VerifierKey};
use rusqlite::{params, OptionalExtension};

/// The largest request body a witness reads.
const MAX_BODY: usize = 64 * 1024;

/// A log the witness cosigns for: its origin line and the key that signs it.
#[derive(Debug, Clone)]
pub struct TrustedLog {
    pub origin: String,
    pub key: VerifierKey,
}

/// Proof that a log showed two histories: the checkpoint the witness had cosigned and
/// the one it was then shown.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fork {
    pub origin: String,
    /// `same_size_other_root`, or `inconsistent` (no valid consistency proof from the
    /// checkpoint held).
    pub kind: String,
    pub held: String,
    pub shown: String,
    /// The request as it came: old size, proof and checkpoint.
    pub request: String,
    /// POSIX seconds.
    pub at: u64,
}

/// What the witness holds for one log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Held {
    pub origin: String,
    pub size: u64,
    pub note: String,
    pub cosigned_at: u64,
}

pub struct Witness {
    db: Mutex<rusqlite::Connection>,
    key: CosigningKey,
    logs: Vec<TrustedLog>,
}

fn sql(error: rusqlite::Error) -> String {
    format!("the witness's database: {error}")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An HTTP answer of the protocol: status, media type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Reply {
        let mut body = body.into();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }
}

impl Witness {
    /// Opens (or creates) the witness's database; a new one gets a fresh key named
    /// `name` (default `rofr-witness/<8 hex digits>`). `name` must match an existing
    /// key's.
    pub fn open(path: &Path, name: Option<&str>) -> Result<Witness, String> {
        // A name that cannot be a key's is refused before the file is made.
        if let Some(name) = name {
            CosigningKey::from_seed(name, &[0; 32]).map_err(|e| format!("--name `{name}`: {e}"))?;
        }
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| format!("cannot open the witness's database {}: {e}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS held (
                 origin TEXT PRIMARY KEY,
                 size INTEGER NOT NULL,
                 root BLOB NOT NULL,
                 note TEXT NOT NULL,
                 cosigned_at INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS forks (
                 id INTEGER PRIMARY KEY,
                 origin TEXT NOT NULL,
                 kind TEXT NOT NULL,
                 held TEXT NOT NULL,
                 shown TEXT NOT NULL,
                 request TEXT NOT NULL,
                 at INTEGER NOT NULL);",
        )
        .map_err(sql)?;
        let stored: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'key'", [], |r| r.get(0))
            .optional()
            .map_err(sql)?;
        let key = match stored {
            Some(text) => {
                let key = CosigningKey::from_private_text(&text).map_err(|e| {
                    format!("the witness's key in {} is not valid: {e}", path.display())
                })?;
                if let Some(name) = name.filter(|n| *n != key.name()) {
                    return Err(format!(
                        "{} holds the key of witness `{}`, not `{name}`",
                        path.display(),
                        key.name()
                    ));
                }
                key
            }
            None => {
                let seed: [u8; 32] = rand::random();
                let name = match name {
                    Some(name) => name.to_owned(),
                    None => format!("rofr-witness/{}", hex::encode(rand::random::<[u8; 4]>())),
                };
                let key = CosigningKey::from_seed(&name, &seed).map_err(|e| e.to_string())?;
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('key', ?1)",
                    params![key.private_text()],
                )
                .map_err(sql)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
                }
                key
            }
        };
        Ok(Witness {
            db: Mutex::new(conn),
            key,
            logs: Vec::new(),
        })
    }

    /// Cosigns for the log with this origin when its checkpoints verify with `key`.
    pub fn trust(&mut self, origin: &str, key: VerifierKey) {
        self.logs.retain(|l| l.origin != origin);
        self.logs.push(TrustedLog {
            origin: origin.to_owned(),
            key,
        });
    }

    /// The witness's verifier key, for the deal's `[[witness]] key`.
    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }

    /// The checkpoints it holds, one per log.
    pub fn held(&self) -> Result<Vec<Held>, String> {
        let db = self.db.lock().expect("witness db lock");
        let mut statement = db
            .prepare("SELECT origin, size, note, cosigned_at FROM held ORDER BY origin")
            .map_err(sql)?;
        let rows = statement
            .query_map([], |r| {
                Ok(Held {
                    origin: r.get(0)?,
                    size: r.get::<_, i64>(1)? as u64,
                    note: r.get(2)?,
                    cosigned_at: r.get::<_, i64>(3)? as u64,
                })
            })
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }

    /// The fork proofs it holds, oldest first.
    pub fn forks(&self) -> Result<Vec<Fork>, String> {
        let db = self.db.lock().expect("witness db lock");
        let mut statement = db
            .prepare("SELECT origin, kind, held, shown, request, at FROM forks ORDER BY id")
            .map_err(sql)?;
        let rows = statement
            .query_map([], |r| {
                Ok(Fork {
                    origin: r.get(0)?,
                    kind: r.get(1)?,
                    held: r.get(2)?,
                    shown: r.get(3)?,
                    request: r.get(4)?,
                    at: r.get::<_, i64>(5)? as u64,
                })
            })
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }

    /// `add-checkpoint`: the C2SP rules, in the spec's order. The check of the old size
    /// and the write of the new checkpoint happen in one transaction under one lock.
    pub fn add_checkpoint(&self, body: &[u8]) -> Reply {
        match self.try_add(body) {
            Ok(reply) => reply,
            Err(error) => {
                tracing::error!(%error, "the witness could not answer");
                Reply::text(500, error)
            }
        }
    }

    fn try_add(&self, body: &[u8]) -> Result<Reply, String> {
        let Ok(text) = std::str::from_utf8(body) else {
            return Ok(Reply::text(400, "the body is not UTF-8"));
        };
        let request = match AddCheckpoint::parse(text) {
            Ok(r) => r,
            Err(e) => return Ok(Reply::text(400, e)),
        };
        let Some(body_end) = request.checkpoint.find("\n\n") else {
            return Ok(Reply::text(400, "the checkpoint is not a signed note"));
        };
        let origin = request.checkpoint[..body_end]
            .split('\n')
            .next()
            .unwrap_or_default();
        let Some(log) = self.logs.iter().find(|l| l.origin == origin) else {
            return Ok(Reply::text(404, format!("unknown log origin `{origin}`")));
        };
        let note_text = match log.key.open(&request.checkpoint) {
            Ok(text) => text,
            Err(rofr_ledger::NoteError::Malformed(e)) => {
                return Ok(Reply::text(400, format!("the checkpoint: {e}")))
            }
            Err(e) => return Ok(Reply::text(403, format!("the checkpoint: {e}"))),
        };
        let checkpoint = match Checkpoint::parse(note_text) {
            Ok(c) => c,
            Err(e) => return Ok(Reply::text(400, format!("the checkpoint: {e}"))),
        };
        let mut db = self.db.lock().expect("witness db lock");
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        let held: Option<(i64, Vec<u8>, String)> = tx
            .query_row(
                "SELECT size, root, note FROM held WHERE origin = ?1",
                params![origin],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql)?;
        let held_checkpoint = held.as_ref().map(|(size, root, _)| Checkpoint {
            origin: origin.to_owned(),
            size: *size as u64,
            root: root.as_slice().try_into().unwrap_or([0; 32]),
        });
        let judgement = judge(
            held_checkpoint.as_ref(),
            request.old,
            &request.proof,
            &checkpoint,
        );
        // Kept once per pair of checkpoints, however often the log sends it again.
        let fork = |kind: &str| -> Result<(), String> {
            let held_note = held.as_ref().map(|(_, _, n)| n.as_str()).unwrap_or("");
            tx.execute(
                "INSERT INTO forks (origin, kind, held, shown, request, at)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS
                     (SELECT 1 FROM forks WHERE origin = ?1 AND held = ?3 AND shown = ?4)",
                params![
                    origin,
                    kind,
                    held_note,
                    request.checkpoint,
                    text,
                    now() as i64
                ],
            )
            .map(|_| ())
            .map_err(sql)
        };
        let reply = match judgement {
            Judgement::OldAboveNew => Reply::text(
                400,
                format!(
                    "the old size {} is above the checkpoint's size {}",
                    request.old, checkpoint.size
                ),
            ),
            Judgement::Stale { held } => Reply {
                status: 409,
                content_type: SIZE_MEDIA_TYPE,
                body: format!("{held}\n"),
            },
            Judgement::Fork => {
                fork("same_size_other_root")?;
                tx.commit().map_err(sql)?;
                tracing::warn!(
                    origin,
                    size = checkpoint.size,
                    "fork: the same size with another root"
                );
                return Ok(Reply::text(
                    409,
                    format!(
                        "the checkpoint of {} entries has another root than the one cosigned: kept as proof of a fork",
                        checkpoint.size
                    ),
                ));
            }
            Judgement::Inconsistent => {
                if held.is_some() {
                    fork("inconsistent")?;
                    tx.commit().map_err(sql)?;
                    tracing::warn!(
                        origin,
                        old = request.old,
                        size = checkpoint.size,
                        "no valid consistency proof from the checkpoint held"
                    );
                }
                return Ok(Reply::text(
                    422,
                    format!(
                        "the consistency proof from {} to {} entries does not verify against the checkpoint cosigned",
                        request.old, checkpoint.size
                    ),
                ));
            }
            Judgement::Cosign => {
                let at = now();
                let line = self
                    .key
                    .cosign(note_text, at)
                    .map_err(|e| format!("cosigning: {e}"))?;
                tx.execute(
                    "INSERT INTO held (origin, size, root, note, cosigned_at) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root,
                         note = excluded.note, cosigned_at = excluded.cosigned_at",
                    params![origin, checkpoint.size as i64, checkpoint.root.to_vec(), request.checkpoint, at as i64],
                )
                .map_err(sql)?;
                tx.commit().map_err(sql)?;
                return Ok(Reply::text(200, line));
            }
        };
        Ok(reply)
    }
}

/// Serves the witness on `listener` until `shutdown` completes.
pub async fn serve(
    witness: Arc<Witness>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(witness))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The witness's HTTP interface: `POST /add-checkpoint` (C2SP), and for its operator
/// `GET /forks` and `GET /held` (JSON) and `GET /key`.
pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .route("/forks", get(forks))
        .route("/held", get(held))
        .route("/key", get(key))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(witness)
}

fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, reply.content_type)],
        reply.body,
    )
        .into_response()
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: Bytes) -> Response {
    let reply = tokio::task::spawn_blocking(move || witness.add_checkpoint(&body))
        .await
        .unwrap_or_else(|e| Reply::text(500, e.to_string()));
    respond(reply)
}

async fn forks(State(witness): State<Arc<Witness>>) -> Response {
    match witness.forks() {
        Ok(forks) => axum::Json(forks).into_response(),
        Err(e) => respond(Reply::text(500, e)),
    }
}

async fn held(State(witness): State<Arc<Witness>>) -> Response {
    match witness.held() {
        Ok(held) => axum::Json(held).into_response(),
        Err(e) => respond(Reply::text(500, e)),
    }
}

async fn key(State(witness): State<Arc<Witness>>) -> Response {
    respond(Reply::text(200, witness.verifier_key()))
}
