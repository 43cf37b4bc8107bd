//! The state: a fold of events, and nothing else (I4). `State::apply` never fails and
//! never decides; decisions live in the engine.

use std::borrow::Cow;

use thin_vec::ThinVec;

use crate::agenda::Agenda;
use crate::deal::Variant;
use crate::event::{Event, EventKind};
use crate::frozen::{self, Frozen};
use crate::need::NeedSpec;
use crate::tally::{Figures, Tally};
use crate::types::{Gpus, NeedId, Price, ProviderId, Region, Sku, Tag, Timestamp, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferKind {
    /// The holder's first look at the need (or at what revived).
    First,
    /// A third party would be paid more than the holder was offered: the holder sees
    /// those terms first.
    Reoffer,
    /// Under `last_look`: the holder may match a third party's terms.
    Match,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferStatus {
    Open,
    Accepted(Gpus),
    Declined,
    Lapsed,
    /// An amendment ended the right it was made under.
    Withdrawn,
}

/// An offer to the holder. Re-offers and matches carry the third-party award that
/// follows if the holder does not take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderOffer {
    pub seq: u32,
    pub kind: OfferKind,
    pub provider: ProviderId,
    pub gpus: Gpus,
    pub price: Price,
    pub deadline: Timestamp,
    pub against: Option<ProviderId>,
    pub status: OfferStatus,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RfqStatus {
    Open,
    Quoted { gpus: Gpus, price: Price },
    Declined,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rfq {
    pub provider: ProviderId,
    pub gpus: Gpus,
    pub deadline: Timestamp,
    pub status: RfqStatus,
}

/// Where a need stands, as lists and figures show it ([`NeedState::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NeedStatus {
    /// An offer to the holder awaits its answer.
    Offered,
    /// A round of quotes is open.
    Sourcing,
    /// Not all awarded, and nothing open: waiting for a deadline.
    Waiting,
    Awarded,
    /// Running on confirmed awards.
    Active,
    Completed,
    Expired,
    Cancelled,
}

impl NeedStatus {
    pub const ALL: [NeedStatus; 8] = [
        NeedStatus::Offered,
        NeedStatus::Sourcing,
        NeedStatus::Waiting,
        NeedStatus::Awarded,
        NeedStatus::Active,
        NeedStatus::Completed,
        NeedStatus::Expired,
        NeedStatus::Cancelled,
    ];

    /// The name the API and the needs projection give it.
    pub fn as_str(self) -> &'static str {
        match self {
            NeedStatus::Offered => "offered",
            NeedStatus::Sourcing => "sourcing",
            NeedStatus::Waiting => "waiting",
            NeedStatus::Awarded => "awarded",
            NeedStatus::Active => "active",
            NeedStatus::Completed => "completed",
            NeedStatus::Expired => "expired",
            NeedStatus::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwardStatus {
    PendingApproval,
    Made,
    Confirmed,
    Rejected,
    Failed,
}

impl AwardStatus {
    /// Whether the award holds quantity (counts against the need and the caps).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            AwardStatus::PendingApproval | AwardStatus::Made | AwardStatus::Confirmed
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Award {
    pub seq: u32,
    pub provider: ProviderId,
    pub gpus: Gpus,
    pub price: Price,
    pub decided_at: Timestamp,
    pub confirm_by: Option<Timestamp>,
    pub reservation: Option<Box<str>>,
    pub status: AwardStatus,
    /// The number of the event that recorded it: with `decided_at`, its key in the
    /// usage log.
    pub counted_at: u64,
}

/// Quantity the holder turned down at a price (or at any price, under `negotiate` and
/// where a cap kept it from the holder). I1 is judged against these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub gpus: Gpus,
    pub price: Option<Price>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    Completed,
    Expired,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NeedState {
    pub spec: NeedSpec,
    pub submitted_at: Timestamp,
    pub holder: Option<ProviderId>,
    pub variant: Option<Variant>,
    /// The deal's clause giving the holder its right, by place (a deal has few).
    pub first_refusal: Option<u16>,
    pub holder_offer_price: Option<Price>,
    pub reoffer_threshold: f64,
    pub offers: Vec<HolderOffer>,
    pub round: u32,
    /// The version of the deal that governs it: the one in force when it was
    /// submitted, or the one it moved to. A deal has at most
    /// [`crate::log::MAX_VERSIONS`] versions.
    pub deal_version: u16,
    /// Lists that most needs never fill are thin (a pointer, where a `Vec` takes
    /// three words): with both, the state fits the allocator's 384-byte class rather
    /// than its 448-byte one.
    pub rfqs: ThinVec<Rfq>,
    pub sourcing_open: bool,
    pub awards: Vec<Award>,
    pub refusals: ThinVec<Refusal>,
    /// The holder's right applies to what is unplaced and has not yet been offered.
    pub holder_owed: bool,
    /// When the right revives if the rest is not placed elsewhere by then.
    pub revive_at: Option<Timestamp>,
    pub waiting_until: Option<Timestamp>,
    pub fulfilled_until: Option<Timestamp>,
    pub closed: Option<Closed>,
    pub unmet: Gpus,
    /// The deadline it holds in the agenda: its next deadline as of its last event.
    pub scheduled: Option<Timestamp>,
    /// Its place in the order needs were submitted in (its place in `State`'s list of needs).
    pub number: u32,
}

impl NeedState {
    /// GPUs held by live awards.
    pub fn awarded(&self) -> Gpus {
        self.awards
            .iter()
            .filter(|a| a.status.is_live())
            .map(|a| a.gpus)
            .sum()
    }

    /// Whether the need is any business of `provider`: it holds the right over it, or
    /// something was offered, requested of or awarded to it. To every other provider
    /// the need is as if it did not exist.
    pub fn concerns(&self, provider: &ProviderId) -> bool {
        self.holder.as_ref() == Some(provider)
            || self.offers.iter().any(|o| &o.provider == provider)
            || self.rfqs.iter().any(|r| &r.provider == provider)
            || self.awards.iter().any(|a| &a.provider == provider)
    }

    pub fn open_offers(&self) -> impl Iterator<Item = &HolderOffer> {
        self.offers.iter().filter(|o| o.status == OfferStatus::Open)
    }

    /// GPUs neither awarded nor held by an open offer: what sourcing may still place.
    pub fn free(&self) -> Gpus {
        let held: Gpus = self.open_offers().map(|o| o.gpus).sum();
        self.spec.gpus.saturating_sub(self.awarded() + held)
    }

    pub fn in_flight(&self) -> bool {
        self.sourcing_open || self.open_offers().next().is_some()
    }

    /// Whether nothing about the need is open for anyone to answer: no offer, no round
    /// of quotes, no award awaiting approval or confirmation. Only its deadlines (or
    /// nothing) can move it on. The state packs such needs.
    pub fn at_rest(&self) -> bool {
        !self.in_flight()
            && !self
                .awards
                .iter()
                .any(|a| matches!(a.status, AwardStatus::PendingApproval | AwardStatus::Made))
    }

    /// Live awards to anyone other than the holder.
    pub fn third_party_awards(&self) -> impl Iterator<Item = &Award> {
        self.awards
            .iter()
            .filter(|a| a.status.is_live() && Some(&a.provider) != self.holder.as_ref())
    }

    /// The need's status as lists and figures show it.
    pub fn status(&self) -> NeedStatus {
        match self.closed {
            Some(Closed::Completed) => NeedStatus::Completed,
            Some(Closed::Expired) => NeedStatus::Expired,
            Some(Closed::Cancelled) => NeedStatus::Cancelled,
            None if self.fulfilled_until.is_some() => NeedStatus::Active,
            None if self.awarded() == self.spec.gpus => NeedStatus::Awarded,
            None if self.offers.iter().any(|o| o.status == OfferStatus::Open) => {
                NeedStatus::Offered
            }
            None if self.sourcing_open => NeedStatus::Sourcing,
            None => NeedStatus::Waiting,
        }
    }

    /// The earliest moment at which something about this need happens by itself.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if self.closed.is_some() {
            return None;
        }
        // Plain loops: this runs after every event.
        let mut next: Option<Timestamp> = None;
        let mut consider = |at: Timestamp| {
            next = Some(next.map_or(at, |n| n.min(at)));
        };
        for offer in self.open_offers() {
            consider(offer.deadline);
        }
        if self.sourcing_open {
            for rfq in self.rfqs.iter().filter(|r| r.status == RfqStatus::Open) {
                consider(rfq.deadline);
            }
        }
        for award in self.awards.iter().filter(|a| a.status == AwardStatus::Made) {
            if let Some(by) = award.confirm_by {
                consider(by);
            }
        }
        if let Some(end) = self.fulfilled_until {
            consider(end);
        }
        if self.awarded() < self.spec.gpus {
            consider(self.spec.decide_by);
        }
        if self.free() > Gpus::ZERO && !self.in_flight() {
            for at in [self.waiting_until, self.revive_at].into_iter().flatten() {
                consider(at);
            }
        }
        next
    }
}

pub use crate::usage::{Usage, UsageLog};

/// A need as the state holds it: whole while something about it may happen soon,
/// packed ([`crate::frozen`]) while it is at rest ([`NeedState::at_rest`]). The whole
/// state is boxed, so that a slot takes two words either way.
#[derive(Debug, Clone)]
enum Slot {
    Live(Box<NeedState>),
    Frozen(Frozen),
}

impl Slot {
    /// The need, where it is not packed.
    fn live(&self) -> Option<&NeedState> {
        match self {
            Slot::Live(need) => Some(need),
            Slot::Frozen(_) => None,
        }
    }

    fn id(&self) -> &str {
        match self {
            Slot::Live(need) => need.spec.id.as_str(),
            Slot::Frozen(frozen) => frozen.id(),
        }
    }
}

/// The hash of a need's id in [`State`]'s index. FxHash has no random keys, so the
/// same events build the same index on every run.
fn hash_id(id: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(id)
}

/// How many needs [`State::apply`] lets events touch before it packs those at rest.
const SETTLE_AFTER: usize = 1024;

/// Seconds: a need at rest that is due again within this long stays unpacked.
const SOON: i64 = 3_600;

/// One shared copy of each sku, workload, region, tag and provider that needs name: a
/// million needs for `H100` hold one string between them, not a million (about 50 bytes
/// a need for the sku and the workload), and ids that are one copy compare equal by
/// pointer. Each name also has a place, by which packed needs name it
/// ([`crate::frozen`]). A name that only one need uses costs a slot here besides its
/// copy.
#[derive(Debug, Clone, Default)]
pub struct Names {
    pub(crate) skus: Table<Sku>,
    pub(crate) workloads: Table<Workload>,
    pub(crate) regions: Table<Region>,
    pub(crate) tags: Table<Tag>,
    pub(crate) providers: Table<ProviderId>,
}

type FxHashMap<K, V> = std::collections::HashMap<K, V, rustc_hash::FxBuildHasher>;

/// Names of one kind, each kept once, in the order first seen.
#[derive(Debug, Clone)]
pub struct Table<T> {
    list: Vec<T>,
    places: FxHashMap<T, u32>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            list: Vec::new(),
            places: FxHashMap::default(),
        }
    }
}

impl<T: Clone + Eq + std::hash::Hash> Table<T> {
    /// The copy of `name` kept here, which it keeps from now on if it had none.
    pub(crate) fn shared(&mut self, name: &T) -> T {
        let place = self.place(name);
        self.list[place as usize].clone()
    }

    /// Where `name` is kept, which it is from now on if it was not.
    pub(crate) fn place(&mut self, name: &T) -> u32 {
        if let Some(&place) = self.places.get(name) {
            return place;
        }
        let place = u32::try_from(self.list.len()).expect("fewer than 2^32 names");
        self.list.push(name.clone());
        self.places.insert(name.clone(), place);
        place
    }

    /// The name kept at `place`.
    /// The name at `place`, where there is one.
    pub(crate) fn lookup(&self, place: u32) -> Option<&T> {
        self.list.get(place as usize)
    }
}

/// Equal states hold equal needs, however each is held (packed or not), and equal
/// agendas and usage.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Every need by its number: in the order they were submitted.
    needs: Vec<Slot>,
    /// Each need's number, found by the hash of its id: the engine looks needs up
    /// many times per command. Numbers alone, four bytes a need, with the ids in the
    /// needs themselves: a map from id to need took 33 bytes a slot, and kept a
    /// second and third copy of each id's pointer with a list of ids by number.
    index: hashbrown::HashTable<u32>,
    /// Live awards by the time they were decided, for caps over rolling windows.
    pub usage: UsageLog,
    /// Each need's next deadline, ordered by time, then by the order needs were
    /// submitted in (the need's `number`). Numbers rather than ids: two numbers compare
    /// at once, where two ids compare their text behind pointers (about 10% of the
    /// broker's writer at 300,000 needs, when deadlines were ordered by id). Kept in
    /// full blocks ([`crate::agenda`]): 16 bytes an entry, where an ordered set took 34.
    pub agenda: Agenda,
    pub events: u64,
    pub last_at: Option<Timestamp>,
    names: Names,
    /// Numbers of the needs events touched since the state last packed those at rest.
    touched: Vec<u32>,
    /// Whether needs stay unpacked, at rest or not ([`State::keep_unpacked`]).
    unpacked_only: bool,
    /// The figures of the packed needs ([`crate::tally`]).
    packed_tally: Tally,
}

