//! The first-refusal state machine (docs/lifecycle.md): decides which events a command
//! produces. Every check happens before the first event is emitted, so a rejected
//! command changes nothing; every event is applied to the state the moment it is
//! emitted, so later decisions in the same command see it.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::allocate::{by_provider, cheapest_first, Plan, QuoteOffer, Ranked};
use crate::cap::{Amount, Share};
use crate::command::{Command, Rejection};
use crate::deal::{
    Allocation, CapBasis, ConcentrationCap, Deal, FirstRefusal, Redelivery, Variant,
};
use crate::event::{DeclineReason, Event, EventKind, NeedSubmitted, ProofStatus, RoundProof};
use crate::invariants::{cap_own, cap_total, cap_window_start, refusals_cover};
use crate::log::{DealAdopted, DealAmended, Entry, OpenNeeds};
use crate::need::NeedSpec;
use crate::state::{AwardStatus, HolderOffer, NeedState, OfferKind, OfferStatus, RfqStatus, State};
use crate::types::{Gpus, NeedId, Price, ProviderId, Timestamp};

/// The most needs allocated together in one sourcing decision.
const BATCH_LIMIT: usize = 64;

/// Branch-and-bound nodes a sourcing round's proof may take. Counted, not timed, so
/// that a replay of the log gives the same awards on any machine; where the limit
/// stops the proof, the round's `sourcing_closed` event records the bound. The writer
/// waits for the proof: on 64 needs of 8 quotes each under 3 binding caps, 500 nodes
/// took 155 ms (2,000 took 459 ms and moved the bound by 0.00007%).
pub const ROUND_WORK: u64 = 500;

/// A version of the deal, and when it governs from.
#[derive(Debug, Clone)]
struct Version {
    deal: Arc<Deal>,
    effective: Timestamp,
    open_needs: OpenNeeds,
    /// The entry that amended the deal to it; `None` for the adopted version.
    entry: Option<Arc<DealAmended>>,
}

/// The engine: every version of the deal, the state folded from every entry so far,
/// and the time the last `Tick` brought. Commands are judged as of that time.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The deal as adopted, then each amendment, by version number less one.
    versions: Vec<Version>,
    /// How many versions have come into force: the last of them governs new needs,
    /// and the rest wait for their effective time.
    in_force: usize,
    state: State,
    clock: Timestamp,
}

impl Engine {
    pub fn new(deal: Arc<Deal>, start: Timestamp) -> Engine {
        Engine {
            versions: vec![Version {
                deal,
                effective: start,
                open_needs: OpenNeeds::Keep,
                entry: None,
            }],
            in_force: 1,
            state: State::default(),
            clock: start,
        }
    }

    /// Folds in the entry that adopts the deal (version 1, the deal the engine was
    /// made with).
    pub fn adopt(&mut self, entry: &DealAdopted) {
        self.clock = self.clock.max(entry.at);
    }

    /// Takes in an amendment: version `entry.version` of the deal, which is `deal`,
    /// governs new needs from `entry.effective`. It must follow the last version, be
    /// the same deal, and take effect no earlier than now; otherwise nothing changes.
    /// An amendment effective now comes into force at once, and the events that gives
    /// (open needs moving to it) are returned: they follow the amendment in the log.
    pub fn amend(&mut self, deal: Arc<Deal>, entry: &DealAmended) -> Result<Vec<Event>, Rejection> {
        self.register(deal, entry)?;
        let mut out = Vec::new();
        if entry.effective <= self.clock {
            self.take_effect(entry.effective, &mut out);
        }
        Ok(out)
    }

    /// [`Command::AmendDeal`]: the file must be a deal with no errors as of now, and
    /// becomes the next version; `out` takes the events of needs moving to it.
    fn amend_with(
        &mut self,
        file: &str,
        text: &str,
        effective: Option<Timestamp>,
        open_needs: OpenNeeds,
        out: &mut Vec<Event>,
    ) -> Result<(), Rejection> {
        let effective = effective.unwrap_or(self.clock);
        let at_fault = |d: &crate::diagnostic::Diagnostic| {
            Rejection::invalid("text", format!("{}: {}", d.location, d.message))
        };
        let deal = crate::deal::parse_deal(file, text)
            .map_err(|found| at_fault(found.first().expect("a failed parse says why")))?;
        let linted = crate::lint::lint(&deal, self.clock);
        if let Some(error) = linted
            .iter()
            .find(|d| d.severity == crate::diagnostic::Severity::Error)
        {
            return Err(at_fault(error));
        }
        let version = u32::try_from(self.versions.len() + 1).unwrap_or(u32::MAX);
        let entry = DealAmended::new(
            &deal.name, version, file, text, effective, open_needs, self.clock,
        );
        out.extend(self.amend(Arc::new(deal), &entry)?);
        Ok(())
    }

    /// Checks an amendment and adds its version, waiting for its effective time.
    fn register(&mut self, deal: Arc<Deal>, entry: &DealAmended) -> Result<(), Rejection> {
        if !entry.is_intact() {
            return Err(Rejection::invalid(
                "sha256",
                format!("the text does not match its SHA-256 {}", entry.sha256),
            ));
        }
        let next = self.versions.len() as u64 + 1;
        if next > u64::from(crate::log::MAX_VERSIONS) {
            return Err(Rejection::invalid(
                "version",
                format!("a deal has at most {} versions", crate::log::MAX_VERSIONS),
            ));
        }
        if u64::from(entry.version) != next {
            return Err(Rejection::invalid(
                "version",
                format!(
                    "version {} does not follow version {}",
                    entry.version,
                    next - 1
                ),
            ));
        }
        let name = &self.versions[0].deal.name;
        if &deal.name != name {
            return Err(Rejection::invalid(
                "deal",
                format!("the amendment is of deal `{}`, not of `{name}`", deal.name),
            ));
        }
        let last = self.versions.last().expect("the adopted version").effective;
        if entry.effective < self.clock || entry.effective < last || entry.effective < entry.at {
            return Err(Rejection::invalid(
                "effective",
                format!(
                    "effective {} is before the last entry's time {}",
                    entry.effective,
                    self.clock.max(last).max(entry.at)
                ),
            ));
        }
        self.versions.push(Version {
            deal,
            effective: entry.effective,
            open_needs: entry.open_needs,
            entry: Some(Arc::new(entry.clone())),
        });
        self.clock = self.clock.max(entry.at);
        Ok(())
    }

    /// Folds in any entry of the log. An amendment whose text is not a deal, or that
    /// [`Engine::amend`] refuses, is an error (the log was not written by a broker).
    pub fn apply_entry(&mut self, entry: &Entry) -> Result<(), String> {
        match entry {
            Entry::Event(event) => self.apply(event),
            Entry::Deal(deal) => self.adopt(deal),
            Entry::Amended(amended) => {
                let deal = crate::deal::parse_deal(&amended.file, &amended.text).map_err(|d| {
                    let first = d.first().map(ToString::to_string).unwrap_or_default();
                    format!(
                        "the amendment to version {} is not a deal: {first}",
                        amended.version
                    )
                })?;
                self.register(Arc::new(deal), amended).map_err(|r| {
                    format!(
                        "the amendment to version {}: {}",
                        amended.version, r.message
                    )
                })?;
                // Effective at once: the events it gave follow it in the log.
                self.catch_up(self.clock);
            }
        }
        Ok(())
    }

    /// The version of the deal in force: the one new needs name.
    pub fn deal_version(&self) -> u32 {
        self.in_force as u32
    }

    /// Version `version` of the deal, if there is one.
    pub fn deal_of(&self, version: u32) -> Option<&Deal> {
        let index = usize::try_from(version).ok()?.checked_sub(1)?;
        self.versions.get(index).map(|v| &*v.deal)
    }

    /// The entry that amended the deal to `version`, for every version but the first.
    pub fn amendment(&self, version: u32) -> Option<&DealAmended> {
        let index = usize::try_from(version).ok()?.checked_sub(1)?;
        self.versions.get(index)?.entry.as_deref()
    }

    /// When `version` governs new needs from: the adoption's time for the first.
    pub fn effective(&self, version: u32) -> Option<Timestamp> {
        let index = usize::try_from(version).ok()?.checked_sub(1)?;
        self.versions.get(index).map(|v| v.effective)
    }

