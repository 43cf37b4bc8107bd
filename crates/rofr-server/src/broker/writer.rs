//! The writer thread: the loop that takes queued commands, runs them through the
//! engine and hands each batch to be committed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLockWriteGuard};
use std::time::{Duration, Instant};

use rofr_engine::types::{ProviderId, Timestamp};
use rofr_engine::{Command, Engine, Event, EventKind, Rejection};
use rofr_store::{Batch, IdempotentResponse, NewDelivery, NewEvent, Store};

use super::answer::{command_body, raw_json, IndexedEvent};
use super::commit::{checkpoint_if_due, finish, keep_spare, refuse, Mode, Pending};
use super::fail::{reached, FailPoint};
use super::open::{fold_log, parse_stored};
use super::projection::{
    need_row, projection, projection_agrees, touch, Rows, Touches, FLUSH_EVERY, SWEEP_ROWS,
};
use super::{
    Answer, BrokerError, FaultHook, Idempotency, Inner, Job, Outcome, Party, ReplyTo, Work,
    MAX_BATCH, SPLIT_AT,
};

pub(super) struct Writer {
    pub(super) inner: Arc<Inner>,
    pub(super) store: Box<dyn Store>,
    pub(super) next_index: u64,
    /// Needs whose projection rows are not yet written.
    pub(super) dirty: Touches,
    pub(super) last_flush: Instant,
    /// While a sweep writes the rows held back: the ids it has still to write, last
    /// first (those held back when it started, in reverse order of id). Rows touched
    /// after it started wait for the next one.
    pub(super) sweep: Vec<String>,
    /// Where every need's events lie, while the projection is checked against the
    /// log (at start, and after a failed commit).
    pub(super) settling: Option<Touches>,
    /// Entries of committed batches, kept with their buffers for the next ones: a batch
    /// holds up to a thousand events, and freeing their bytes one by one was a good
    /// part of the writer's time.
    pub(super) spare: Vec<NewEvent>,
    /// How each batch reaches the disk.
    pub(super) mode: Mode,
    /// Idempotent answers of batches not yet known to be on disk, with the log size
    /// past their command's events: the store cannot answer for them yet.
    pub(super) unsettled_keys: HashMap<(String, String), (u64, IdempotentResponse)>,
    /// A command panicked in the engine, whose state may now hold part of it: the
    /// engine is reloaded from the log once the batch before it is written.
    pub(super) poisoned: bool,
    /// The refusal of the command that poisoned the engine: sent once the engine is
    /// reloaded, so that nothing its caller reads next still holds part of it.
    pub(super) held_replies: Vec<(ReplyTo, Result<Answer, BrokerError>)>,
}