impl PartialEq for State {
    fn eq(&self, other: &Self) -> bool {
        self.events == other.events
            && self.last_at == other.last_at
            && self.usage == other.usage
            && self.agenda == other.agenda
            && self.needs.len() == other.needs.len()
            && (0..self.needs.len()).all(|n| self.unpack_at(n) == other.unpack_at(n))
    }
}

impl State {
    pub fn from_events<'a>(events: impl IntoIterator<Item = &'a Event>) -> State {
        let mut state = State::default();
        for event in events {
            state.apply(event);
        }
        state.settle();
        state
    }

    /// The number of the need `id`.
    pub(crate) fn number_of(&self, id: &str) -> Option<usize> {
        let needs = &self.needs;
        self.index
            .find(hash_id(id), |&n| needs[n as usize].id() == id)
            .map(|&n| n as usize)
    }

    /// The need numbered `n`, unpacked where it is packed.
    pub(crate) fn unpack_at(&self, n: usize) -> Cow<'_, NeedState> {
        match &self.needs[n] {
            Slot::Live(need) => Cow::Borrowed(need),
            Slot::Frozen(frozen) => Cow::Owned(thawed(frozen, n, &self.names)),
        }
    }

    /// The need `id`, unpacked where it is packed.
    pub fn need(&self, id: &str) -> Option<Cow<'_, NeedState>> {
        Some(self.unpack_at(self.number_of(id)?))
    }

    /// The id of the need numbered `number` (as the agenda names needs).
    pub fn id_of(&self, number: u32) -> NeedId {
        match &self.needs[number as usize] {
            Slot::Live(need) => need.spec.id.clone(),
            Slot::Frozen(frozen) => NeedId::parse(frozen.id()).expect("an id it was given"),
        }
    }

    /// The need `id` where it is not packed. A packed need is at rest: it has nothing
    /// open for anyone to answer, so lists of open items can pass it by unread.
    pub fn unpacked(&self, id: &str) -> Option<&NeedState> {
        self.unpacked_number(self.number_of(id)?)
    }

    /// Every need, in the order they were submitted, each packed one unpacked in turn.
    pub fn needs(&self) -> impl Iterator<Item = Cow<'_, NeedState>> + '_ {
        (0..self.needs.len()).map(|n| self.unpack_at(n))
    }

    /// The needs from the one numbered `first` (in the order they were submitted) on;
    /// with `packed` false, packed needs are passed by unread.
    pub fn needs_from(
        &self,
        first: usize,
        packed: bool,
    ) -> impl Iterator<Item = Cow<'_, NeedState>> + '_ {
        let first = first.min(self.needs.len());
        self.needs[first..]
            .iter()
            .enumerate()
            .filter(move |(_, slot)| packed || slot.live().is_some())
            .map(move |(i, _)| self.unpack_at(first + i))
    }

    /// Every need not packed, in the order they were submitted: all that have
    /// something open for someone to answer, and perhaps some that have not.
    pub fn unpacked_needs(&self) -> impl Iterator<Item = &NeedState> + '_ {
        self.needs.iter().filter_map(Slot::live)
    }

    pub fn need_count(&self) -> usize {
        self.needs.len()
    }

    pub fn has_need(&self, id: &str) -> bool {
        self.number_of(id).is_some()
    }

    /// How many needs are packed.
    pub fn packed_count(&self) -> usize {
        self.needs
            .iter()
            .filter(|slot| slot.live().is_none())
            .count()
    }

    /// Keeps every need unpacked from now on: for a short run that wants speed more
    /// than memory (the simulator's, which packing slowed by a fifth).
    pub fn keep_unpacked(&mut self) {
        self.unpacked_only = true;
    }

    /// Unpacks the need `id` for the events and reads about to come; the next
    /// [`State::settle`] packs it again if it is still at rest. Gives the need's
    /// number, where there is such a need.
    pub fn unpack(&mut self, id: &str) -> Option<usize> {
        let n = self.number_of(id)?;
        self.unpack_number(n);
        Some(n)
    }

    /// [`State::unpack`], for the need numbered `n`.
    pub(crate) fn unpack_number(&mut self, n: usize) {
        live(&mut self.needs[n], n, &self.names, &mut self.packed_tally);
        self.touched.push(n as u32);
    }

    /// The need numbered `n` where it is not packed.
    pub(crate) fn unpacked_number(&self, n: usize) -> Option<&NeedState> {
        self.needs[n].live()
    }

    /// Packs the needs touched since the last time that are at rest, but for those
    /// due again within [`SOON`] of the last event: their deadline would unpack them
    /// again at once.
    pub fn settle(&mut self) {
        if self.unpacked_only {
            self.touched.clear();
            return;
        }
        let soon = self.last_at.map(|at| at.plus_seconds(SOON));
        for number in self.touched.drain(..) {
            let slot = &mut self.needs[number as usize];
            if let Slot::Live(need) = slot {
                let due_soon = need
                    .scheduled
                    .zip(soon)
                    .is_some_and(|(due, soon)| due <= soon);
                if need.at_rest() && !due_soon {
                    let packed = frozen::freeze(need, &mut self.names);
                    debug_assert_eq!(
                        frozen::thaw(&packed, number, &self.names).as_ref(),
                        Ok(&**need),
                        "a need unpacks as it was packed"
                    );
                    self.packed_tally.add(need);
                    *slot = Slot::Frozen(packed);
                }
            }
        }
    }

    /// Every need's figures: the running tally of the packed ones, and the unpacked
    /// ones counted afresh. Unpacks nothing.
    pub fn figures(&self) -> Figures {
        let mut unpacked = Tally::default();
        for need in self.unpacked_needs() {
            unpacked.add(need);
        }
        Figures::of(&self.packed_tally, &unpacked)
    }

    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.agenda.first().map(|(at, _)| *at)
    }

    /// Folds in `event`. Every so many needs touched, it packs those at rest.
    pub fn apply(&mut self, event: &Event) {
        self.apply_held(event, None);
        if self.touched.len() >= SETTLE_AFTER {
            self.settle();
        }
    }

    /// [`State::apply`], leaving the need unpacked until the next [`State::settle`]:
    /// the engine reads it again before its command is done. `number` is the need's,
    /// where the caller knows it.
    pub(crate) fn apply_held(&mut self, event: &Event, number: Option<usize>) {
        self.events += 1;
        self.last_at = Some(event.at);
        let id = &event.need;
        let submitted = matches!(event.kind, EventKind::NeedSubmitted(_));
        let known = number.or_else(|| self.number_of(id.as_str()));
        if submitted {
            // A need submitted twice cannot come from this engine; a fold that never
            // fails starts it afresh under its first number.
            let number = known.unwrap_or(self.needs.len());
            let number = u32::try_from(number).expect("fewer than 2^32 needs");
            let fresh = Slot::Live(Box::new(new_need(event, &mut self.names, number)));
            if let Some(n) = known {
                let old = live(&mut self.needs[n], n, &self.names, &mut self.packed_tally);
                if let Some(at) = old.scheduled {
                    self.agenda.remove(&(at, number));
                }
                self.needs[n] = fresh;
            } else {
                self.needs.push(fresh);
                let needs = &self.needs;
                self.index
                    .insert_unique(hash_id(id.as_str()), number, |&n| {
                        hash_id(needs[n as usize].id())
                    });
            }
        }
        let Some(n) = known.or(submitted.then(|| self.needs.len() - 1)) else {
            // An event for an unknown need cannot come from this engine; a fold that
            // never fails skips it, and the replay check reports the difference.
            return;
        };
        let need = live(&mut self.needs[n], n, &self.names, &mut self.packed_tally);
        if self.touched.last() != Some(&need.number) {
            self.touched.push(need.number);
        }
        let before = need.scheduled;
        apply_to_need(need, &mut self.usage, event, self.events);
        let after = need.next_deadline();
        need.scheduled = after;
        if before != after {
            if let Some(at) = before {
                self.agenda.remove(&(at, need.number));
            }
            if let Some(at) = after {
                self.agenda.insert((at, need.number));
            }
        }
    }
}

