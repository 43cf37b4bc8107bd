//! Committing a batch: writing it, appending its leaves to the ledger's tree,
//! publishing the log's new size and releasing its answers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use rofr_store::{Batch, NewEvent, Store, StoreError};

use super::fail::{reached, FailPoint};
use super::{Answer, BrokerError, Inner, ReplyTo};

/// How many committed entries the writer keeps for their buffers: about one batch.
pub(super) const SPARE_ENTRIES: usize = 1_024;

/// A batch on its way to disk, with the answers it releases once there.
pub(super) struct Pending {
    /// The log index of its first event.
    pub(super) first: u64,
    pub(super) batch: Batch,
    pub(super) answers: Vec<(ReplyTo, Result<Answer, BrokerError>)>,
}

/// What the writer hands the committer thread.
enum ToCommitter {
    Batch(Pending),
    /// After a failed commit: every batch sent before this has been refused; the
    /// committer writes the batches that follow.
    Resume(mpsc::Sender<()>),
}

/// How a batch reaches the disk: the one thing the two commit modes do differently.
pub(super) enum Mode {
    /// Alone on its log (SQLite), the broker writes each batch on a committer thread
    /// while the writer runs the next one through the engine.
    Alone(Committing),
    /// Replicas share the log (PostgreSQL): the writer writes each batch itself,
    /// inside the store's exclusive transaction, once it has folded in what the
    /// others appended.
    Shared,
}

/// The writer's end of the committer thread.
pub(super) struct Committing {
    to: mpsc::SyncSender<ToCommitter>,
    /// Entries the committer has written, coming back for their buffers.
    returned: mpsc::Receiver<Vec<NewEvent>>,
    /// Batches the committer holds (counted up here, down by it).
    in_flight: Arc<AtomicUsize>,
}

impl Committing {
    /// Starts the committer thread, which writes on `store`, a connection of its own.
    pub(super) fn start(inner: &Arc<Inner>, store: Box<dyn Store>) -> Result<Self, BrokerError> {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let committer = Committer {
            inner: inner.clone(),
            store,
            in_flight: in_flight.clone(),
        };
        let (to, batches) = mpsc::sync_channel(1);
        let (give_back, returned) = mpsc::channel();
        std::thread::Builder::new()
            .name("rofr-committer".into())
            .spawn(move || committer.run(batches, give_back))
            .map_err(|e| BrokerError::Setup(format!("cannot start the committer thread: {e}")))?;
        Ok(Committing {
            to,
            returned,
            in_flight,
        })
    }

    /// Whether the committer has nothing to write.
    pub(super) fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Takes back the entries of written batches, for their buffers.
    pub(super) fn take_back(&self, spare: &mut Vec<NewEvent>) {
        while let Ok(entries) = self.returned.try_recv() {
            keep_spare(spare, entries);
        }
    }

    /// Hands a batch to the committer; its answers leave once it is written.
    pub(super) fn send(&self, pending: Pending) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.to.send(ToCommitter::Batch(pending)).is_err() {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            tracing::error!(
                "the committer thread is gone; the batch's commands see the broker as stopped"
            );
        }
    }

    /// After a failed commit: waits until the committer has dealt with every batch
    /// sent so far, and lets it write the ones that follow.
    pub(super) fn resume(&self) {
        let (done, finished) = mpsc::channel();
        if self.to.send(ToCommitter::Resume(done)).is_ok() {
            let _ = finished.recv();
        }
    }
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
                    reached(FailPoint::InCommitter);
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
pub(super) struct Landed<'a>(&'a AtomicUsize);

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps committed entries for their buffers, up to [`SPARE_ENTRIES`].
pub(super) fn keep_spare(spare: &mut Vec<NewEvent>, entries: Vec<NewEvent>) {
    let room = SPARE_ENTRIES.saturating_sub(spare.len());
    spare.extend(entries.into_iter().take(room));
}

/// Answers each of `replies` that storage failed.
pub(super) fn refuse(replies: impl IntoIterator<Item = ReplyTo>, error: &str) {
    for reply in replies {
        let _ = reply.send(Err(BrokerError::Setup(format!("storage failed: {error}"))));
    }
}

/// Writes one batch; once it is on disk, appends its leaves to the ledger's tree,
/// publishes the log's new size and releases the answers. When the commit fails, every
/// answer is refused and the error returned. Gives back the written entries.
pub(super) fn finish(
    inner: &Inner,
    store: &mut dyn Store,
    mut pending: Pending,
) -> Result<Vec<NewEvent>, StoreError> {
    let events = &pending.batch.events;
    if !pending.batch.is_empty() {
        reached(FailPoint::BeforeCommit);
        if let Err(error) = store.commit(&pending.batch) {
            tracing::error!(%error, "commit failed; the batch is refused and the engine reloaded from the log");
            let replies = pending.answers.into_iter().map(|(reply, _)| reply);
            refuse(replies, &error.to_string());
            return Err(error);
        }
        reached(FailPoint::BeforeLedgerAppend);
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
        reached(FailPoint::AfterCommit);
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
pub(super) fn checkpoint_if_due(inner: &Inner, store: &mut dyn Store) {
    let mut ledger = inner.ledger.lock().expect("ledger lock");
    if !ledger.due() {
        return;
    }
    let (size, note) = ledger.checkpoint();
    reached(FailPoint::SigningCheckpoint);
    if let Err(error) = store.add_checkpoint(size, &note, &crate::ledger::now_text()) {
        tracing::error!(%error, size, "storing a checkpoint failed");
    }
}
