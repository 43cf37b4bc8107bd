//! Gathering cosignatures: after each checkpoint the broker sends it to the witnesses
//! the deal in force names (C2SP `tlog-witness` `add-checkpoint`), with the consistency
//! proof from the size each one last cosigned, and stores what they return on the
//! checkpoint's note. A checkpoint is witnessed once every required witness cosigned it.
//!
//! Work goes in rounds: a round takes the latest checkpoint to every witness at once.
//! A required witness is retried with backoff until it answers or the round's time is
//! up; an optional one gets one try. A 409 with a size resynchronises and tries again
//! at once. Nothing here decides what the ledger holds: a witness that refuses leaves
//! the checkpoint unwitnessed, and says why in the status.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rofr_ledger::note::with_signatures;
use rofr_ledger::witness::{AddCheckpoint, SIZE_MEDIA_TYPE};
use rofr_ledger::CosignerKey;

use super::Broker;

/// How long a round keeps retrying a required witness.
const ROUND: Duration = Duration::from_secs(30);
/// One request's time limit.
const REQUEST: Duration = Duration::from_secs(10);
/// How often the gatherer looks for a new checkpoint.
const POLL: Duration = Duration::from_millis(25);

/// A witness as the deal names it, with its key parsed.
#[derive(Debug, Clone)]
struct Witness {
    name: String,
    key: CosignerKey,
    url: String,
    required: bool,
}

/// Where one witness stands, for `/metrics`, the dashboard and `/v1/ledger/witnesses`.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct WitnessStatus {
    /// The deal's name for it.
    pub name: String,
    /// Its verifier key.
    pub key: String,
    pub url: String,
    pub required: bool,
    /// The largest checkpoint size it cosigned, if known.
    pub cosigned_size: Option<u64>,
    /// When it last cosigned (RFC 3339).
    pub last_cosigned_at: Option<String>,
    /// Its last refusal or failure, if the last try failed.
    pub last_error: Option<String>,
}

/// How far witnessing trails the log, for `/metrics` and the dashboard.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct Witnessing {
    /// Entries in the log.
    pub log_size: u64,
    /// The size of the latest checkpoint.
    pub checkpoint_size: u64,
    /// The size of the latest checkpoint every required witness cosigned (0: none).
    pub witnessed_size: u64,
    /// Entries of the log not yet under a witnessed checkpoint.
    pub lag_entries: u64,
    /// Seconds since the oldest checkpoint newer than the witnessed one was signed
    /// (0 when the latest is witnessed).
    pub lag_seconds: f64,
    pub witnesses: Vec<WitnessStatus>,
}

/// The gatherer's shared state.
#[derive(Default)]
pub(super) struct Gathered {
    statuses: Vec<WitnessStatus>,
    /// When the first checkpoint after the witnessed one was signed.
    unwitnessed_since: Option<Instant>,
    /// Whether a gatherer runs (it does while the API is served).
    running: bool,
}

/// How long an evidence request waits for its checkpoint to be witnessed.
pub const EVIDENCE_WAIT: Duration = Duration::from_secs(10);

fn parse_witnesses(deal: &rofr_engine::deal::Deal) -> Vec<Witness> {
    deal.witnesses
        .iter()
        .filter_map(|w| match CosignerKey::parse(&w.key) {
            Ok(key) => Some(Witness {
                name: w.name.clone(),
                key,
                url: w.url.clone(),
                required: w.required,
            }),
            Err(error) => {
                tracing::error!(witness = %w.name, %error, "the deal's witness key does not parse");
                None
            }
        })
        .collect()
}

fn now_text() -> String {
    crate::ledger::now_text()
}

impl Broker {
    /// How far witnessing trails the log.
    pub fn witnessing(&self) -> Witnessing {
        let (log_size, checkpoint_size, witnessed_size) = self.ledger(|l| {
            (
                l.size(),
                l.latest().map_or(0, |(s, _)| *s),
                l.witnessed().map_or(0, |(s, _)| *s),
            )
        });
        let gathered = self.inner.gathered.lock().expect("witnessing lock");
        let has_required = gathered.statuses.iter().any(|s| s.required);
        Witnessing {
            log_size,
            checkpoint_size,
            witnessed_size,
            lag_entries: if has_required {
                log_size - witnessed_size.min(log_size)
            } else {
                0
            },
            lag_seconds: gathered
                .unwitnessed_since
                .filter(|_| has_required && witnessed_size < checkpoint_size)
                .map_or(0.0, |since| since.elapsed().as_secs_f64()),
            witnesses: gathered.statuses.clone(),
        }
    }