/// The need `frozen` packs, numbered `n`. Only this process packed it, so bytes
/// that do not read back are a bug in it: the panic refuses the command at hand,
/// and the broker reloads its engine from the log.
fn thawed(frozen: &Frozen, n: usize, names: &Names) -> NeedState {
    frozen::thaw(frozen, n as u32, names)
        .unwrap_or_else(|e| panic!("need number {n} does not unpack: {e}"))
}

/// The need in `slot`, numbered `n`, unpacked in place if it was packed (and taken
/// out of the packed needs' `tally`).
fn live<'a>(slot: &'a mut Slot, n: usize, names: &Names, tally: &mut Tally) -> &'a mut NeedState {
    if let Slot::Frozen(frozen) = slot {
        let need = thawed(frozen, n, names);
        tally.remove(&need);
        *slot = Slot::Live(Box::new(need));
    }
    match slot {
        Slot::Live(need) => need,
        Slot::Frozen(_) => unreachable!("unpacked above"),
    }
}

fn new_need(event: &Event, names: &mut Names, number: u32) -> NeedState {
    let EventKind::NeedSubmitted(submitted) = &event.kind else {
        unreachable!("called for need_submitted only")
    };
    let crate::event::NeedSubmitted {
        sku,
        gpus,
        hours,
        regions,
        workload,
        tags,
        max_price_per_gpu_hour,
        earliest_start,
        latest_start,
        decide_by,
        priority,
        launch,
        holder,
        variant,
        first_refusal,
        offer_price_per_gpu_hour,
        reoffer_threshold,
        holder_exempt: _,
        deal_version,
    } = &**submitted;
    NeedState {
        spec: NeedSpec {
            id: event.need.clone(),
            sku: names.skus.shared(sku),
            gpus: *gpus,
            regions: regions.iter().map(|r| names.regions.shared(r)).collect(),
            earliest_start: *earliest_start,
            latest_start: *latest_start,
            hours: *hours,
            workload: names.workloads.shared(workload),
            tags: tags.iter().map(|t| names.tags.shared(t)).collect(),
            max_price_per_gpu_hour: *max_price_per_gpu_hour,
            offer_price_per_gpu_hour: None,
            priority: *priority,
            launch: launch.clone(),
            decide_by: *decide_by,
        },
        submitted_at: event.at,
        holder: holder.as_ref().map(|h| names.providers.shared(h)),
        variant: *variant,
        first_refusal: first_refusal.map(clause_number),
        holder_offer_price: *offer_price_per_gpu_hour,
        reoffer_threshold: reoffer_threshold.unwrap_or(0.0),
        offers: Vec::new(),
        round: 0,
        deal_version: deal_version.map_or(1, version_number),
        // Most needs never go past the holder: no room until a round asks someone.
        rfqs: ThinVec::new(),
        sourcing_open: false,
        awards: Vec::new(),
        refusals: ThinVec::new(),
        holder_owed: holder.is_some() && *variant != Some(Variant::LastLook),
        revive_at: None,
        waiting_until: None,
        fulfilled_until: None,
        closed: None,
        unmet: Gpus::ZERO,
        scheduled: None,
        number,
    }
}