    /// What amending the deal to `deal` from `effective` would do to the needs open
    /// now, under the rule `open_needs`. Judged on the needs as they stand: offers that
    /// lapse or are answered before the effective time are not withdrawn then.
    pub fn impact(&self, deal: &Deal, effective: Timestamp, open_needs: OpenNeeds) -> Impact {
        let mut impact = Impact::default();
        for need in self.state.needs() {
            if need.closed.is_some() || need.fulfilled_until.is_some() {
                continue;
            }
            impact.open += 1;
            let terms = terms_under(deal, effective, &need.spec, None);
            if terms.holder == need.holder && terms.variant == need.variant {
                continue;
            }
            impact.holder_changes += 1;
            if open_needs == OpenNeeds::Move {
                for offer in need.open_offers() {
                    *impact
                        .withdrawn
                        .entry(offer.provider.to_string())
                        .or_default() += 1;
                }
            }
        }
        impact.summary = match open_needs {
            OpenNeeds::Keep => format!(
                "{} open needs keep the terms they started under; {} of them would be governed otherwise under the new version",
                impact.open, impact.holder_changes
            ),
            OpenNeeds::Move if impact.withdrawn.is_empty() => format!(
                "{} open needs move to the new version at {effective}; {} of them change holder; no open offer is withdrawn",
                impact.open, impact.holder_changes
            ),
            OpenNeeds::Move => {
                let offers: Vec<String> = impact
                    .withdrawn
                    .iter()
                    .map(|(p, n)| format!("{n} offers to {p} now open are withdrawn"))
                    .collect();
                format!(
                    "{} open needs move to the new version at {effective}; {} of them change holder: {}",
                    impact.open,
                    impact.holder_changes,
                    offers.join(", ")
                )
            }
        };
        impact
    }

    /// When the engine next has something to do on its own: a need's deadline, or a
    /// version coming into force.
    pub fn next_due(&self) -> Option<Timestamp> {
        let effective = self.versions.get(self.in_force).map(|v| v.effective);
        match (self.state.next_deadline(), effective) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// How many versions the deal has, in force or waiting.
    pub fn versions(&self) -> u32 {
        self.versions.len() as u32
    }

    /// The versions waiting for their effective time, with it.
    pub fn pending(&self) -> impl Iterator<Item = (u32, Timestamp)> + '_ {
        self.versions[self.in_force..]
            .iter()
            .zip(self.in_force as u32 + 1..)
            .map(|(v, number)| (number, v.effective))
    }

    /// Brings into force every waiting version whose effective time is at or before
    /// `at`, without any events: what a replica folding entries does.
    fn catch_up(&mut self, at: Timestamp) {
        while self
            .versions
            .get(self.in_force)
            .is_some_and(|v| v.effective <= at)
        {
            self.in_force += 1;
        }
    }

    /// Folds in an event another engine decided (a replica sharing the log), moving
    /// the clock to its time if that is later.
    pub fn apply(&mut self, event: &Event) {
        // An event at or after a waiting version's effective time was decided under it.
        self.catch_up(event.at);
        self.state.apply(event);
        self.clock = self.clock.max(event.at);
    }

    /// Keeps every need unpacked ([`State::keep_unpacked`]).
    pub fn keep_unpacked(&mut self) {
        self.state.keep_unpacked();
    }

    /// The version of the deal in force.
    pub fn deal(&self) -> &Deal {
        &self.versions[self.in_force - 1].deal
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn clock(&self) -> Timestamp {
        self.clock
    }

    pub fn execute(&mut self, command: Command) -> Result<Vec<Event>, Rejection> {
        // Room for most commands' events, in a block the allocator keeps at hand.
        let mut out = Vec::with_capacity(8);
        self.execute_into(command, &mut out)?;
        Ok(out)
    }

    /// [`Engine::execute`], appending the events to `out`: a caller that runs many
    /// commands (the simulator) keeps its buffers rather than allocating one each time.
    /// `out` is as it was when the command is rejected.
    pub fn execute_into(
        &mut self,
        command: Command,
        out: &mut Vec<Event>,
    ) -> Result<(), Rejection> {
        match command {
            Command::Tick { now } => return self.tick(now, out),
            Command::AmendDeal {
                file,
                text,
                effective,
                open_needs,
            } => return self.amend_with(&file, &text, effective, open_needs, out),
            _ => {}
        }
        let found = command.need().and_then(|id| {
            let number = self.state.unpack(id.as_str())?;
            Some((id.clone(), number))
        });
        let before = out.len();
        let index = self.version_index(found.as_ref().map(|(_, n)| *n));
        let mut step = Step {
            deal: &self.versions[index].deal,
            deal_version: self.in_force as u32,
            state: &mut self.state,
            now: self.clock,
            out: std::mem::take(out),
            cap_totals: Default::default(),
            found: RefCell::new(found),
        };
        let result = step.command(command);
        *out = step.out;
        if result.is_err() {
            out.truncate(before);
        }
        self.state.settle();
        result
    }

    fn tick(&mut self, now: Timestamp, out: &mut Vec<Event>) -> Result<(), Rejection> {
        if now < self.clock {
            return Err(Rejection {
                code: crate::command::RejectionCode::ClockBackwards,
                field: Some("now"),
                message: format!("time cannot go back from {} to {now}", self.clock),
            });
        }
        loop {
            let next = self.state.agenda.first().copied();
            // A version comes into force before the deadlines falling due with it.
            if let Some(effective) = self
                .versions
                .get(self.in_force)
                .map(|v| v.effective)
                .filter(|&e| e <= now && next.is_none_or(|(due, _)| e <= due))
            {
                self.take_effect(effective, out);
                continue;
            }
            let Some((due, number)) = next else {
                break;
            };
            if due > now {
                break;
            }
            self.state.unpack_number(number as usize);
            let id = self.state.id_of(number);
            let emitted = out.len();
            let index = self.version_index(Some(number as usize));
            let mut step = Step {
                deal: &self.versions[index].deal,
                deal_version: self.in_force as u32,
                state: &mut self.state,
                now: due,
                out: std::mem::take(out),
                cap_totals: Default::default(),
                found: RefCell::new(Some((id.clone(), number as usize))),
            };
            // Needs whose sourcing rounds close at this same moment are allocated
            // together, so that the caps are shared out at least cost.
            let batch: Vec<NeedId> = if step.only_quotes_due(&id) {
                step.state
                    .agenda
                    .range_from((due, number))
                    .take_while(|(at, _)| *at == due)
                    .take(4 * BATCH_LIMIT)
                    // A packed need has no round open: passed by unread.
                    // Needs under another version of the deal are allocated under
                    // their own terms, each alone.
                    .filter(|&&(_, n)| {
                        let need = step.state.unpacked_number(n as usize);
                        need.is_some_and(|need| {
                            need.deal_version as usize == index + 1 && step.quotes_alone_due(need)
                        })
                    })
                    .map(|&(_, n)| step.state.id_of(n))
                    .take(BATCH_LIMIT)
                    .collect()
            } else {
                Vec::new()
            };
            if batch.len() > 1 {
                step.close_sourcing_together(&batch);
            } else {
                step.fire(&id);
            }
            let progressed = step.out.len() > emitted;
            *out = step.out;
            if !progressed && self.state.agenda.first() == Some(&(due, number)) {
                // A deadline that fires without effect would fire forever. The engine
                // is built so this cannot happen; if it ever did, dropping the entry
                // keeps the broker alive and the property tests fail loudly.
                debug_assert!(false, "deadline of need {id} at {due} had no effect");
                self.state.agenda.remove(&(due, number));
            }
            // A restart may fire a great many deadlines in one tick: each need goes
            // back to rest as soon as its own are done.
            self.state.settle();
        }
        self.clock = now;
        Ok(())
    }

    /// The place in `versions` of the version governing the need numbered `number`
    /// (unpacked), or of the one in force where there is no such need.
    fn version_index(&self, number: Option<usize>) -> usize {
        let version = number
            .and_then(|n| self.state.unpacked_number(n))
            .map_or(self.in_force, |need| need.deal_version as usize);
        version.clamp(1, self.versions.len()) - 1
    }

    /// Brings the next waiting version into force at its effective time. Under
    /// [`OpenNeeds::Move`] every need still open moves to it there and then.
    fn take_effect(&mut self, at: Timestamp, out: &mut Vec<Event>) {
        self.in_force += 1;
        let index = self.in_force - 1;
        let version = self.in_force as u32;
        if self.versions[index].open_needs != OpenNeeds::Move {
            return;
        }
        let open: Vec<usize> = self
            .state
            .needs()
            .filter(|n| {
                n.closed.is_none()
                    && n.fulfilled_until.is_none()
                    && u32::from(n.deal_version) < version
            })
            .map(|n| n.number as usize)
            .collect();
        for number in open {
            self.state.unpack_number(number);
            let id = self.state.id_of(number as u32);
            let mut step = Step {
                deal: &self.versions[index].deal,
                deal_version: version,
                state: &mut self.state,
                now: at,
                out: std::mem::take(out),
                cap_totals: Default::default(),
                found: RefCell::new(Some((id.clone(), number))),
            };
            step.move_terms(&id);
            *out = step.out;
            self.state.settle();
        }
    }
}

/// What `deal` makes of `spec` at `now`: [`Terms`].
fn terms_under(deal: &Deal, now: Timestamp, spec: &NeedSpec, offer_price: Option<Price>) -> Terms {
    let clause_index = deal
        .first_refusals
        .iter()
        .position(|c| c.term.covers(now) && c.scope.matches(&spec.profile()));
    let Some(index) = clause_index else {
        return Terms::default();
    };
    let clause = &deal.first_refusals[index];
    if let Some(r) = deal.restriction_forbidding(&clause.holder, &spec.tags) {
        return Terms {
            holder_exempt: Some(format!(
                "{} bars `{}` from this need",
                r.clause, clause.holder
            )),
            ..Terms::default()
        };
    }
    let listed = clause.offer_prices.get(&spec.sku).copied();
    let price = offer_price
        .or(listed)
        .unwrap_or(spec.max_price_per_gpu_hour);
    Terms {
        holder: Some(clause.holder.clone()),
        holder_exempt: None,
        first_refusal: Some(index),
        variant: Some(clause.variant),
        offer_price: Some(price.min(spec.max_price_per_gpu_hour)),
        reoffer_threshold: Some(clause.reoffer_threshold),
    }
}

/// What an amendment would do to the needs open now, were it in force
/// ([`Engine::impact`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Impact {
    /// Needs open now (not closed, not yet fulfilled).
    pub open: u64,
    /// Of those, how many the new version would give to another holder, or to none.
    pub holder_changes: u64,
    /// Offers to holders open now that would be withdrawn at the effective time
    /// (under `move`), by provider.
    pub withdrawn: std::collections::BTreeMap<String, u64>,
    /// What becomes of the open needs, in a sentence.
    pub summary: String,
}