    /// The witness keys of the deal in force.
    pub fn witness_keys(&self) -> Vec<CosignerKey> {
        self.read(|e| parse_witnesses(e.deal()))
            .into_iter()
            .map(|w| w.key)
            .collect()
    }

    /// Whether cosignatures are being gathered for a deal that requires some.
    pub fn witnesses_required(&self) -> bool {
        self.inner.gathered.lock().expect("witnessing lock").running
            && self.read(|e| e.deal().witnesses.iter().any(|w| w.required))
    }

    /// Makes sure a checkpoint covers the first `needed` entries and waits (up to
    /// [`EVIDENCE_WAIT`]) for the witnesses to cosign it, where the deal requires
    /// witnesses and the witnessed checkpoint does not cover them yet.
    pub(super) async fn witnessed_for(&self, needed: u64) -> Result<(), super::BrokerError> {
        if !self.witnesses_required() || *self.inner.witnessed.borrow() >= needed {
            return Ok(());
        }
        let latest = self.ledger(|l| l.latest().map_or(0, |(s, _)| *s));
        if latest < needed {
            self.checkpoint_now()?;
        }
        if !self.wait_witnessed(needed, EVIDENCE_WAIT).await {
            tracing::warn!(needed, "evidence made before its checkpoint was witnessed");
        }
        Ok(())
    }

    /// Waits until a checkpoint of at least `size` entries is witnessed, or the
    /// witnesses have answered for one (and refused), or `wait` passes; returns whether
    /// it is witnessed.
    pub async fn wait_witnessed(&self, size: u64, wait: Duration) -> bool {
        let mut asked = self.inner.asked.subscribe();
        let _ = tokio::time::timeout(wait, asked.wait_for(|a| *a >= size)).await;
        *self.inner.witnessed.borrow() >= size
    }

    /// Reads back what the stored checkpoints say of the witnesses: the witnessed
    /// checkpoint and the size each witness last cosigned.
    fn resume_witnessing(&self, witnesses: &[Witness]) -> HashMap<String, u64> {
        let checkpoints = self.store(|s| s.checkpoints()).unwrap_or_default();
        let required: Vec<CosignerKey> = witnesses
            .iter()
            .filter(|w| w.required)
            .map(|w| w.key.clone())
            .collect();
        self.ledger(|l| l.find_witnessed(&checkpoints, &required));
        let witnessed = self.ledger(|l| l.witnessed().map_or(0, |(s, _)| *s));
        self.inner.witnessed.send_replace(witnessed);
        let mut sizes = HashMap::new();
        for w in witnesses {
            if let Some((size, _)) = checkpoints
                .iter()
                .rev()
                .find(|(_, n)| w.key.check(n).is_ok())
            {
                sizes.insert(w.name.clone(), *size);
            }
        }
        sizes
    }