impl Writer {
    /// At start, under the write lock: folds in what other replicas appended since the
    /// log was read, and rewrites the needs projection if it disagrees with the log.
    pub(super) fn settle(&mut self) -> Result<(), BrokerError> {
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
    pub(super) fn catch_up(&mut self, engine: &mut Engine) -> Result<(), BrokerError> {
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
                engine
                    .apply_entry(&parse_stored(row)?)
                    .map_err(|e| BrokerError::Setup(format!("log entry {}: {e}", row.index)))?;
                if row.need.is_empty() {
                    self.inner.note_deal_entry(row.index, &row.data);
                }
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

    /// The writer's loop: waits for work (or the next deadline), takes what is
    /// queued, and runs it as batches until the broker stops.
    pub(super) fn run(mut self, receiver: mpsc::Receiver<Work>) {
        // Work received and not yet run, in order.
        let mut backlog: VecDeque<Work> = VecDeque::new();
        loop {
            if backlog.is_empty() {
                match receiver.recv_timeout(self.idle_wait()) {
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
            let take = self.batch_size(backlog.len());
            let (jobs, synced, flushes) = sort_work(backlog.drain(..take));
            let rows = self.rows_due(!flushes.is_empty());
            let unrun = self.process(jobs, flushes, rows);
            for job in unrun.into_iter().rev() {
                backlog.push_front(Work::Job(job));
            }
            for done in synced {
                let _ = done.send(());
            }
        }
    }

    /// How long the idle writer waits for work: until the next deadline, or until rows
    /// held back are due (a sweep under way goes on at once); 1 ms to 1 s.
    fn idle_wait(&self) -> Duration {
        let engine = self.inner.engine.read().expect("engine lock");
        let next = engine.next_due();
        drop(engine);
        let mut wait = next
            .map(|at| self.inner.clock.real_wait_until(at))
            .unwrap_or(Duration::from_secs(1));
        if !self.dirty.is_empty() {
            let until_due = FLUSH_EVERY.saturating_sub(self.last_flush.elapsed());
            wait = wait.min(if self.sweep.is_empty() {
                until_due
            } else {
                Duration::ZERO
            });
        }
        wait.clamp(Duration::from_millis(1), Duration::from_secs(1))
    }

    /// How much of a backlog of `waiting` items the next batch takes. Clients answered
    /// by one commit send their next commands together. Run whole, they would make the
    /// committer wait while the writer runs them, and the writer wait while the
    /// committer writes them: the two would take turns. An idle committer gets the
    /// first half as soon as it is run, and writes it while the writer runs the second.
    fn batch_size(&self, waiting: usize) -> usize {
        if waiting >= SPLIT_AT && self.committer_idle() {
            waiting.div_ceil(2)
        } else {
            waiting.min(MAX_BATCH)
        }
    }

    /// Which projection rows the next batch writes. The needs projection is swept
    /// every FLUSH_EVERY: a need's row changes with each of its commands, and writing
    /// it each time cost as much as appending the events. Replicas write their rows
    /// with every commit: a row held back could later overwrite a newer one written by
    /// another replica. A list query asks for the rows first (`Work::Flush`).
    fn rows_due(&self, flushing: bool) -> Rows {
        if matches!(self.mode, Mode::Shared) || flushing {
            Rows::All
        } else if !self.sweep.is_empty() || self.last_flush.elapsed() >= FLUSH_EVERY {
            Rows::Sweep
        } else {
            Rows::Held
        }
    }

    /// Whether a committer thread has nothing to write.
    fn committer_idle(&self) -> bool {
        matches!(&self.mode, Mode::Alone(committing) if committing.idle())
    }

    /// Runs one batch, in five steps: begin, tick, decide each command, stage the
    /// projection's rows, hand off to be committed. Returns the jobs it did not get to
    /// (those after a command that panicked), to be run on the reloaded engine.
    pub(super) fn process(
        &mut self,
        jobs: Vec<Job>,
        flushes: Vec<ReplyTo>,
        rows: Rows,
    ) -> Vec<Job> {
        self.tidy();
        let inner = self.inner.clone();
        let mut engine = inner.engine.write().expect("engine lock");
        let due = engine
            .next_due()
            .is_some_and(|at| at <= inner.clock.now().max(engine.clock()));
        let writes = !jobs.is_empty()
            || !flushes.is_empty()
            || due
            || (rows != Rows::Held && !self.dirty.is_empty());
        // 1. Begin: the log is ready to take the batch.
        if let Err(error) = self.begin(&mut engine, writes) {
            self.abandon();
            tracing::error!(%error, "cannot read the log; commands refused until it can be read");
            let replies = jobs.into_iter().map(|job| job.reply).chain(flushes);
            refuse(replies, &error.to_string());
            return Vec::new();
        }
        if !writes {
            return Vec::new();
        }
        // 2. Tick: the deadlines due fire first.
        let mut batch = Batch::default();
        if self.tick(&mut engine, &mut batch).is_err() {
            self.abandon();
            drop(engine);
            self.poisoned = true;
            self.reload_if_poisoned();
            let replies = jobs.into_iter().map(|job| job.reply).chain(flushes);
            for reply in replies {
                let _ = reply.send(Err(BrokerError::Failed));
            }
            return Vec::new();
        }
        // 3. Decide: each command is answered from an earlier answer, or run.
        let mut answers = Vec::with_capacity(jobs.len() + flushes.len());
        let unrun = self.decide(&mut engine, jobs, &mut batch, &mut answers);
        // A flush is answered once its rows are on disk.
        answers.extend(
            flushes
                .into_iter()
                .map(|reply| (reply, Ok(Answer::flushed()))),
        );
        // 4. Stage the projection's rows.
        self.stage_rows(&engine, &mut batch, rows);
        // 5. Hand off. Answers, rejections included, leave only once everything the
        // engine held when it gave them is on disk.
        let first = self.next_index;
        self.next_index += batch.events.len() as u64;
        inner.applied.store(self.next_index, Ordering::Release);
        let pending = Pending {
            first,
            batch,
            answers,
        };
        self.hand_off(engine, pending);
        unrun
    }

    /// Before a batch: recovers from a failed commit, takes back the buffers of
    /// written entries, and forgets the idempotent answers now on disk.
    fn tidy(&mut self) {
        if self.inner.commit_failed.load(Ordering::Acquire) {
            self.recover();
        }
        if let Mode::Alone(committing) = &self.mode {
            committing.take_back(&mut self.spare);
        }
        let on_disk = self.inner.durable.borrow().1;
        self.unsettled_keys.retain(|_, (end, _)| *end > on_disk);
    }

    /// Step 1. Alone on its log, the broker has folded in every entry already, and its
    /// commit is a transaction of its own. Sharing it, the writer takes the store's
    /// write lock (when it will write), folds in what other replicas appended, and
    /// learns of webhooks they registered.
    fn begin(&mut self, engine: &mut Engine, writes: bool) -> Result<(), BrokerError> {
        if let Mode::Alone(_) = self.mode {
            return Ok(());
        }
        if !writes {
            return self.catch_up(engine);
        }
        self.store.begin_exclusive()?;
        self.catch_up(engine)?;
        if let Ok(hooks) = self.store.webhooks() {
            *self.inner.webhooks.write().expect("webhook lock") =
                hooks.into_iter().map(|(provider, _, _)| provider).collect();
        }
        Ok(())
    }

    /// Gives up the batch begun: a shared log's write lock is let go.
    fn abandon(&mut self) {
        if let Mode::Shared = self.mode {
            let _ = self.store.abort();
        }
    }

    /// Step 2. Fires the deadlines due and stages their events. A deadline that
    /// panics is an error: nothing of the batch is written.
    fn tick(&mut self, engine: &mut Engine, batch: &mut Batch) -> Result<(), ()> {
        let now = self.inner.clock.now().max(engine.clock());
        let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.execute(Command::Tick { now })
        }));
        let Ok(ticked) = ticked else {
            tracing::error!(now = %now, "a deadline failed inside the broker; the batch is refused and the engine reloaded");
            return Err(());
        };
        let ticked = ticked.expect("the broker's clock never goes back");
        self.append(batch, &ticked);
        Ok(())
    }

    /// Step 3. Answers each job in turn: from an earlier answer to its idempotency
    /// key, or by running its command. Stops at a command that panics, and returns
    /// the jobs after it.
    fn decide(
        &mut self,
        engine: &mut Engine,
        jobs: Vec<Job>,
        batch: &mut Batch,
        answers: &mut Vec<(ReplyTo, Result<Answer, BrokerError>)>,
    ) -> Vec<Job> {
        let fault = self.inner.fault.read().expect("fault lock").clone();
        // One buffer for every command's events.
        let mut events = Vec::with_capacity(8);
        let mut jobs = jobs.into_iter();
        while let Some(job) = jobs.next() {
            if let Some(answer) = self.earlier_answer(&job) {
                answers.push((job.reply, answer));
                continue;
            }
            events.clear();
            let Job {
                party,
                command,
                idempotency,
                reply,
            } = job;
            let outcome = Outcome::of(&command);
            let amends = matches!(command, Command::AmendDeal { .. });
            let Some(applied) = run_command(engine, command, &party, &fault, &mut events) else {
                // The engine may hold part of the command: refuse it alone, write the
                // batch so far, and run the rest after reloading from the log.
                self.held_replies.push((reply, Err(BrokerError::Failed)));
                self.poisoned = true;
                return jobs.collect();
            };
            let counters = &self.inner.counters;
            let answer = match applied {
                Ok(()) => {
                    counters.commands_accepted.fetch_add(1, Ordering::Relaxed);
                    // An amendment's entry comes before the events it gave.
                    let entry = amends
                        .then(|| engine.amendment(engine.versions()))
                        .flatten()
                        .map(|entry| (entry.at, entry.to_json()));
                    match self.stage_command(batch, entry, &events, outcome, &party, idempotency) {
                        Ok(answer) => Ok(answer),
                        Err(bytes) => {
                            // The engine holds the command: refuse it, write the batch
                            // so far, and run the rest after reloading from the log.
                            self.held_replies
                                .push((reply, Err(BrokerError::EntryTooLarge(bytes))));
                            self.poisoned = true;
                            return jobs.collect();
                        }
                    }
                }
                Err(rejection) => {
                    counters.commands_rejected.fetch_add(1, Ordering::Relaxed);
                    Err(rejection.into())
                }
            };
            answers.push((reply, answer));
        }
        Vec::new()
    }

    /// The answer a job's idempotency key already has, if any: the same bytes for the
    /// same request, a refusal for another. The party's key scopes idempotency keys;
    /// most commands carry none.
    fn earlier_answer(&mut self, job: &Job) -> Option<Result<Answer, BrokerError>> {
        let idem = job.idempotency.as_ref()?;
        let party = job.party.key();
        let key = (party, idem.key.clone());
        let earlier = match self.unsettled_keys.get(&key) {
            Some((_, answer)) => answer.clone(),
            None => match self.store.idempotent(&key.0, &idem.key) {
                Ok(found) => found?,
                Err(error) => return Some(Err(error.into())),
            },
        };
        if earlier.request_hash != idem.request_hash {
            return Some(Err(BrokerError::KeyReused(idem.key.clone())));
        }
        self.inner
            .counters
            .idempotent_replays
            .fetch_add(1, Ordering::Relaxed);
        Some(Ok(Answer {
            outcome: Outcome::from_stored(earlier.status),
            body: earlier.body,
            replayed: true,
        }))
    }

    /// Stages an accepted command's entries (an amendment's own, then the events), and
    /// its answer under its idempotency key. Where an entry would be larger than a C2SP
    /// entry bundle holds, nothing of the command is staged and the size is returned.
    fn stage_command(
        &mut self,
        batch: &mut Batch,
        entry: Option<(Timestamp, Vec<u8>)>,
        events: &[Event],
        outcome: Outcome,
        party: &Party,
        idempotency: Option<Idempotency>,
    ) -> Result<Answer, usize> {
        let first = self.next_index + batch.events.len() as u64;
        let start = batch.events.len();
        let deliveries = batch.deliveries.len();
        let amendment = entry.is_some();
        if let Some((at, data)) = entry {
            batch.events.push(NewEvent {
                need: String::new(),
                kind: "deal_amended".into(),
                at: at.to_string(),
                leaf_hash: rofr_ledger::leaf_hash(&data),
                data,
            });
        }
        self.append(batch, events);
        let largest = batch.events[start..].iter().map(|e| e.data.len()).max();
        if let Some(bytes) = largest.filter(|b| *b > rofr_ledger::tiles::MAX_ENTRY_BYTES) {
            self.spare.extend(batch.events.drain(start..));
            batch.deliveries.truncate(deliveries);
            return Err(bytes);
        }
        if amendment {
            // A deal entry belongs to no need. Kept now for evidence; a batch that
            // fails to commit is forgotten when the engine is reloaded.
            self.inner.note_deal_entry(first, &batch.events[start].data);
        }
        let body = command_body(first, &batch.events[start..]);
        if let Some(idem) = idempotency {
            let party = party.key();
            let answer = IdempotentResponse {
                party: party.clone(),
                key: idem.key.clone(),
                request_hash: idem.request_hash,
                status: outcome.stored(),
                body: body.clone(),
            };
            let end = self.next_index + batch.events.len() as u64;
            self.unsettled_keys
                .insert((party, idem.key), (end, answer.clone()));
            batch.idempotency.push(answer);
        }
        Ok(Answer {
            outcome,
            body,
            replayed: false,
        })
    }

    /// Step 4. Notes which needs the batch touched, and stages the rows `rows` asks
    /// for: none, the sweep's next few, or every one held back.
    fn stage_rows(&mut self, engine: &Engine, batch: &mut Batch, rows: Rows) {
        for (offset, event) in batch.events.iter().enumerate() {
            let index = self.next_index + offset as u64;
            touch(&mut self.dirty, &event.need, &event.at, index);
        }
        match rows {
            Rows::Held => {}
            Rows::All => {
                batch.needs = projection(engine, &self.dirty);
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
    }

    /// Step 5. Alone on its log, the batch goes to the committer and the writer moves
    /// on; sharing it, the writer commits it here, inside the write lock.
    fn hand_off(&mut self, engine: RwLockWriteGuard<'_, Engine>, pending: Pending) {
        if let Mode::Alone(committing) = &self.mode {
            drop(engine);
            committing.send(pending);
            self.reload_if_poisoned();
            return;
        }
        let mut engine = engine;
        if pending.batch.is_empty() {
            if let Err(error) = self.store.abort() {
                tracing::error!(%error, "ending an empty transaction failed");
            }
        }
        let inner = self.inner.clone();
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
                self.release_held();
                if let Err(error) = self.settle() {
                    tracing::error!(%error, "checking the projection failed; it is checked again at the next start");
                }
            }
        }
    }

    /// After a command or deadline panicked: the engine goes back to the log (once
    /// the batch before the failure is written), before any read or command sees it.
    pub(super) fn reload_if_poisoned(&mut self) {
        if std::mem::take(&mut self.poisoned) {
            self.recover();
        }
        self.release_held();
    }

    /// Sends the refusals held until the engine was reloaded.
    pub(super) fn release_held(&mut self) {
        for (reply, answer) in self.held_replies.drain(..) {
            let _ = reply.send(answer);
        }
    }

    /// After the committer refused a batch: waits until it has dealt with every batch
    /// sent so far, then brings the engine back to what the log holds.
    pub(super) fn recover(&mut self) {
        if let Mode::Alone(committing) = &self.mode {
            committing.resume();
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
    pub(super) fn reload(&mut self, engine: &mut Engine) {
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
        self.inner
            .deal_entries
            .write()
            .expect("deal entries lock")
            .retain(|e| e.index < folded.size);
        self.dirty.clear();
        self.unsettled_keys.clear();
        self.settling = Some(folded.touches);
        self.inner.applied.store(self.next_index, Ordering::Release);
        let size = self.next_index;
        self.inner
            .durable
            .send_modify(|(epoch, on_disk)| (*epoch, *on_disk) = (*epoch + 1, size));
    }

    pub(super) fn append(&mut self, batch: &mut Batch, events: &[Event]) {
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
                reached(FailPoint::QueueingWebhook);
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
pub(super) fn addressee(event: &Event) -> Option<&ProviderId> {
    match &event.kind {
        EventKind::OfferSent { provider, .. }
        | EventKind::MatchOffered { provider, .. }
        | EventKind::RfqSent { provider, .. }
        | EventKind::AwardMade { provider, .. } => Some(provider),
        _ => None,
    }
}

/// Runs one command through the engine into `events`; `None` where it panicked, which
/// is logged here. The fault hook, where a test set one, runs right after the engine.
fn run_command(
    engine: &mut Engine,
    command: Command,
    party: &Party,
    fault: &Option<FaultHook>,
    events: &mut Vec<Event>,
) -> Option<Result<(), Rejection>> {
    let need = command.need().cloned();
    let probe = fault.as_ref().map(|_| command.clone());
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let result = engine.execute_into(command, events);
        if let (Some(hook), Some(command)) = (fault, &probe) {
            hook(command);
        }
        result
    }));
    if applied.is_err() {
        tracing::error!(
            need.id = need.as_ref().map(|n| n.as_str()),
            party = %party.key(),
            "a command failed inside the broker; refused, nothing of it written"
        );
    }
    applied.ok()
}

/// A batch's work by kind: commands, syncs and flushes, each in the order queued.
fn sort_work(
    work: impl Iterator<Item = Work>,
) -> (
    Vec<Job>,
    Vec<tokio::sync::oneshot::Sender<()>>,
    Vec<ReplyTo>,
) {
    let mut jobs = Vec::with_capacity(work.size_hint().0);
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
    (jobs, synced, flushes)
}