/// What a version of the deal makes of a need: who holds the right over it, under
/// which clause, and at what price the holder is offered it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Terms {
    holder: Option<ProviderId>,
    holder_exempt: Option<String>,
    first_refusal: Option<usize>,
    variant: Option<Variant>,
    offer_price: Option<Price>,
    reoffer_threshold: Option<f64>,
}

/// How many of a deal's caps a step remembers totals for.
const CACHED_CAPS: usize = 4;

struct Step<'a> {
    deal: &'a Deal,
    /// The version of the deal in force, which new needs name.
    deal_version: u32,
    state: &'a mut State,
    now: Timestamp,
    out: Vec<Event>,
    /// Everyone's usage under the deal's first caps (by place) as of `now`, kept until
    /// the next event: a round asks for it once per provider. Deals rarely have more.
    cap_totals: [Cell<Option<Amount>>; CACHED_CAPS],
    /// The need last found and its number: a step asks about one need many times. It
    /// keeps its own copy of the id, so that no other id can ever pass for it.
    found: RefCell<Option<(NeedId, usize)>>,
}

/// Free text a party sends, bounded and without control characters.
fn text(field: &'static str, text: &str) -> Result<(), Rejection> {
    crate::need::check_text(field, text, crate::need::MAX_TEXT_CHARS)
        .map_err(|e| Rejection::invalid(e.field, e.message))
}

fn need_not_found(id: &NeedId) -> Rejection {
    Rejection::not_found(format!("no need `{id}`"))
}

/// The one answer a provider gets for a need that does not exist or is none of its
/// business, so that its ids cannot be probed.
fn not_for(provider: &ProviderId, id: &NeedId) -> Rejection {
    Rejection::not_found(format!("no need `{id}` for `{provider}`"))
}

fn nothing_open(provider: &ProviderId, id: &NeedId, what: &str) -> Rejection {
    Rejection::not_found(format!("no open {what} for `{provider}` on need `{id}`"))
}