    /// Runs until `stop` turns true: sends each new checkpoint to the witnesses.
    pub async fn gather_cosignatures(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let client = reqwest::Client::builder()
            .timeout(REQUEST)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client");
        let mut witnesses: Vec<Witness> = Vec::new();
        let mut sizes: HashMap<String, u64> = HashMap::new();
        // The version of the deal whose witnesses are loaded (0: none yet).
        let mut loaded = 0;
        let mut pause = POLL;
        self.inner.gathered.lock().expect("witnessing lock").running = true;
        let _running = Running(self.clone());
        loop {
            if *stop.borrow() {
                return;
            }
            // The deal in force names the witnesses; an amendment may change them.
            let version = self.read(|e| e.deal_version());
            if version != loaded {
                loaded = version;
                witnesses = self.read(|e| parse_witnesses(e.deal()));
                sizes = self.resume_witnessing(&witnesses);
                let mut gathered = self.inner.gathered.lock().expect("witnessing lock");
                gathered.statuses = witnesses
                    .iter()
                    .map(|w| WitnessStatus {
                        name: w.name.clone(),
                        key: w.key.verifier_key(),
                        url: w.url.clone(),
                        required: w.required,
                        cosigned_size: sizes.get(&w.name).copied(),
                        ..WitnessStatus::default()
                    })
                    .collect();
            }
            let target = self.ledger(|l| l.latest().cloned());
            let witnessed = *self.inner.witnessed.borrow();
            let due = target.as_ref().filter(|(size, _)| {
                !witnesses.is_empty()
                    && (*size > witnessed
                        || witnesses
                            .iter()
                            .any(|w| !w.required && sizes.get(&w.name).is_none_or(|s| s < size)))
            });
            if let Some((size, note)) = due.cloned() {
                {
                    let mut gathered = self.inner.gathered.lock().expect("witnessing lock");
                    if size > witnessed && gathered.unwitnessed_since.is_none() {
                        gathered.unwitnessed_since = Some(Instant::now());
                    }
                }
                let complete = self
                    .round(&client, &witnesses, &mut sizes, size, note, &mut stop)
                    .await;
                pause = if complete {
                    POLL
                } else {
                    (pause * 2).min(Duration::from_secs(30))
                };
            } else {
                pause = POLL;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Takes the checkpoint of `size` to every witness; returns whether every required
    /// one cosigned it.
    async fn round(
        &self,
        client: &reqwest::Client,
        witnesses: &[Witness],
        sizes: &mut HashMap<String, u64>,
        size: u64,
        note: String,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        let deadline = Instant::now() + ROUND;
        let began = Instant::now();
        let attempts = witnesses.iter().map(|w| {
            let old = sizes.get(&w.name).copied().unwrap_or(0);
            self.cosign_with(client, w, old, size, &note, deadline)
        });
        let answers = tokio::select! {
            answers = futures_util::future::join_all(attempts) => answers,
            _ = stop.changed() => return false,
        };
        let mut cosigned = note.clone();
        let mut complete = true;
        for (w, answer) in witnesses.iter().zip(answers) {
            let mut gathered = self.inner.gathered.lock().expect("witnessing lock");
            let status = gathered.statuses.iter_mut().find(|s| s.name == w.name);
            match answer {
                Ok((line, held)) => {
                    sizes.insert(w.name.clone(), held);
                    cosigned = with_signatures(&cosigned, &line);
                    if let Some(status) = status {
                        status.cosigned_size = Some(held);
                        status.last_cosigned_at = Some(now_text());
                        status.last_error = None;
                    }
                }
                Err((error, held)) => {
                    if let Some(held) = held {
                        sizes.insert(w.name.clone(), held);
                    }
                    tracing::warn!(witness = %w.name, size, %error, "no cosignature");
                    if let Some(status) = status {
                        status.last_error = Some(error);
                    }
                    complete &= !w.required;
                }
            }
        }
        if cosigned != note {
            let stored = self
                .inner
                .reader
                .lock()
                .expect("store lock poisoned")
                .cosign_checkpoint(size, &cosigned);
            if let Err(error) = stored {
                tracing::error!(%error, size, "storing cosignatures failed");
                return false;
            }
        }
        let witnessed = complete && witnesses.iter().any(|w| w.required);
        self.ledger(|l| l.cosigned(size, &cosigned, witnessed));
        if witnessed {
            self.inner.witnessed.send_replace(size);
            let latest = self.ledger(|l| l.latest().map_or(0, |(s, _)| *s));
            let mut gathered = self.inner.gathered.lock().expect("witnessing lock");
            gathered.unwitnessed_since = (latest > size).then(Instant::now);
        }
        self.inner.asked.send_replace(size);
        tracing::debug!(
            size,
            ms = began.elapsed().as_secs_f64() * 1000.0,
            complete,
            "a witnessing round"
        );
        complete
    }

    /// One witness's cosignature on the checkpoint of `size`: the signature line and
    /// the size it now holds, or why not (and the size it said it holds).
    async fn cosign_with(
        &self,
        client: &reqwest::Client,
        witness: &Witness,
        mut old: u64,
        size: u64,
        note: &str,
        deadline: Instant,
    ) -> Result<(String, u64), (String, Option<u64>)> {
        let mut backoff = Duration::from_millis(250);
        let mut resyncs = 0;
        let mut held = None;
        loop {
            let attempt = self.add_checkpoint(client, witness, old, size, note).await;
            let (error, retry) = match attempt {
                Attempt::Cosigned(line) => return Ok((line, size)),
                Attempt::Stale(at) if resyncs < 3 && at <= size => {
                    resyncs += 1;
                    old = at;
                    held = Some(at);
                    continue;
                }
                Attempt::Stale(at) => {
                    held = Some(at);
                    let error = format!(
                        "{} holds a checkpoint of {at} entries, which this log's checkpoint of {size} cannot extend",
                        witness.name
                    );
                    (error, false)
                }
                Attempt::Refused(error) => (error, false),
                Attempt::Unreachable(error) => (error, true),
            };
            self.note_witness_error(&witness.name, &error);
            // A refusal is the witness's judgement: asked again in the next round, not
            // at once. Unreachable, a required witness is tried again with backoff.
            if !retry || !witness.required || Instant::now() + backoff > deadline {
                return Err((error, held));
            }
            tracing::debug!(witness = %witness.name, %error, ?backoff, "retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(8));
        }
    }

    fn note_witness_error(&self, name: &str, error: &str) {
        let mut gathered = self.inner.gathered.lock().expect("witnessing lock");
        if let Some(status) = gathered.statuses.iter_mut().find(|s| s.name == name) {
            status.last_error = Some(error.to_owned());
        }
    }

    async fn add_checkpoint(
        &self,
        client: &reqwest::Client,
        witness: &Witness,
        old: u64,
        size: u64,
        note: &str,
    ) -> Attempt {
        let proof = if old == 0 || old >= size {
            Ok(Some(Vec::new()))
        } else {
            self.ledger_with_log(|l, s| l.consistency_proof(old, size, s))
        };
        let proof = match proof {
            Ok(Some(proof)) => proof,
            Ok(None) => {
                return Attempt::Refused(format!("no consistency proof from {old} to {size}"))
            }
            Err(e) => return Attempt::Refused(e.to_string()),
        };
        let body = AddCheckpoint {
            old,
            proof,
            checkpoint: note.to_owned(),
        }
        .body();
        let url = format!("{}/add-checkpoint", witness.url);
        let answer = match client.post(&url).body(body).send().await {
            Ok(answer) => answer,
            Err(e) => return Attempt::Unreachable(format!("{url}: {e}")),
        };
        let status = answer.status().as_u16();
        let media = answer
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = answer.text().await.unwrap_or_default();
        match status {
            200 => {
                // Lines by other keys are ignored; the witness's own must verify.
                let prefix = format!("\u{2014} {} ", witness.key.name());
                let line = text
                    .lines()
                    .filter(|l| l.starts_with(&prefix))
                    .map(|l| format!("{l}\n"))
                    .find(|l| witness.key.check(&with_signatures(note, l)).is_ok());
                match line {
                    Some(line) => Attempt::Cosigned(line),
                    None => Attempt::Refused(format!(
                        "{url} answered 200 without a valid cosignature by {}",
                        witness.key.name()
                    )),
                }
            }
            409 if media.starts_with(SIZE_MEDIA_TYPE) => {
                match text.trim_end_matches('\n').parse() {
                    Ok(at) => Attempt::Stale(at),
                    Err(_) => {
                        Attempt::Refused(format!("{url} answered 409 with `{}`", text.trim()))
                    }
                }
            }
            500.. => Attempt::Unreachable(format!("{url} answered {status}: {}", text.trim())),
            _ => Attempt::Refused(format!("{url} answered {status}: {}", text.trim())),
        }
    }
}

/// Clears `running` when the gatherer ends.
struct Running(Broker);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(mut gathered) = self.0.inner.gathered.lock() {
            gathered.running = false;
        }
    }
}

enum Attempt {
    Cosigned(String),
    /// 409 with the size the witness holds.
    Stale(u64),
    /// The witness judged the checkpoint and refused it.
    Refused(String),
    /// No answer, or a server error: worth another try.
    Unreachable(String),
}