/// A clause's place as a need's state keeps it; a deal has at most
/// [`crate::deal::MAX_FIRST_REFUSALS`], which a foreign log's is held to.
fn clause_number(place: usize) -> u16 {
    u16::try_from(place).unwrap_or(u16::MAX)
}

/// A version number as a need's state keeps it; the engine writes none above
/// [`crate::log::MAX_VERSIONS`], which a foreign log's is held to.
fn version_number(version: u32) -> u16 {
    u16::try_from(version).unwrap_or(u16::MAX)
}

fn offer_mut(need: &mut NeedState, seq: u32) -> Option<&mut HolderOffer> {
    need.offers.iter_mut().find(|o| o.seq == seq)
}

/// Pushes onto one of a need's lists, which nearly always hold one item: the first push
/// makes room for exactly one. A plain push makes room for four: at 300,000 needs the
/// broker held about 150 MB more.
fn push_one<T>(list: &mut Vec<T>, item: T) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
    list.push(item);
}

/// [`push_one`] for a thin list.
fn push_one_thin<T>(list: &mut ThinVec<T>, item: T) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
    list.push(item);
}

fn award_mut(need: &mut NeedState, seq: u32) -> Option<&mut Award> {
    need.awards.iter_mut().find(|a| a.seq == seq)
}