impl Step<'_> {
    fn emit(&mut self, need: &NeedId, kind: EventKind) {
        let event = Event {
            kind,
            need: need.clone(),
            at: self.now,
        };
        // The step's need, most often, whose number it knows.
        let number = match &*self.found.borrow() {
            Some((last, number)) if last == need => Some(*number),
            _ => None,
        };
        self.state.apply_held(&event, number);
        self.out.push(event);
        for total in &self.cap_totals {
            total.set(None);
        }
    }

    /// Total and `provider`'s own usage under `cap` now, bases included: what
    /// `invariants::cap_usage` gives, with the total worked out once between events.
    fn cap_usage(&self, cap: &ConcentrationCap, provider: &ProviderId) -> (Amount, Amount) {
        let from = cap_window_start(cap, self.now);
        let place = self
            .deal
            .caps
            .iter()
            .position(|c| std::ptr::eq(c, cap))
            .expect("a cap of this deal");
        let cached = self.cap_totals.get(place);
        let total = match cached.and_then(Cell::get) {
            Some(total) => total,
            None => {
                let total = cap_total(cap, &self.state.usage, from);
                if let Some(cell) = cached {
                    cell.set(Some(total));
                }
                total
            }
        };
        (total, cap_own(cap, &self.state.usage, from, provider))
    }

    /// The need `id`, which the command or deadline at hand unpacked beforehand
    /// ([`State::unpack`]): it is read many times before the step is done.
    fn need(&self, id: &NeedId) -> Cow<'_, NeedState> {
        self.find(id).expect("a known need")
    }

    /// The need `id`, if there is one.
    fn find(&self, id: &NeedId) -> Option<Cow<'_, NeedState>> {
        if let Some((last, number)) = &*self.found.borrow() {
            if last == id {
                return Some(self.state.unpack_at(*number));
            }
        }
        let number = self.state.number_of(id.as_str())?;
        *self.found.borrow_mut() = Some((id.clone(), number));
        Some(self.state.unpack_at(number))
    }

    fn clause(&self, id: &NeedId) -> Option<&FirstRefusal> {
        let need = self.need(id);
        need.first_refusal
            .and_then(|i| self.deal.first_refusals.get(usize::from(i)))
    }

    /// A need as a provider may address it: [`not_for`] where it is missing or does
    /// not concern that provider.
    fn need_for(
        &self,
        provider: &ProviderId,
        id: &NeedId,
    ) -> Result<Cow<'_, NeedState>, Rejection> {
        self.find(id)
            .filter(|need| need.concerns(provider))
            .ok_or_else(|| not_for(provider, id))
    }

    fn open_need(&self, id: &NeedId) -> Result<Cow<'_, NeedState>, Rejection> {
        let need = self.find(id).ok_or_else(|| need_not_found(id))?;
        if let Some(closed) = need.closed {
            return Err(Rejection::conflict(format!(
                "need `{id}` is closed ({closed:?})"
            )));
        }
        Ok(need)
    }

    fn command(&mut self, command: Command) -> Result<(), Rejection> {
        match command {
            Command::Tick { .. } | Command::AmendDeal { .. } => {
                unreachable!("ticks and amendments are handled by the engine")
            }
            Command::SubmitNeed { need } => self.submit(need),
            Command::CancelNeed { need, reason } => self.cancel(&need, reason),
            Command::Accept {
                provider,
                need,
                offer,
                gpus,
                price,
            } => self.accept(&provider, &need, offer, gpus, price),
            Command::Decline {
                provider,
                need,
                offer,
                reason,
            } => self.decline(&provider, &need, offer, reason),
            Command::Quote {
                provider,
                need,
                gpus,
                price,
            } => self.quote(&provider, &need, gpus, price),
            Command::Match {
                provider,
                need,
                offer,
                gpus,
            } => self.match_offer(&provider, &need, offer, gpus),
            Command::Approve { need, award } => self.approve(&need, award),
            Command::Reject {
                need,
                award,
                reason,
            } => self.reject(&need, award, reason),
            Command::Confirm {
                provider,
                need,
                award,
                reservation,
            } => self.confirm(&provider, &need, award, reservation),
            Command::Fail {
                provider,
                need,
                award,
                reason,
            } => self.fail(&provider, &need, award, reason),
        }
    }

    // ----- buyer commands -------------------------------------------------------

    fn submit(&mut self, spec: NeedSpec) -> Result<(), Rejection> {
        spec.validate()
            .map_err(|e| Rejection::invalid(e.field, e.message))?;
        self.offered_by_the_deal(&spec)?;
        if self.state.has_need(spec.id.as_str()) {
            return Err(Rejection {
                field: Some("id"),
                ..Rejection::conflict(format!("need `{}` already exists", spec.id))
            });
        }
        if spec.decide_by <= self.now {
            return Err(Rejection::invalid(
                "decide_by",
                format!(
                    "decide_by {} is not after now ({})",
                    spec.decide_by, self.now
                ),
            ));
        }
        let horizon = self
            .now
            .plus_seconds(crate::need::MAX_DECISION_DAYS * 86_400);
        if spec.decide_by > horizon {
            return Err(Rejection::invalid(
                "decide_by",
                format!(
                    "decide_by {} is more than {} days ahead (now {}); decide by {horizon} at the latest",
                    spec.decide_by,
                    crate::need::MAX_DECISION_DAYS,
                    self.now
                ),
            ));
        }
        if spec.latest_start < self.now {
            return Err(Rejection::invalid(
                "latest_start",
                format!(
                    "latest_start {} is in the past (now {})",
                    spec.latest_start, self.now
                ),
            ));
        }
        let terms = self.terms(&spec, spec.offer_price_per_gpu_hour);
        let id = spec.id.clone();
        self.emit(
            &id,
            EventKind::NeedSubmitted(Box::new(NeedSubmitted {
                sku: spec.sku,
                gpus: spec.gpus,
                hours: spec.hours,
                regions: spec.regions,
                workload: spec.workload,
                tags: spec.tags,
                max_price_per_gpu_hour: spec.max_price_per_gpu_hour,
                earliest_start: spec.earliest_start,
                latest_start: spec.latest_start,
                decide_by: spec.decide_by,
                priority: spec.priority,
                launch: spec.launch,
                holder: terms.holder,
                variant: terms.variant,
                first_refusal: terms.first_refusal,
                offer_price_per_gpu_hour: terms.offer_price,
                reoffer_threshold: terms.reoffer_threshold,
                holder_exempt: terms.holder_exempt,
                deal_version: Some(self.deal_version),
            })),
        );
        self.next_step(&id);
        Ok(())
    }

    /// What the step's version of the deal makes of `spec` now. `offer_price` is the
    /// price the buyer asked the holder be offered, if it asked.
    fn terms(&self, spec: &NeedSpec, offer_price: Option<Price>) -> Terms {
        terms_under(self.deal, self.now, spec, offer_price)
    }

    /// Moves an open need to the step's version of the deal, which has just come into
    /// force. Where it takes the right from the holder (or gives it to another), the
    /// open offers to the holder are withdrawn; the need then carries on under its new
    /// terms.
    fn move_terms(&mut self, id: &NeedId) {
        let need = self.need(id);
        let kept_price = need.holder_offer_price;
        let old_holder = need.holder.clone();
        let spec = need.spec.clone();
        let fresh = self.terms(&spec, None);
        let terms = if fresh.holder.is_some() && fresh.holder == old_holder {
            // The same holder keeps the price it was offered at, which the buyer may
            // have set.
            Terms {
                offer_price: kept_price.or(fresh.offer_price),
                ..fresh
            }
        } else {
            fresh
        };
        let version = self.deal_version;
        let mut held_back = Vec::new();
        if terms.holder != old_holder || terms.variant != need.variant {
            let open: Vec<HolderOffer> = need.open_offers().cloned().collect();
            for offer in open {
                self.emit(
                    id,
                    EventKind::OfferWithdrawn {
                        provider: offer.provider.clone(),
                        gpus: offer.gpus,
                        price_per_gpu_hour: offer.price,
                        offer: offer.seq,
                        version,
                    },
                );
                held_back.extend(offer.against.map(|p| (p, offer.gpus, offer.price)));
            }
        }
        let free_of_any_right = terms.holder.is_none();
        self.emit(
            id,
            EventKind::TermsChanged {
                version,
                holder: terms.holder,
                variant: terms.variant,
                first_refusal: terms.first_refusal,
                offer_price_per_gpu_hour: terms.offer_price,
                reoffer_threshold: terms.reoffer_threshold,
                holder_exempt: terms.holder_exempt,
            },
        );
        // A third-party award a withdrawn offer was holding back goes ahead where no
        // right covers the need now; under another holder's right, what it held is
        // offered to that holder first.
        if free_of_any_right {
            for (third_party, gpus, price) in held_back {
                self.award(id, &third_party, gpus, price);
            }
        }
        self.next_step(id);
    }

    /// A need's sku, and each of its regions, must be one that a provider of the
    /// deal offers: otherwise nobody could ever supply it.
    fn offered_by_the_deal(&self, spec: &NeedSpec) -> Result<(), Rejection> {
        let sells = |p: &&crate::deal::Provider| p.skus.is_empty() || p.skus.contains(&spec.sku);
        if !self.deal.providers.iter().any(|p| sells(&p)) {
            return Err(Rejection::invalid(
                "sku",
                format!("no provider of the deal offers sku `{}`", spec.sku),
            ));
        }
        for region in &spec.regions {
            let serves =
                |p: &crate::deal::Provider| p.regions.is_empty() || p.regions.contains(region);
            if !self.deal.providers.iter().any(|p| sells(&p) && serves(p)) {
                return Err(Rejection::invalid(
                    "regions",
                    format!(
                        "no provider of the deal offers `{}` in region `{region}`",
                        spec.sku
                    ),
                ));
            }
        }
        Ok(())
    }

    fn cancel(&mut self, id: &NeedId, reason: String) -> Result<(), Rejection> {
        text("reason", &reason)?;
        let need = self.open_need(id)?;
        if need.awarded() > Gpus::ZERO {
            return Err(Rejection::conflict(format!(
                "need `{id}` already has awards; a provider can fail an award, but the need cannot be cancelled"
            )));
        }
        self.emit(id, EventKind::NeedCancelled { reason });
        Ok(())
    }

    fn pending_award(&self, id: &NeedId, award: u32) -> Result<ProviderId, Rejection> {
        let need = self.open_need(id)?;
        let found = need
            .awards
            .iter()
            .find(|a| a.seq == award)
            .ok_or_else(|| Rejection::not_found(format!("no award {award} on need `{id}`")))?;
        if found.status != AwardStatus::PendingApproval {
            return Err(Rejection::conflict(format!(
                "award {award} on need `{id}` is not waiting for approval"
            )));
        }
        Ok(found.provider.clone())
    }

    fn approve(&mut self, id: &NeedId, award: u32) -> Result<(), Rejection> {
        self.pending_award(id, award)?;
        let a = self
            .need(id)
            .awards
            .iter()
            .find(|a| a.seq == award)
            .cloned()
            .expect("checked");
        let confirm_by = self
            .deal
            .calendar
            .add(self.now, self.deal.sourcing.confirm_window);
        self.emit(
            id,
            EventKind::AwardMade {
                provider: a.provider,
                gpus: a.gpus,
                price_per_gpu_hour: a.price,
                award,
                confirm_by,
            },
        );
        Ok(())
    }

    fn reject(&mut self, id: &NeedId, award: u32, reason: String) -> Result<(), Rejection> {
        text("reason", &reason)?;
        let provider = self.pending_award(id, award)?;
        self.emit(
            id,
            EventKind::ApprovalRejected {
                provider,
                award,
                reason,
            },
        );
        self.wait(id, "an award was rejected by the approver");
        self.next_step(id);
        Ok(())
    }

    // ----- the holder's and providers' answers -----------------------------------

    /// Finds the open offer to `provider` of one of `kinds`, by number or as the only one.
    fn find_offer(
        &self,
        provider: &ProviderId,
        id: &NeedId,
        seq: Option<u32>,
        kinds: &[OfferKind],
    ) -> Result<HolderOffer, Rejection> {
        self.need_for(provider, id)?;
        let need = self.open_need(id)?;
        let mine = need
            .offers
            .iter()
            .filter(|o| &o.provider == provider && kinds.contains(&o.kind));
        let offer = match seq {
            Some(seq) => mine
                .into_iter()
                .find(|o| o.seq == seq)
                .ok_or_else(|| nothing_open(provider, id, "offer"))?,
            None => {
                let open: Vec<&HolderOffer> =
                    mine.filter(|o| o.status == OfferStatus::Open).collect();
                match open.as_slice() {
                    [one] => *one,
                    [] => return Err(nothing_open(provider, id, "offer")),
                    _ => {
                        return Err(Rejection::invalid(
                            "offer",
                            format!(
                                "{} offers are open on need `{id}`: name one with `offer`",
                                open.len()
                            ),
                        ))
                    }
                }
            }
        };
        if need.closed.is_some() || offer.status != OfferStatus::Open {
            return Err(Rejection::conflict(format!(
                "offer {} on need `{id}` is no longer open",
                offer.seq
            )));
        }
        if offer.deadline <= self.now {
            return Err(Rejection::lapsed(format!(
                "offer {} on need `{id}` lapsed at {}",
                offer.seq, offer.deadline
            )));
        }
        Ok(offer.clone())
    }

    fn taken_quantity(
        &self,
        id: &NeedId,
        offer: &HolderOffer,
        gpus: Option<Gpus>,
    ) -> Result<Gpus, Rejection> {
        let take = gpus.unwrap_or(offer.gpus);
        if take == Gpus::ZERO || take > offer.gpus {
            return Err(Rejection::invalid(
                "gpus",
                format!("take between 1 and the {} GPUs offered", offer.gpus),
            ));
        }
        let partial = self.clause(id).is_some_and(|c| c.partial);
        if take < offer.gpus && !partial {
            return Err(Rejection::invalid(
                "gpus",
                format!(
                    "the right is all or nothing: take all {} GPUs or decline",
                    offer.gpus
                ),
            ));
        }
        Ok(take)
    }

    fn accept(
        &mut self,
        provider: &ProviderId,
        id: &NeedId,
        seq: Option<u32>,
        gpus: Option<Gpus>,
        price: Option<Price>,
    ) -> Result<(), Rejection> {
        let offer = self.find_offer(provider, id, seq, &[OfferKind::First, OfferKind::Reoffer])?;
        let take = self.taken_quantity(id, &offer, gpus)?;
        let negotiated = self.need(id).variant == Some(Variant::Negotiate);
        let price = match price {
            Some(agreed) if negotiated => {
                if agreed > self.need(id).spec.max_price_per_gpu_hour {
                    return Err(Rejection::invalid(
                        "price",
                        "the agreed price is above the need's maximum price",
                    ));
                }
                agreed
            }
            Some(other) if other != offer.price => {
                return Err(Rejection::invalid(
                    "price",
                    format!(
                        "only a `negotiate` right agrees a new price; this offer is at {}",
                        offer.price
                    ),
                ))
            }
            _ => offer.price,
        };
        self.holder_takes(id, provider, &offer, take, price);
        self.next_step(id);
        Ok(())
    }

    fn decline(
        &mut self,
        provider: &ProviderId,
        id: &NeedId,
        seq: Option<u32>,
        reason: DeclineReason,
    ) -> Result<(), Rejection> {
        if matches!(
            reason,
            DeclineReason::Partial | DeclineReason::DeliveryFailed
        ) {
            return Err(Rejection::invalid(
                "reason",
                "use no_capacity, price, timing or other",
            ));
        }
        let need = self.need_for(provider, id)?;
        if need.holder.as_ref() == Some(provider) && need.open_offers().next().is_some() {
            let kinds = [OfferKind::First, OfferKind::Reoffer, OfferKind::Match];
            let offer = self.find_offer(provider, id, seq, &kinds)?;
            self.holder_refuses(id, &offer, Some(reason));
            self.next_step(id);
            return Ok(());
        }
        let round = need.round;
        self.open_rfq(provider, id)?;
        self.emit(
            id,
            EventKind::RfqDeclined {
                provider: provider.clone(),
                reason,
                round,
            },
        );
        self.close_sourcing_if_answered(id);
        Ok(())
    }

    fn match_offer(
        &mut self,
        provider: &ProviderId,
        id: &NeedId,
        seq: Option<u32>,
        gpus: Option<Gpus>,
    ) -> Result<(), Rejection> {
        let offer = self.find_offer(provider, id, seq, &[OfferKind::Match])?;
        let take = self.taken_quantity(id, &offer, gpus)?;
        self.holder_takes(id, provider, &offer, take, offer.price);
        self.next_step(id);
        Ok(())
    }

    /// The holder takes `take` GPUs of an offer at `price`: records the acceptance (and
    /// the refusal of the rest), awards the holder, and awards the rest to the third
    /// party a re-offer or match was holding back.
    fn holder_takes(
        &mut self,
        id: &NeedId,
        provider: &ProviderId,
        offer: &HolderOffer,
        take: Gpus,
        price: Price,
    ) {
        let (provider, seq) = (provider.clone(), offer.seq);
        let is_match = offer.kind == OfferKind::Match;
        self.emit(
            id,
            if is_match {
                EventKind::MatchAccepted {
                    provider: provider.clone(),
                    gpus: take,
                    price_per_gpu_hour: price,
                    offer: seq,
                }
            } else {
                EventKind::OfferAccepted {
                    provider: provider.clone(),
                    gpus: take,
                    price_per_gpu_hour: price,
                    offer: seq,
                }
            },
        );
        let rest = offer.gpus.saturating_sub(take);
        if rest > Gpus::ZERO {
            let revives_at = self.revives_at(id);
            let provider = provider.clone();
            self.emit(
                id,
                if is_match {
                    EventKind::MatchDeclined {
                        provider,
                        gpus: rest,
                        price_per_gpu_hour: price,
                        offer: seq,
                        revives_at,
                    }
                } else {
                    EventKind::OfferDeclined {
                        provider,
                        gpus: rest,
                        reason: DeclineReason::Partial,
                        price_per_gpu_hour: price,
                        offer: Some(seq),
                        revives_at,
                    }
                },
            );
        }
        self.award(id, &provider, take, price);
        if let (Some(third_party), true) = (&offer.against, rest > Gpus::ZERO) {
            self.award(id, third_party, rest, offer.price);
        }
    }

    fn open_rfq(&self, provider: &ProviderId, id: &NeedId) -> Result<Gpus, Rejection> {
        let need = self.need_for(provider, id)?;
        let rfq = need
            .rfqs
            .iter()
            .find(|r| &r.provider == provider)
            .filter(|_| need.sourcing_open && need.closed.is_none())
            .ok_or_else(|| nothing_open(provider, id, "request for quotes"))?;
        if rfq.status != RfqStatus::Open {
            return Err(Rejection::conflict(format!(
                "`{provider}` already answered the request for quotes on need `{id}`"
            )));
        }
        if rfq.deadline <= self.now {
            return Err(Rejection::lapsed(format!(
                "the request for quotes on need `{id}` closed at {}",
                rfq.deadline
            )));
        }
        Ok(rfq.gpus)
    }

    fn quote(
        &mut self,
        provider: &ProviderId,
        id: &NeedId,
        gpus: Gpus,
        price: Price,
    ) -> Result<(), Rejection> {
        let asked = self.open_rfq(provider, id)?;
        if gpus == Gpus::ZERO || gpus > asked {
            return Err(Rejection::invalid(
                "gpus",
                format!("quote between 1 and the {asked} GPUs asked for"),
            ));
        }
        if price == Price::default() {
            return Err(Rejection::invalid(
                "price",
                "a quote's price is above zero: give dollars per GPU-hour",
            ));
        }
        let need = self.need(id);
        if price > need.spec.max_price_per_gpu_hour {
            return Err(Rejection::invalid(
                "price",
                format!(
                    "{price} is above the need's maximum of {}",
                    need.spec.max_price_per_gpu_hour
                ),
            ));
        }
        let round = need.round;
        self.emit(
            id,
            EventKind::QuoteReceived {
                provider: provider.clone(),
                gpus,
                price_per_gpu_hour: price,
                round,
            },
        );
        self.close_sourcing_if_answered(id);
        Ok(())
    }

    fn award_of(
        &self,
        provider: &ProviderId,
        id: &NeedId,
        award: u32,
    ) -> Result<AwardStatus, Rejection> {
        let need = self.need_for(provider, id)?;
        let found = need
            .awards
            .iter()
            .find(|a| a.seq == award && &a.provider == provider)
            .ok_or_else(|| {
                Rejection::not_found(format!("no award {award} for `{provider}` on need `{id}`"))
            })?;
        Ok(found.status)
    }

    fn confirm(
        &mut self,
        provider: &ProviderId,
        id: &NeedId,
        award: u32,
        reservation: String,
    ) -> Result<(), Rejection> {
        crate::need::check_text("reservation", &reservation, crate::need::MAX_SHORT_TEXT)
            .map_err(|e| Rejection::invalid(e.field, e.message))?;
        if reservation.trim().is_empty() {
            return Err(Rejection::invalid(
                "reservation",
                "give the provider's reservation id (1 to 200 characters)",
            ));
        }
        match self.award_of(provider, id, award)? {
            AwardStatus::Made => {}
            other => {
                return Err(Rejection::conflict(format!(
                    "award {award} on need `{id}` cannot be confirmed now ({other:?})"
                )))
            }
        }
        self.emit(
            id,
            EventKind::AwardConfirmed {
                provider: provider.clone(),
                reservation,
                award,
            },
        );
        self.next_step(id);
        Ok(())
    }

    fn fail(
        &mut self,
        provider: &ProviderId,
        id: &NeedId,
        award: u32,
        reason: String,
    ) -> Result<(), Rejection> {
        text("reason", &reason)?;
        match self.award_of(provider, id, award)? {
            AwardStatus::Made | AwardStatus::Confirmed => {}
            other => {
                return Err(Rejection::conflict(format!(
                    "award {award} on need `{id}` cannot fail now ({other:?})"
                )))
            }
        }
        if self.need(id).closed.is_some() {
            return Err(Rejection::conflict(format!("need `{id}` is closed")));
        }
        self.award_failed(id, award, reason);
        Ok(())
    }

    fn award_failed(&mut self, id: &NeedId, award: u32, reason: String) {
        let a = self
            .need(id)
            .awards
            .iter()
            .find(|a| a.seq == award)
            .cloned()
            .expect("exists");
        self.emit(
            id,
            EventKind::AwardFailed {
                provider: a.provider.clone(),
                reason,
                award,
                gpus: a.gpus,
            },
        );
        let need = self.need(id);
        let holder = need.holder.clone();
        let variant = need.variant;
        if holder.as_ref() == Some(&a.provider) {
            // The holder took the quantity and cannot deliver it: that is its refusal,
            // recorded so that others may now be awarded it.
            let revives_at = self.revives_at(id);
            self.emit(
                id,
                EventKind::OfferDeclined {
                    provider: a.provider,
                    gpus: a.gpus,
                    reason: DeclineReason::DeliveryFailed,
                    price_per_gpu_hour: a.price,
                    offer: None,
                    revives_at,
                },
            );
        } else if let (Some(holder), Some(Variant::FirstOffer)) = (holder, variant) {
            if self.clause(id).map(|c| c.on_delivery_failure) == Some(Redelivery::HolderFirst) {
                self.emit(
                    id,
                    EventKind::RightRevived {
                        provider: holder,
                        gpus: a.gpus,
                    },
                );
            }
        }
        self.next_step(id);
    }

    // ----- the life of a need ----------------------------------------------------

    fn revives_at(&self, id: &NeedId) -> Option<Timestamp> {
        let clause = self.clause(id)?;
        if clause.variant == Variant::Negotiate {
            return None;
        }
        clause
            .third_party_window
            .map(|w| self.deal.calendar.add(self.now, w))
    }

    fn wait(&mut self, id: &NeedId, reason: &str) {
        let free = self.need(id).free();
        let retry = self
            .deal
            .calendar
            .add(self.now, self.deal.sourcing.retry_after);
        // A zero retry would fire at once, forever: wait at least a second.
        let until = retry.max(self.now.plus_seconds(1));
        self.emit(
            id,
            EventKind::NeedWaiting {
                gpus: free,
                until,
                reason: reason.to_owned(),
            },
        );
    }

    /// Moves a need on when nothing is in flight: expire it, revive the right, offer it
    /// to the holder, or source it.
    fn next_step(&mut self, id: &NeedId) {
        let need = self.need(id);
        if need.closed.is_some() {
            return;
        }
        let free = need.free();
        let unplaced = need.spec.gpus.saturating_sub(need.awarded());
        if unplaced > Gpus::ZERO && need.spec.decide_by <= self.now {
            self.emit(id, EventKind::NeedExpired { gpus: unplaced });
            return;
        }
        if need.in_flight() {
            return;
        }
        if free == Gpus::ZERO {
            let settled = need
                .awards
                .iter()
                .filter(|a| a.status.is_live())
                .all(|a| a.status == AwardStatus::Confirmed);
            if settled && need.fulfilled_until.is_none() {
                let start = need.spec.earliest_start.max(self.now);
                let ends = start.plus_seconds(i64::from(need.spec.hours) * 3600);
                self.emit(id, EventKind::NeedFulfilled { ends });
            }
            return;
        }
        if let (Some(revive_at), Some(holder)) = (need.revive_at, need.holder.clone()) {
            if revive_at <= self.now {
                self.emit(
                    id,
                    EventKind::RightRevived {
                        provider: holder,
                        gpus: free,
                    },
                );
            }
        }
        let need = self.need(id);
        if need.waiting_until.is_some_and(|until| until > self.now) {
            return;
        }
        if need.holder_owed {
            self.offer_to_holder(id, free);
        } else {
            self.start_sourcing(id, free);
        }
    }

    /// The caps that bind `provider` now: under 100%, naming it, and not sparing it as
    /// the holder of a right in term where the cap spares holders.
    fn caps_binding<'c>(
        &'c self,
        provider: &'c ProviderId,
    ) -> impl Iterator<Item = &'c ConcentrationCap> + 'c {
        let holder = self
            .deal
            .first_refusals
            .iter()
            .any(|fr| fr.term.covers(self.now) && &fr.holder == provider);
        self.deal.caps.iter().filter(move |cap| {
            cap.max_share < 1.0 && cap.applies_to(provider, holder.then_some(provider))
        })
    }

    /// Whether `provider` has a commitment in its period: preferred where it costs nothing.
    fn committed(&self, provider: &ProviderId) -> bool {
        self.deal
            .commitments
            .iter()
            .any(|c| c.period.covers(self.now) && &c.provider == provider)
    }

    /// GPUs `provider` may still take without breaking a cap, given `planned` awards
    /// not yet made. `u32::MAX` where no cap applies.
    /// `hours` are the need's, which every amount is per GPU of.
    fn cap_room(&self, hours: u32, provider: &ProviderId, price: Price, planned: &[Plan]) -> Gpus {
        let mut room = u32::MAX;
        for cap in self.caps_binding(provider) {
            let (mut total, mut own) = self.cap_usage(cap, provider);
            for plan in planned {
                let amount = per_gpu(cap, hours, plan.price).times(plan.gpus.get());
                total += amount;
                if &plan.provider == provider {
                    own += amount;
                }
            }
            let share = Share::of(cap.max_share);
            room = room.min(crate::cap::room(
                own,
                share,
                total,
                per_gpu(cap, hours, price),
            ));
        }
        Gpus(room)
    }

    fn offer_to_holder(&mut self, id: &NeedId, free: Gpus) {
        let need = self.need(id);
        let holder = need
            .holder
            .clone()
            .expect("owed only where there is a holder");
        let price = need.holder_offer_price.expect("set with the holder");
        let clause = self.clause(id).expect("a holder comes from a clause");
        let (window, variant) = (clause.window, clause.variant);
        let room = self.cap_room(need.spec.hours, &holder, price, &[]);
        let offered = Gpus(free.get().min(room.get()));
        let capped = free.saturating_sub(offered);
        if capped > Gpus::ZERO {
            let cap = self
                .deal
                .caps
                .iter()
                .position(|c| c.binds_holder)
                .unwrap_or(0);
            self.emit(
                id,
                EventKind::HolderCapped {
                    provider: holder.clone(),
                    gpus: capped,
                    cap,
                },
            );
        }
        if offered > Gpus::ZERO {
            let deadline = self.deal.calendar.add(self.now, window);
            let seq = self.need(id).offers.len() as u32 + 1;
            self.emit(
                id,
                EventKind::OfferSent {
                    provider: holder,
                    gpus: offered,
                    price_per_gpu_hour: price,
                    deadline,
                    variant,
                    offer: seq,
                    reoffer: false,
                    against: None,
                },
            );
        }
        if capped > Gpus::ZERO {
            self.start_sourcing(id, capped);
        }
    }

    /// Whether the step's version of the deal lets `provider` be awarded the need:
    /// it is one of the deal's providers and no restriction bars it. Requests for
    /// quotes go to no one else, but a need that moved to another version may hold
    /// quotes its new terms bar.
    fn may_award(&self, need: &NeedState, provider: &ProviderId) -> bool {
        self.deal.provider(provider).is_some()
            && self
                .deal
                .restriction_forbidding(provider, &need.spec.tags)
                .is_none()
    }

    fn eligible_providers(&self, id: &NeedId) -> Vec<ProviderId> {
        let need = self.need(id);
        let spec = &need.spec;
        self.deal
            .providers
            .iter()
            .filter(|p| Some(&p.id) != need.holder.as_ref())
            .filter(|p| p.skus.is_empty() || p.skus.contains(&spec.sku))
            .filter(|p| {
                spec.regions.is_empty()
                    || p.regions.is_empty()
                    || !p.regions.is_disjoint(&spec.regions)
            })
            .filter(|p| {
                self.deal
                    .restriction_forbidding(&p.id, &spec.tags)
                    .is_none()
            })
            .filter(|p| {
                self.cap_room(spec.hours, &p.id, spec.max_price_per_gpu_hour, &[]) > Gpus::ZERO
            })
            .map(|p| p.id.clone())
            .collect()
    }

    fn start_sourcing(&mut self, id: &NeedId, gpus: Gpus) {
        let providers = self.eligible_providers(id);
        if providers.is_empty() {
            self.wait(
                id,
                "no provider may take this need now (restrictions, caps, skus or regions)",
            );
            return;
        }
        let round = self.need(id).round + 1;
        let deadline = self
            .deal
            .calendar
            .add(self.now, self.deal.sourcing.quote_window);
        for provider in providers {
            self.emit(
                id,
                EventKind::RfqSent {
                    provider,
                    gpus,
                    deadline,
                    round,
                },
            );
        }
        // A zero quote window closes the round at once.
        if deadline <= self.now {
            self.close_sourcing(id);
        }
    }

    fn close_sourcing_if_answered(&mut self, id: &NeedId) {
        let need = self.need(id);
        if need.sourcing_open && need.rfqs.iter().all(|r| r.status != RfqStatus::Open) {
            self.close_sourcing(id);
        }
    }

    fn close_sourcing(&mut self, id: &NeedId) {
        self.close_sourcing_together(std::slice::from_ref(id));
    }

    /// True when the only thing due for a need now is the close of its sourcing round:
    /// such needs are allocated together.
    fn only_quotes_due(&self, id: &NeedId) -> bool {
        self.quotes_alone_due(&self.need(id))
    }

    /// [`Step::only_quotes_due`], for a need at hand.
    fn quotes_alone_due(&self, need: &NeedState) -> bool {
        need.sourcing_open
            && need
                .rfqs
                .iter()
                .any(|r| r.status == RfqStatus::Open && r.deadline <= self.now)
            && !need.open_offers().any(|o| o.deadline <= self.now)
            && !need.awards.iter().any(|a| {
                a.status == AwardStatus::Made && a.confirm_by.is_some_and(|c| c <= self.now)
            })
            && need.fulfilled_until.is_none_or(|end| end > self.now)
    }

    /// Closes the sourcing rounds of `ids` at once: their quotes are allocated together,
    /// exactly, under the caps; then each need's share is routed in id order.
    fn close_sourcing_together(&mut self, ids: &[NeedId]) {
        let (plans, proof) = self.plan_sourcing(ids);
        // Awards to providers no cap binds go first, for every need, so that the
        // capped ones find the room the plan counted on: a cap is judged at each award,
        // and the solver placed the round as a whole.
        let mut later = Vec::with_capacity(ids.len());
        for (id, plans) in ids.iter().zip(plans) {
            let need = self.need(id);
            let (round, wanted) = (need.round, need.free());
            let quotes = need
                .rfqs
                .iter()
                .filter(|r| matches!(r.status, RfqStatus::Quoted { .. }))
                .count() as u32;
            let planned_gpus: Gpus = plans.iter().map(|p| p.gpus).sum();
            self.emit(
                id,
                EventKind::SourcingClosed {
                    round,
                    quotes,
                    planned_gpus,
                    proof: proof.clone(),
                },
            );
            let (capped, free): (Vec<Plan>, Vec<Plan>) = plans
                .into_iter()
                .partition(|p| ids.len() > 1 && self.caps_binding(&p.provider).next().is_some());
            let routed = self.in_award_order(id, free, &[]);
            for plan in &routed {
                self.route(id, plan.clone());
            }
            later.push((capped, routed, round, wanted, planned_gpus));
        }
        for (id, (capped, routed, round, wanted, planned_gpus)) in ids.iter().zip(later) {
            for plan in self.in_award_order(id, capped, &routed) {
                self.route(id, plan);
            }
            let need = self.need(id);
            if !need.in_flight() && need.free() > Gpus::ZERO && need.spec.decide_by > self.now {
                let reason = format!(
                    "quotes covered {planned_gpus} of the {wanted} GPUs sought in round {round}"
                );
                self.wait(id, &reason);
            }
            self.next_step(id);
        }
    }

    /// The least-cost placement of the quotes of `ids` under every cap, found by the
    /// exact solver (`rofr-solver`), favouring providers with a commitment in its
    /// period where that costs nothing; with what the solver proved of it, where it ran.
    fn plan_sourcing(&self, ids: &[NeedId]) -> (Vec<Vec<Plan>>, Option<RoundProof>) {
        use rofr_solver::{Instance, Need, Pool, Settings, ShareLimit};
        if let ([id], Allocation::LeastCost) = (ids, self.deal.sourcing.allocation) {
            if let Some(plans) = self.cheapest_within_caps(id) {
                return (vec![plans], None);
            }
        }
        let mut instance = Instance {
            needs: Vec::new(),
            pools: Vec::new(),
            caps: Vec::new(),
            base_gpu_hours: Default::default(),
        };
        // Pool index → (need index, provider, price).
        let mut origin: Vec<(usize, ProviderId, Price)> = Vec::new();
        let mut offers: Vec<Vec<QuoteOffer>> = vec![Vec::new(); ids.len()];
        for (n, id) in ids.iter().enumerate() {
            let need = self.need(id);
            let mut pools = Vec::new();
            let mut dearest = need.spec.max_price_per_gpu_hour.dollars();
            for rfq in &need.rfqs {
                let RfqStatus::Quoted { gpus, price } = rfq.status else {
                    continue;
                };
                // A provider already at its cap can take nothing.
                if self.cap_room(need.spec.hours, &rfq.provider, price, &[]) == Gpus::ZERO
                    || !self.may_award(&need, &rfq.provider)
                {
                    continue;
                }
                // Any id unique in the instance will do: the answer comes back by
                // the pools' indexes (`Solution::placements`), as `origin` has them.
                let pool = format!("{n}/{}", rfq.provider);
                instance.pools.push(Pool {
                    id: pool.clone(),
                    provider: rfq.provider.to_string(),
                    gpus: u64::from(gpus.get()),
                    price_per_gpu_hour: price.dollars(),
                });
                origin.push((n, rfq.provider.clone(), price));
                offers[n].push(QuoteOffer {
                    provider: rfq.provider.clone(),
                    gpus,
                    price,
                });
                dearest = dearest.max(price.dollars());
                pools.push(pool);
            }
            instance.needs.push(Need {
                id: id.to_string(),
                gpus: u64::from(need.free().get()),
                hours: f64::from(need.spec.hours),
                unit: 1,
                // Dearer than every quote: whatever can be placed is.
                shortfall_penalty: dearest + 1.0,
                pools,
            });
        }
        let mut limits = Vec::new();
        let quoting: std::collections::BTreeSet<&ProviderId> =
            origin.iter().map(|(_, provider, _)| provider).collect();
        for provider in &quoting {
            for cap in self.caps_binding(provider) {
                let (total, own) = self.cap_usage(cap, provider);
                limits.push(ShareLimit {
                    provider: provider.to_string(),
                    max_share: cap.max_share,
                    spend: cap.basis == CapBasis::Spend,
                    own: own.as_f64(),
                    total: total.as_f64(),
                });
            }
        }
        let preferred = quoting
            .iter()
            .filter(|p| self.committed(p))
            .map(|p| p.to_string())
            .collect();
        let settings = Settings {
            limits,
            preferred,
            // The answer must not depend on the machine's speed: no time limit, and
            // the proof's work counted in branch-and-bound nodes.
            time_limit: None,
            work_limit: Some(ROUND_WORK),
            highs: false,
            progress: None,
        };
        let mut plans: Vec<Vec<Plan>> = vec![Vec::new(); ids.len()];
        let mut proof = None;
        let solved = match self.deal.sourcing.allocation {
            Allocation::LeastCost => rofr_solver::solve(&instance, &settings),
            Allocation::Ordered => rofr_solver::baseline_within(
                &instance,
                &settings.limits,
                rofr_solver::Strategy::Ordered,
            ),
        };
        match solved {
            Ok(solution) if solution.status != rofr_solver::Status::Infeasible => {
                if self.deal.sourcing.allocation == Allocation::LeastCost {
                    let optimal = solution.status == rofr_solver::Status::Optimal;
                    // To the cent, the cost up and the bound down, so that what is
                    // written never claims more than was proven.
                    let cost = (solution.cost * 100.0).ceil() / 100.0;
                    proof = Some(RoundProof {
                        status: if optimal {
                            ProofStatus::Optimal
                        } else {
                            ProofStatus::Bounded
                        },
                        cost,
                        bound: if optimal {
                            cost
                        } else {
                            (solution.bound * 100.0).floor() / 100.0
                        },
                        needs: ids.len() as u32,
                    });
                }
                for (pool, gpus) in solution.placements(&instance) {
                    let (n, provider, price) = &origin[pool];
                    plans[*n].push(Plan {
                        provider: provider.clone(),
                        gpus: Gpus(gpus as u32),
                        price: *price,
                    });
                }
            }
            // The solver cannot fail on these instances (nothing placed keeps every
            // cap); should it ever, the greedy allocation still keeps them.
            _ => {
                for (n, id) in ids.iter().enumerate() {
                    let need = self.need(id);
                    let hours = need.spec.hours;
                    cheapest_first(
                        need.free(),
                        &offers[n],
                        by_provider,
                        &mut plans[n],
                        |q, planned| self.cap_room(hours, &q.provider, q.price, planned),
                    );
                }
            }
        }
        (plans, proof)
    }

    /// The solver's first step for one need, without building its instance: cheapest
    /// quotes first (committed providers first at equal price, then in the order the
    /// RFQs went out), kept only if the totals keep every cap. Without caps that is the
    /// optimum, so when it keeps them nothing costs less; otherwise `None`, and the
    /// solver takes over.
    fn cheapest_within_caps(&self, id: &NeedId) -> Option<Vec<Plan>> {
        let need = self.need(id);
        let hours = need.spec.hours;
        let quotes: Vec<QuoteOffer> = need
            .rfqs
            .iter()
            .filter_map(|r| match r.status {
                RfqStatus::Quoted { gpus, price } => Some(QuoteOffer {
                    provider: r.provider.clone(),
                    gpus,
                    price,
                }),
                _ => None,
            })
            .filter(|q| self.cap_room(hours, &q.provider, q.price, &[]) > Gpus::ZERO)
            .filter(|q| self.may_award(&need, &q.provider))
            .collect();
        // Ties go to committed providers first, then in the order the RFQs went out.
        let committed_first = |(i, a): Ranked<'_>, (j, b): Ranked<'_>| {
            let later = |q: &QuoteOffer| !self.committed(&q.provider);
            (later(a), i).cmp(&(later(b), j))
        };
        let mut plans = Vec::new();
        cheapest_first(need.free(), &quotes, committed_first, &mut plans, |_, _| {
            Gpus(u32::MAX)
        });
        for plan in &plans {
            for cap in self.caps_binding(&plan.provider) {
                let weight = |p: &Plan| per_gpu(cap, hours, p.price).times(p.gpus.get());
                let added: Amount = plans.iter().map(weight).sum();
                let (total, own) = self.cap_usage(cap, &plan.provider);
                let mine: Amount = plans
                    .iter()
                    .filter(|p| p.provider == plan.provider)
                    .map(weight)
                    .sum();
                if !crate::cap::keeps(own + mine, Share::of(cap.max_share), total + added) {
                    return None;
                }
            }
        }
        Some(plans)
    }

    /// Puts a need's plans in the order its awards will be made, so that each award
    /// keeps every cap at the moment it is made (I3 is judged award by award, while the
    /// solver judges the caps on the final totals): uncapped providers first, then by
    /// price (or, under `ordered` allocation, in the deal's order); a plan is trimmed to
    /// its provider's room, and what trimming left unplaced goes to the cheapest quotes
    /// that still have room, less what `routed` (the need's plans sent before) took.
    fn in_award_order(&self, id: &NeedId, mut plans: Vec<Plan>, routed: &[Plan]) -> Vec<Plan> {
        // `ordered` keeps the deal's order of providers, which is the plans' order.
        let by_price = self.deal.sourcing.allocation == Allocation::LeastCost;
        plans.sort_by_cached_key(|p| {
            let capped = self.caps_binding(&p.provider).next().is_some();
            (capped, by_price.then_some((p.price, p.provider.clone())))
        });
        let wanted: Gpus = plans.iter().map(|p| p.gpus).sum();
        let hours = self.need(id).spec.hours;
        let mut ordered: Vec<Plan> = Vec::new();
        for plan in plans {
            let room = self.cap_room(hours, &plan.provider, plan.price, &ordered);
            let gpus = Gpus(plan.gpus.get().min(room.get()));
            if gpus > Gpus::ZERO {
                ordered.push(Plan { gpus, ..plan });
            }
        }
        let left = wanted.saturating_sub(ordered.iter().map(|p| p.gpus).sum());
        if left == Gpus::ZERO {
            return ordered;
        }
        let need = self.need(id);
        let quotes: Vec<QuoteOffer> = need
            .rfqs
            .iter()
            .filter_map(|r| match r.status {
                RfqStatus::Quoted { gpus, price } => Some(QuoteOffer {
                    provider: r.provider.clone(),
                    gpus,
                    price,
                }),
                _ => None,
            })
            .filter(|q| self.may_award(&need, &q.provider))
            .collect();
        // A quote has room for what its plans have not taken yet, as far as the caps
        // let it.
        cheapest_first(left, &quotes, by_provider, &mut ordered, |q, planned| {
            let taken: Gpus = planned
                .iter()
                .chain(routed)
                .filter(|p| p.provider == q.provider)
                .map(|p| p.gpus)
                .sum();
            let room = self.cap_room(hours, &q.provider, q.price, planned);
            Gpus(q.gpus.saturating_sub(taken).get().min(room.get()))
        });
        ordered
    }

    /// Sends a planned third-party award where the right says it must go first: a
    /// re-offer to the holder, a match offer, or straight to an award.
    fn route(&mut self, id: &NeedId, plan: Plan) {
        let need = self.need(id);
        let (Some(holder), Some(variant)) = (need.holder.clone(), need.variant) else {
            self.award(id, &plan.provider, plan.gpus, plan.price);
            return;
        };
        if plan.provider == holder {
            self.award(id, &plan.provider, plan.gpus, plan.price);
            return;
        }
        let window = self
            .clause(id)
            .expect("a holder comes from a clause")
            .window;
        let threshold = need.reoffer_threshold;
        let deadline = self.deal.calendar.add(self.now, window);
        let seq = need.offers.len() as u32 + 1;
        match variant {
            Variant::LastLook => self.emit(
                id,
                EventKind::MatchOffered {
                    provider: holder,
                    gpus: plan.gpus,
                    price_per_gpu_hour: plan.price,
                    deadline,
                    offer: seq,
                    against: plan.provider,
                },
            ),
            Variant::FirstOffer | Variant::Negotiate => {
                let mut awards: Vec<(Gpus, Price)> = need
                    .third_party_awards()
                    .map(|a| (a.gpus, a.price))
                    .collect();
                awards.push((plan.gpus, plan.price));
                if refusals_cover(&need.refusals, &awards, threshold) {
                    self.award(id, &plan.provider, plan.gpus, plan.price);
                } else if variant == Variant::FirstOffer {
                    self.emit(
                        id,
                        EventKind::OfferSent {
                            provider: holder,
                            gpus: plan.gpus,
                            price_per_gpu_hour: plan.price,
                            deadline,
                            variant,
                            offer: seq,
                            reoffer: true,
                            against: Some(plan.provider),
                        },
                    );
                }
                // Under `negotiate` every refusal holds at any price, so only a
                // quantity the holder never saw could be uncovered; it stays free.
            }
        }
    }

    /// Records the holder's refusal of an offer (an answer, or silence at the deadline)
    /// and carries out the third-party award a re-offer or match was holding back.
    fn holder_refuses(&mut self, id: &NeedId, offer: &HolderOffer, reason: Option<DeclineReason>) {
        let revives_at = self.revives_at(id);
        let (provider, gpus, price, seq) =
            (offer.provider.clone(), offer.gpus, offer.price, offer.seq);
        let kind = match (offer.kind, reason) {
            (OfferKind::Match, Some(_)) => EventKind::MatchDeclined {
                provider,
                gpus,
                price_per_gpu_hour: price,
                offer: seq,
                revives_at,
            },
            (OfferKind::Match, None) => EventKind::MatchLapsed {
                provider,
                gpus,
                price_per_gpu_hour: price,
                offer: seq,
                revives_at,
            },
            (_, Some(reason)) => EventKind::OfferDeclined {
                provider,
                gpus,
                reason,
                price_per_gpu_hour: price,
                offer: Some(seq),
                revives_at,
            },
            (_, None) => EventKind::OfferLapsed {
                provider,
                gpus,
                price_per_gpu_hour: price,
                offer: seq,
                revives_at,
            },
        };
        self.emit(id, kind);
        if let Some(third_party) = &offer.against {
            self.award(id, third_party, gpus, price);
        }
    }

    /// Awards what the caps allow, after approval where a clause asks for it.
    fn award(&mut self, id: &NeedId, provider: &ProviderId, gpus: Gpus, price: Price) {
        let need = self.need(id);
        let room = self.cap_room(need.spec.hours, provider, price, &[]);
        let gpus = Gpus(gpus.get().min(room.get()).min(need.free().get()));
        if gpus == Gpus::ZERO {
            return;
        }
        let need = self.need(id);
        let seq = need.awards.len() as u32 + 1;
        let value = need.spec.gpu_hours(gpus) * price.dollars();
        let is_holder = need.holder.as_ref() == Some(provider);
        let approval = self.deal.approvals.iter().position(|a| {
            a.min_value.is_none_or(|min| value >= min)
                && (!a.non_holder || !is_holder)
                && (a.providers.is_empty() || a.providers.contains(provider))
        });
        let kind = match approval {
            Some(approval) => EventKind::ApprovalRequested {
                provider: provider.clone(),
                gpus,
                price_per_gpu_hour: price,
                award: seq,
                approval,
            },
            None => EventKind::AwardMade {
                provider: provider.clone(),
                gpus,
                price_per_gpu_hour: price,
                award: seq,
                confirm_by: self
                    .deal
                    .calendar
                    .add(self.now, self.deal.sourcing.confirm_window),
            },
        };
        self.emit(id, kind);
    }

    /// What falls due for one need at its next deadline, handled in a fixed order.
    fn fire(&mut self, id: &NeedId) {
        let due: Vec<HolderOffer> = self
            .need(id)
            .open_offers()
            .filter(|o| o.deadline <= self.now)
            .cloned()
            .collect();
        for offer in &due {
            self.holder_refuses(id, offer, None);
        }
        let need = self.need(id);
        let quotes_due = need.sourcing_open
            && need
                .rfqs
                .iter()
                .any(|r| r.status == RfqStatus::Open && r.deadline <= self.now);
        if quotes_due {
            self.close_sourcing(id);
        }
        let unconfirmed: Vec<u32> = self
            .need(id)
            .awards
            .iter()
            .filter(|a| {
                a.status == AwardStatus::Made && a.confirm_by.is_some_and(|c| c <= self.now)
            })
            .map(|a| a.seq)
            .collect();
        for award in unconfirmed {
            if self.need(id).closed.is_none() {
                self.award_failed(id, award, "not confirmed by the deadline".into());
            }
        }
        if self
            .need(id)
            .fulfilled_until
            .is_some_and(|end| end <= self.now)
        {
            self.emit(id, EventKind::NeedCompleted {});
        }
        self.next_step(id);
    }
}

/// What one GPU of an award for `hours` at `price` counts for under `cap`.
fn per_gpu(cap: &ConcentrationCap, hours: u32, price: Price) -> Amount {
    let spend = (cap.basis == CapBasis::Spend).then_some(price);
    Amount::per_gpu(hours, spend)
}