fn refuse(need: &mut NeedState, gpus: Gpus, price: Option<Price>, revives_at: Option<Timestamp>) {
    push_one_thin(&mut need.refusals, Refusal { gpus, price });
    if need.revive_at.is_none() {
        need.revive_at = revives_at;
    }
}

/// The holder declined or let lapse (part of) an offer. A partial decline follows an
/// acceptance of the same offer, which already closed it; a decline after a failed
/// delivery names no offer. Under `negotiate` the refusal frees the buyer at any price.
fn offer_refused(
    need: &mut NeedState,
    offer: Option<u32>,
    closed_as: OfferStatus,
    gpus: Gpus,
    price: Price,
    revives_at: Option<Timestamp>,
) {
    if let Some(o) = offer.and_then(|seq| offer_mut(need, seq)) {
        if o.status == OfferStatus::Open {
            o.status = closed_as;
        }
    }
    let any_price = need.variant == Some(Variant::Negotiate);
    refuse(need, gpus, (!any_price).then_some(price), revives_at);
}

/// A new award, and the usage it adds for caps and shares.
#[allow(clippy::too_many_arguments)]
fn record_award(
    need: &mut NeedState,
    usage: &mut UsageLog,
    at: Timestamp,
    provider: &ProviderId,
    gpus: Gpus,
    price: Price,
    seq: u32,
    status: AwardStatus,
    number: u64,
) {
    push_one(
        &mut need.awards,
        Award {
            seq,
            provider: provider.clone(),
            gpus,
            price,
            decided_at: at,
            confirm_by: None,
            reservation: None,
            status,
            counted_at: number,
        },
    );
    let gpu_hours = i64::from(gpus.get()) * i64::from(need.spec.hours);
    usage.insert((at, number), provider.clone(), gpu_hours, price);
}

/// `number` is the event's place in the fold: the state's count of events with it.
fn apply_to_need(need: &mut NeedState, usage: &mut UsageLog, event: &Event, number: u64) {
    let at = event.at;
    match &event.kind {
        EventKind::NeedSubmitted(_) => {}
        EventKind::OfferWithdrawn { offer, .. } => {
            if let Some(o) = offer_mut(need, *offer) {
                o.status = OfferStatus::Withdrawn;
            }
        }
        EventKind::TermsChanged {
            version,
            holder,
            variant,
            first_refusal,
            offer_price_per_gpu_hour,
            reoffer_threshold,
            holder_exempt: _,
        } => {
            need.deal_version = version_number(*version);
            if need.holder != *holder || need.variant != *variant {
                // A right that is new to the need starts afresh: whatever was refused
                // was refused under other terms. What was placed before the right was
                // this holder's was never its to refuse: it counts as refused at any
                // price, so that only what is placed from now on leans on the new
                // holder's refusals.
                need.holder = holder.clone();
                need.variant = *variant;
                need.refusals = need
                    .awards
                    .iter()
                    .filter(|a| a.status.is_live() && Some(&a.provider) != holder.as_ref())
                    .map(|a| Refusal {
                        gpus: a.gpus,
                        price: None,
                    })
                    .collect();
                need.revive_at = None;
                need.holder_owed = holder.is_some() && *variant != Some(Variant::LastLook);
            }
            need.first_refusal = first_refusal.map(clause_number);
            need.holder_offer_price = *offer_price_per_gpu_hour;
            need.reoffer_threshold = reoffer_threshold.unwrap_or(0.0);
        }
        EventKind::OfferSent {
            provider,
            gpus,
            price_per_gpu_hour,
            deadline,
            variant: _,
            offer,
            reoffer,
            against,
        } => {
            push_one(
                &mut need.offers,
                HolderOffer {
                    seq: *offer,
                    kind: if *reoffer {
                        OfferKind::Reoffer
                    } else {
                        OfferKind::First
                    },
                    provider: provider.clone(),
                    gpus: *gpus,
                    price: *price_per_gpu_hour,
                    deadline: *deadline,
                    against: against.clone(),
                    status: OfferStatus::Open,
                },
            );
            if !*reoffer {
                need.holder_owed = false;
            }
            need.waiting_until = None;
        }
        EventKind::MatchOffered {
            provider,
            gpus,
            price_per_gpu_hour,
            deadline,
            offer,
            against,
        } => {
            push_one(
                &mut need.offers,
                HolderOffer {
                    seq: *offer,
                    kind: OfferKind::Match,
                    provider: provider.clone(),
                    gpus: *gpus,
                    price: *price_per_gpu_hour,
                    deadline: *deadline,
                    against: Some(against.clone()),
                    status: OfferStatus::Open,
                },
            );
        }
        EventKind::OfferAccepted { gpus, offer, .. }
        | EventKind::MatchAccepted { gpus, offer, .. } => {
            if let Some(o) = offer_mut(need, *offer) {
                o.status = OfferStatus::Accepted(*gpus);
            }
        }
        EventKind::OfferDeclined {
            gpus,
            price_per_gpu_hour,
            offer,
            revives_at,
            ..
        } => {
            let status = OfferStatus::Declined;
            offer_refused(
                need,
                *offer,
                status,
                *gpus,
                *price_per_gpu_hour,
                *revives_at,
            );
        }
        EventKind::OfferLapsed {
            gpus,
            price_per_gpu_hour,
            offer,
            revives_at,
            ..
        } => {
            let status = OfferStatus::Lapsed;
            offer_refused(
                need,
                Some(*offer),
                status,
                *gpus,
                *price_per_gpu_hour,
                *revives_at,
            );
        }
        EventKind::MatchDeclined {
            gpus,
            price_per_gpu_hour,
            offer,
            revives_at,
            ..
        }
        | EventKind::MatchLapsed {
            gpus,
            price_per_gpu_hour,
            offer,
            revives_at,
            ..
        } => {
            if let Some(o) = offer_mut(need, *offer) {
                o.status = if matches!(event.kind, EventKind::MatchDeclined { .. }) {
                    OfferStatus::Declined
                } else {
                    OfferStatus::Lapsed
                };
            }
            refuse(need, *gpus, Some(*price_per_gpu_hour), *revives_at);
        }
        EventKind::HolderCapped { gpus, .. } => {
            push_one_thin(
                &mut need.refusals,
                Refusal {
                    gpus: *gpus,
                    price: None,
                },
            );
        }
        EventKind::RfqSent {
            provider,
            gpus,
            deadline,
            round,
        } => {
            if *round != need.round {
                need.round = *round;
                need.rfqs.clear();
            }
            need.rfqs.push(Rfq {
                provider: provider.clone(),
                gpus: *gpus,
                deadline: *deadline,
                status: RfqStatus::Open,
            });
            need.sourcing_open = true;
            need.waiting_until = None;
        }
        EventKind::RfqDeclined { provider, .. } => {
            if let Some(rfq) = need.rfqs.iter_mut().find(|r| &r.provider == provider) {
                rfq.status = RfqStatus::Declined;
            }
        }
        EventKind::QuoteReceived {
            provider,
            gpus,
            price_per_gpu_hour,
            ..
        } => {
            if let Some(rfq) = need.rfqs.iter_mut().find(|r| &r.provider == provider) {
                rfq.status = RfqStatus::Quoted {
                    gpus: *gpus,
                    price: *price_per_gpu_hour,
                };
            }
        }
        EventKind::SourcingClosed { .. } => {
            need.sourcing_open = false;
        }
        EventKind::ApprovalRequested {
            provider,
            gpus,
            price_per_gpu_hour,
            award,
            ..
        } => {
            let status = AwardStatus::PendingApproval;
            record_award(
                need,
                usage,
                at,
                provider,
                *gpus,
                *price_per_gpu_hour,
                *award,
                status,
                number,
            );
        }
        EventKind::ApprovalRejected { award, .. } => {
            if let Some(a) = award_mut(need, *award) {
                a.status = AwardStatus::Rejected;
                usage.remove((a.decided_at, a.counted_at));
            }
        }
        EventKind::AwardMade {
            provider,
            gpus,
            price_per_gpu_hour,
            award,
            confirm_by,
        } => {
            if let Some(a) = award_mut(need, *award) {
                a.status = AwardStatus::Made;
                a.confirm_by = Some(*confirm_by);
            } else {
                let status = AwardStatus::Made;
                record_award(
                    need,
                    usage,
                    at,
                    provider,
                    *gpus,
                    *price_per_gpu_hour,
                    *award,
                    status,
                    number,
                );
                if let Some(a) = award_mut(need, *award) {
                    a.confirm_by = Some(*confirm_by);
                }
            }
            if need.free() == Gpus::ZERO {
                need.revive_at = None;
                need.waiting_until = None;
            }
        }
        EventKind::AwardConfirmed {
            reservation, award, ..
        } => {
            if let Some(a) = award_mut(need, *award) {
                a.status = AwardStatus::Confirmed;
                a.reservation = Some(reservation.as_str().into());
            }
        }
        EventKind::AwardFailed { award, .. } => {
            if let Some(a) = award_mut(need, *award) {
                a.status = AwardStatus::Failed;
                usage.remove((a.decided_at, a.counted_at));
            }
            need.fulfilled_until = None;
        }
        EventKind::RightRevived { .. } => {
            need.revive_at = None;
            need.waiting_until = None;
            if need.variant != Some(Variant::LastLook) {
                need.holder_owed = true;
            }
        }
        EventKind::NeedWaiting { until, .. } => {
            need.waiting_until = Some(*until);
        }
        EventKind::NeedFulfilled { ends } => {
            need.fulfilled_until = Some(*ends);
        }
        EventKind::NeedCompleted {} => {
            need.closed = Some(Closed::Completed);
            need.fulfilled_until = None;
        }
        EventKind::NeedExpired { gpus } => {
            need.closed = Some(Closed::Expired);
            need.unmet = *gpus;
            close_open_items(need);
        }
        EventKind::NeedCancelled { .. } => {
            need.closed = Some(Closed::Cancelled);
            close_open_items(need);
        }
    }
}

/// A closed need withdraws what is still open, so nothing can be answered any more.
fn close_open_items(need: &mut NeedState) {
    for offer in &mut need.offers {
        if offer.status == OfferStatus::Open {
            offer.status = OfferStatus::Lapsed;
        }
    }
    need.sourcing_open = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state is boxed, one per need: 384 bytes is mimalloc's size class, and a
    /// byte more would take the 448-byte one.
    #[test]
    fn a_need_state_takes_384_bytes() {
        assert_eq!(std::mem::size_of::<NeedState>(), 384);
    }

    /// A slot is two words, packed or not: the state's list of needs holds one per
    /// need.
    #[test]
    fn a_slot_takes_16_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }
}
