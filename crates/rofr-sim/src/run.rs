//! One simulated run: demand drawn from the scenario, providers answering from their
//! capacity models, all of it driven through the live broker's `Engine` with a
//! simulated clock. Nothing here decides what the deal allows; the engine does.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap as HashMap;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rofr_engine::deal::Deal;
use rofr_engine::event::DeclineReason;
use rofr_engine::need::NeedSpec;
use rofr_engine::state::AwardStatus;
use rofr_engine::types::{Gpus, NeedId, Price, ProviderId, Timestamp};
use rofr_engine::{Command, Engine, Event, EventKind};

use crate::scenario::{LaunchSpec, ProviderModel, Scenario};

const DAY: i64 = 86_400;
/// GPUs come in servers of eight.
const SERVER: u32 = 8;

/// One launch as drawn for a run.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawnLaunch {
    pub name: String,
    pub date: Timestamp,
    pub gpus: u32,
    pub hours: u32,
}

/// A need as drawn for a run, with when it is submitted and the launch it serves.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawnNeed {
    pub submit_at: Timestamp,
    pub spec: NeedSpec,
    pub launch: usize,
}

/// The demand of one run: the same for every strategy, so that they are compared on
/// the same launches.
#[derive(Debug, Clone, PartialEq)]
pub struct Drawn {
    pub launches: Vec<DrawnLaunch>,
    pub needs: Vec<DrawnNeed>,
}

impl Drawn {
    pub fn gpu_hours(&self) -> f64 {
        self.needs
            .iter()
            .map(|n| n.spec.gpu_hours(n.spec.gpus))
            .sum()
    }
}

fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Draws run `run`'s launches and splits them into needs.
pub fn draw(scenario: &Scenario, run: u32) -> Drawn {
    let mut rng = rng(scenario.seed, 2 * u64::from(run));
    let demand = &scenario.demand;
    // The run's own copies of the specs' ids, shared with no other run's.
    let launches: Vec<LaunchSpec> = demand.launches.iter().map(|l| l.spec.detached()).collect();
    let streams: Vec<LaunchSpec> = demand.streams.iter().map(|s| s.spec.detached()).collect();
    let mut raw: Vec<(Timestamp, &LaunchSpec, f64)> = Vec::new();
    for (launch, spec) in demand.launches.iter().zip(&launches) {
        raw.push((launch.date, spec, 1.0));
    }
    for (stream, spec) in demand.streams.iter().zip(&streams) {
        let until = stream.until.map_or(scenario.end, |u| u.min(scenario.end));
        let mut date = stream.from;
        while date < until {
            let months =
                (date.unix_seconds() - scenario.start.unix_seconds()) as f64 / (30.0 * DAY as f64);
            raw.push((date, spec, (1.0 + demand.growth).powf(months)));
            date = date.plus_seconds(stream.every);
        }
    }
    // Launches in date order (then by name), so that ids follow time.
    raw.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    let mut drawn = Drawn {
        launches: Vec::new(),
        needs: Vec::new(),
    };
    for (date, spec, growth) in raw.into_iter().filter(|(d, _, _)| *d < scenario.end) {
        let noise = if demand.noise > 0.0 {
            let z: f64 = StandardNormal.sample(&mut rng);
            (demand.noise * z - demand.noise * demand.noise / 2.0).exp()
        } else {
            1.0
        };
        let servers = ((f64::from(spec.gpus) * growth * noise) / f64::from(SERVER))
            .round()
            .max(1.0) as u32;
        let gpus = servers * SERVER;
        let index = drawn.launches.len();
        drawn.launches.push(DrawnLaunch {
            name: spec.name.clone(),
            date,
            gpus,
            hours: spec.hours,
        });
        let parts = demand.split.min(servers).max(1);
        let submit_at = date.plus_seconds(-demand.lead).max(scenario.start);
        for k in 0..parts {
            let share = servers / parts + u32::from(k < servers % parts);
            drawn.needs.push(DrawnNeed {
                submit_at,
                spec: need_spec(drawn_id(index, k), spec, share * SERVER, date, submit_at),
                launch: index,
            });
        }
    }
    drawn.needs.sort_by_key(|n| n.submit_at);
    drawn
}

/// `l{index:06}-{part}`: written by hand, as a run draws some 50,000 of them and the
/// formatting machinery cost more than the rest of the drawing.
fn drawn_id(index: usize, part: u32) -> String {
    let mut id = String::with_capacity(12);
    id.push('l');
    push_decimal(&mut id, index as u64, 6);
    id.push('-');
    push_decimal(&mut id, u64::from(part), 1);
    id
}

/// Appends `n` in decimal, padded with zeros to at least `width` digits (up to 20).
fn push_decimal(text: &mut String, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = start.min(digits.len() - width.min(digits.len()));
    text.push_str(std::str::from_utf8(&digits[start..]).expect("ASCII digits"));
}

fn need_spec(
    id: String,
    spec: &LaunchSpec,
    gpus: u32,
    date: Timestamp,
    now: Timestamp,
) -> NeedSpec {
    // Decided by the latest start, and never less than a day after submission: a need
    // raised later than that before its launch may start as late as it is decided.
    let latest = date
        .plus_seconds(spec.flexibility)
        .max(now.plus_seconds(DAY));
    NeedSpec {
        id: NeedId::parse(&id).expect("drawn ids are valid"),
        sku: spec.sku.clone(),
        gpus: Gpus(gpus),
        regions: spec.regions.clone(),
        earliest_start: date,
        latest_start: latest,
        hours: spec.hours,
        workload: spec.workload.clone(),
        tags: spec.tags.clone(),
        max_price_per_gpu_hour: spec.max_price,
        offer_price_per_gpu_hour: None,
        priority: 0,
        launch: Some(spec.name.clone()),
        decide_by: latest,
    }
}

/// What one run of one strategy came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunResult {
    pub needs: u32,
    pub events: u64,
    /// Days each launch started late (censored at the horizon's end where it never
    /// got all its GPUs), in launch order.
    pub delays: Vec<f64>,
    /// Launches that got all their GPUs by the horizon's end.
    pub launches_met: u32,
    pub demand_gpu_hours: f64,
    /// Confirmed GPU-hours, counted from `award_confirmed` events.
    pub awarded_gpu_hours: f64,
    /// Confirmed GPU-hours by provider (deal order of the scenario's providers).
    pub by_provider: Vec<f64>,
    /// Demand never confirmed, from the engine's final state.
    pub unmet_gpu_hours: f64,
    /// Confirmed GPU-hours, from the engine's final state (a cross-check of the events).
    pub state_awarded_gpu_hours: f64,
    pub cost: f64,
    pub lapses: u32,
    pub reoffers: u32,
    /// Needs asked for again after expiring unplaced.
    pub resubmissions: u32,
    /// Per reporting step: confirmed GPU-hours by provider.
    pub step_gpu_hours: Vec<Vec<f64>>,
    /// Per reporting step: spend confirmed.
    pub step_cost: Vec<f64>,
    /// Per reporting step: GPU-hours of demand whose launch date falls in it.
    pub step_demand: Vec<f64>,
    /// The engine's events, kept only when asked for (tests judge them).
    pub log: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Offer {
        offer: u32,
        gpus: Gpus,
        price: Price,
    },
    Rfq {
        gpus: Gpus,
    },
    Match {
        offer: u32,
        gpus: Gpus,
        price: Price,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Answer {
        provider: usize,
        need: NeedId,
        ask: Ask,
    },
    Deliver {
        provider: usize,
        need: NeedId,
        award: u32,
        gpus: Gpus,
        price: Price,
    },
    Approve {
        need: NeedId,
        award: u32,
    },
    /// The round is decided: capacity held for it and not awarded goes back.
    Release {
        need: NeedId,
    },
}

/// Capacity a provider set aside for a need when it quoted, accepted or matched, until
/// the round is decided; what is awarded stays set aside for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hold {
    provider: usize,
    pool: usize,
    start: Timestamp,
    gpus: u32,
}

/// Actions due later, earliest first and in the order they were scheduled where they
/// tie. The heap holds only when, the order and a slot; the actions wait in their
/// slots, so that sifting moves a few bytes rather than whole actions.
#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(Timestamp, u64, u32)>>,
    slots: Vec<Option<Action>>,
    free: Vec<u32>,
    seq: u64,
}

impl Queue {
    fn push(&mut self, at: Timestamp, action: Action) {
        self.seq += 1;
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(action);
                slot
            }
            None => {
                self.slots.push(Some(action));
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 actions pending")
            }
        };
        self.heap.push(Reverse((at, self.seq, slot)));
    }

    fn next_at(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The earliest action, if it is due by `now`.
    fn pop_due(&mut self, now: Timestamp) -> Option<Action> {
        if self.next_at()? > now {
            return None;
        }
        let Reverse((_, _, slot)) = self.heap.pop()?;
        self.free.push(slot);
        self.slots[slot as usize].take()
    }
}

/// A provider's capacity for the buyer: one pool per (sku, region), GPUs by day.
struct Pool {
    sku: rofr_engine::types::Sku,
    region: Option<rofr_engine::types::Region>,
    free: Vec<u32>,
}

struct ProviderSim<'a> {
    model: &'a ProviderModel,
    /// The deal's own id value: the engine's events carry it, and clones of one value
    /// compare at a glance.
    id: ProviderId,
    pools: Vec<Pool>,
    reservations: u32,
}

impl<'a> ProviderSim<'a> {
    fn new(model: &'a ProviderModel, start: Timestamp, days: usize) -> ProviderSim<'a> {
        let mut keys: Vec<(rofr_engine::types::Sku, Option<rofr_engine::types::Region>)> = model
            .capacity
            .iter()
            .map(|c| (c.sku.clone(), c.region.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        let pools = keys
            .into_iter()
            .map(|(sku, region)| {
                let mut free = vec![0u32; days];
                for step in model
                    .capacity
                    .iter()
                    .filter(|c| c.sku == sku && c.region == region)
                {
                    let from =
                        ((step.from.unix_seconds() - start.unix_seconds()) / DAY).max(0) as usize;
                    for slot in free.iter_mut().skip(from) {
                        *slot = step.gpus;
                    }
                }
                Pool { sku, region, free }
            })
            .collect();
        ProviderSim {
            model,
            id: model.id.clone(),
            pools,
            reservations: 0,
        }
    }

    fn price(&self, spec: &NeedSpec, now: Timestamp, start: Timestamp) -> Option<f64> {
        let base = *self.model.prices.get(&spec.sku)?;
        let months = (now.unix_seconds() - start.unix_seconds()) as f64 / (30.0 * DAY as f64);
        Some(base * (1.0 + self.model.price_drift).powf(months))
    }

    /// When this provider could start the need, if not after its latest start.
    fn start_for(&self, spec: &NeedSpec, now: Timestamp) -> Option<Timestamp> {
        let start = spec
            .earliest_start
            .max(now.plus_seconds(self.model.lead_time));
        (start <= spec.latest_start).then_some(start)
    }

    /// The pool with the most GPUs free through the need's whole span, and how many.
    fn best_pool(
        &self,
        spec: &NeedSpec,
        from: Timestamp,
        origin: Timestamp,
    ) -> Option<(usize, u32)> {
        let first = ((from.unix_seconds() - origin.unix_seconds()) / DAY).max(0) as usize;
        let days = (spec.hours as usize).div_ceil(24).max(1);
        self.pools
            .iter()
            .enumerate()
            .filter(|(_, p)| p.sku == spec.sku)
            .filter(|(_, p)| match &p.region {
                None => true,
                Some(r) => spec.regions.is_empty() || spec.regions.contains(r),
            })
            .map(|(i, p)| {
                let end = (first + days).min(p.free.len());
                let free = if first >= end {
                    0
                } else {
                    p.free[first..end].iter().copied().min().unwrap_or(0)
                };
                (i, free)
            })
            .max_by_key(|&(i, free)| (free, Reverse(i)))
    }

    /// Sets `gpus` aside through the need's span (or gives them back).
    fn adjust(
        &mut self,
        pool: usize,
        spec: &NeedSpec,
        from: Timestamp,
        origin: Timestamp,
        gpus: u32,
        give_back: bool,
    ) {
        let first = ((from.unix_seconds() - origin.unix_seconds()) / DAY).max(0) as usize;
        let days = (spec.hours as usize).div_ceil(24).max(1);
        let free = &mut self.pools[pool].free;
        let end = (first + days).min(free.len());
        for slot in &mut free[first.min(end)..end] {
            if give_back {
                *slot += gpus;
            } else {
                *slot -= gpus;
            }
        }
    }
}

/// What became of one need in the run, beyond what the engine keeps.
struct NeedInfo {
    launch: usize,
    /// Times it was submitted again after expiring: the suffix of the next id.
    resubmissions: u32,
    /// GPUs of it that went into a new need after it expired.
    carried: u32,
}

pub struct Sim<'a> {
    scenario: &'a Scenario,
    engine: Engine,
    rng: ChaCha8Rng,
    queue: Queue,
    /// Event buffers to reuse.
    spare: Vec<Vec<Event>>,
    providers: Vec<ProviderSim<'a>>,
    index: HashMap<ProviderId, usize>,
    needs: HashMap<NeedId, NeedInfo>,
    drawn: &'a Drawn,
    launch_start: Vec<Timestamp>,
    launch_got: Vec<u32>,
    /// Capacity held for open rounds, by need.
    holds: HashMap<NeedId, Vec<Hold>>,
    /// Capacity set aside for awards not yet delivered, by need and award.
    awarded: HashMap<(NeedId, u32), Hold>,
    result: RunResult,
    keep_log: bool,
}

impl<'a> Sim<'a> {
    pub fn new(scenario: &'a Scenario, deal: Arc<Deal>, drawn: &'a Drawn, run: u32) -> Sim<'a> {
        let horizon_days =
            ((scenario.end.unix_seconds() - scenario.start.unix_seconds()) / DAY) as usize;
        let longest = drawn
            .needs
            .iter()
            .map(|n| {
                (n.spec.hours as usize).div_ceil(24)
                    + (n.spec.latest_start.unix_seconds() - n.spec.earliest_start.unix_seconds())
                        as usize
                        / DAY as usize
            })
            .max()
            .unwrap_or(0);
        let days = horizon_days + longest + 2;
        let providers: Vec<ProviderSim> = scenario
            .providers
            .iter()
            .map(|m| ProviderSim::new(m, scenario.start, days))
            .collect();
        let mut providers = providers;
        for sim in &mut providers {
            if let Some(known) = deal.providers.iter().find(|p| p.id == sim.id) {
                sim.id = known.id.clone();
            }
        }
        let index = providers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.clone(), i))
            .collect();
        let steps = scenario.steps();
        let mut result = RunResult {
            by_provider: vec![0.0; providers.len()],
            step_gpu_hours: vec![vec![0.0; providers.len()]; steps],
            step_cost: vec![0.0; steps],
            step_demand: vec![0.0; steps],
            demand_gpu_hours: drawn.gpu_hours(),
            ..RunResult::default()
        };
        for need in &drawn.needs {
            let step = step_of(scenario, need.spec.earliest_start);
            result.step_demand[step] += need.spec.gpu_hours(need.spec.gpus);
        }
        let mut engine = Engine::new(deal, scenario.start);
        // A run lives for about a second: speed matters more than its memory.
        engine.keep_unpacked();
        Sim {
            scenario,
            engine,
            rng: rng(scenario.seed, 2 * u64::from(run) + 1),
            queue: Queue::default(),
            spare: Vec::new(),
            providers,
            index,
            needs: HashMap::default(),
            drawn,
            launch_start: drawn.launches.iter().map(|l| l.date).collect(),
            launch_got: vec![0; drawn.launches.len()],
            holds: HashMap::default(),
            awarded: HashMap::default(),
            result,
            keep_log: false,
        }
    }

    /// Schedules the scenario's amendments in the engine, each from its date: the
    /// deal's next versions, as the broker would write them.
    pub fn schedule(&mut self, amendments: &[crate::scenario::ScheduledAmendment]) {
        for (version, a) in (2u32..).zip(amendments) {
            let entry = rofr_engine::log::DealAmended::new(
                &a.deal.name,
                version,
                &a.file,
                &a.text,
                a.effective.max(self.scenario.start),
                a.open_needs,
                self.scenario.start,
            );
            // A run's own copy of the deal's ids, as for the deal it starts with.
            let events = self
                .engine
                .amend(Arc::new(a.deal.detached()), &entry)
                .expect("amendments in date order, from the scenario's start on");
            self.handle(&events);
        }
    }

    /// Keeps every engine event in the result, for tests to judge.
    pub fn keep_log(mut self) -> Self {
        self.keep_log = true;
        self
    }

    /// Runs a command and acts on its events. An answer that came too late (the offer
    /// lapsed meanwhile) is refused, as it would be by the live broker; the provider
    /// simply missed it.
    fn execute(&mut self, command: Command) -> bool {
        // Acting on events runs further commands, so each level takes its own buffer
        // from the spares and gives it back.
        let mut events = self.spare.pop().unwrap_or_default();
        let accepted = self.engine.execute_into(command, &mut events).is_ok();
        self.handle(&events);
        events.clear();
        self.spare.push(events);
        accepted
    }

    pub fn run(mut self) -> RunResult {
        let end = self.scenario.end;
        let mut next_need = 0;
        loop {
            let submit = self.drawn.needs.get(next_need).map(|n| n.submit_at);
            let queued = self.queue.next_at();
            // A need's deadline, or an amendment coming into force.
            let due = self.engine.next_due();
            let Some(now) = [submit, queued, due].into_iter().flatten().min() else {
                break;
            };
            if now >= end {
                break;
            }
            let ticked = self.execute(Command::Tick { now });
            assert!(ticked, "time moves forward");
            while self
                .drawn
                .needs
                .get(next_need)
                .is_some_and(|n| n.submit_at <= now)
            {
                let drawn = &self.drawn.needs[next_need];
                next_need += 1;
                self.needs.insert(
                    drawn.spec.id.clone(),
                    NeedInfo {
                        launch: drawn.launch,
                        resubmissions: 0,
                        carried: 0,
                    },
                );
                self.result.needs += 1;
                let accepted = self.execute(Command::SubmitNeed {
                    need: drawn.spec.clone(),
                });
                debug_assert!(accepted, "drawn need {} refused", drawn.spec.id);
            }
            while let Some(action) = self.queue.pop_due(now) {
                self.perform(action);
            }
        }
        self.finish()
    }

    fn handle(&mut self, events: &[Event]) {
        let now = self.engine.clock();
        self.result.events += events.len() as u64;
        // Logged before they are acted on: acting may run further commands.
        if self.keep_log {
            self.result.log.extend(events.iter().cloned());
        }
        for event in events {
            let at = event.at.max(now);
            match &event.kind {
                EventKind::OfferSent {
                    provider,
                    gpus,
                    price_per_gpu_hour,
                    offer,
                    reoffer,
                    ..
                } => {
                    if *reoffer {
                        self.result.reoffers += 1;
                    }
                    let ask = Ask::Offer {
                        offer: *offer,
                        gpus: *gpus,
                        price: *price_per_gpu_hour,
                    };
                    self.ask(provider, &event.need, ask, at);
                }
                EventKind::RfqSent { provider, gpus, .. } => {
                    self.ask(provider, &event.need, Ask::Rfq { gpus: *gpus }, at);
                }
                EventKind::MatchOffered {
                    provider,
                    gpus,
                    price_per_gpu_hour,
                    offer,
                    ..
                } => {
                    let ask = Ask::Match {
                        offer: *offer,
                        gpus: *gpus,
                        price: *price_per_gpu_hour,
                    };
                    self.ask(provider, &event.need, ask, at);
                }
                EventKind::ApprovalRequested { award, .. } => {
                    let action = Action::Approve {
                        need: event.need.clone(),
                        award: *award,
                    };
                    self.queue.push(at, action);
                }
                EventKind::AwardMade {
                    provider,
                    gpus,
                    price_per_gpu_hour,
                    award,
                    ..
                } => {
                    if let Some(&p) = self.index.get(provider) {
                        self.carve(&event.need, p, *award, *gpus);
                        let action = Action::Deliver {
                            provider: p,
                            need: event.need.clone(),
                            award: *award,
                            gpus: *gpus,
                            price: *price_per_gpu_hour,
                        };
                        self.queue.push(
                            at.plus_seconds(self.providers[p].model.answer_delay),
                            action,
                        );
                    }
                }
                EventKind::OfferLapsed { .. } | EventKind::MatchLapsed { .. } => {
                    self.result.lapses += 1;
                }
                EventKind::NeedExpired { gpus } => {
                    self.release(&event.need);
                    self.resubmit(&event.need, *gpus, event.at);
                }
                EventKind::SourcingClosed { .. } => {
                    // After the awards this same decision makes.
                    let action = Action::Release {
                        need: event.need.clone(),
                    };
                    self.queue.push(at, action);
                }
                EventKind::AwardFailed { award, .. } => {
                    if let Some(hold) = self.awarded.remove(&(event.need.clone(), *award)) {
                        self.give_back(&event.need, hold);
                    }
                }
                _ => {}
            }
        }
    }

    fn ask(&mut self, provider: &ProviderId, need: &NeedId, ask: Ask, at: Timestamp) {
        // A provider the scenario does not model never answers.
        if let Some(&p) = self.index.get(provider) {
            let action = Action::Answer {
                provider: p,
                need: need.clone(),
                ask,
            };
            self.queue.push(
                at.plus_seconds(self.providers[p].model.answer_delay),
                action,
            );
        }
    }

    /// What expired unplaced is asked for again at once, to start as soon as it can:
    /// the launch slips rather than vanishing, until the horizon ends.
    fn resubmit(&mut self, id: &NeedId, gpus: Gpus, at: Timestamp) {
        if at >= self.scenario.end || gpus == Gpus::ZERO {
            return;
        }
        let info = self.needs.get_mut(id).expect("every need is known");
        info.carried += gpus.get();
        let launch = info.launch;
        let (root, n) = match id.as_str().split_once(".r") {
            Some((root, n)) => (root.to_owned(), n.parse::<u32>().unwrap_or(0) + 1),
            None => (id.as_str().to_owned(), 1),
        };
        let need = self.engine.state().need(id.as_str()).expect("a known need");
        let old = &need.spec;
        let flexibility = old.latest_start.unix_seconds() - old.earliest_start.unix_seconds();
        let new_id = NeedId::parse(&format!("{root}.r{n}")).expect("valid id");
        let mut spec = old.clone();
        spec.id = new_id.clone();
        spec.gpus = gpus;
        spec.earliest_start = at;
        spec.latest_start = at.plus_seconds(flexibility).max(at.plus_seconds(DAY));
        spec.decide_by = spec.latest_start;
        self.needs.insert(
            new_id,
            NeedInfo {
                launch,
                resubmissions: n,
                carried: 0,
            },
        );
        self.result.needs += 1;
        // Deferred to the queue would reorder it; submitted now, as the buyer would.
        let accepted = self.execute(Command::SubmitNeed { need: spec });
        debug_assert!(accepted, "resubmission refused");
    }

    fn perform(&mut self, action: Action) {
        let now = self.engine.clock();
        match action {
            Action::Approve { need, award } => {
                self.execute(Command::Approve { need, award });
            }
            Action::Release { need } => self.release(&need),
            Action::Answer {
                provider,
                need,
                ask,
            } => {
                if let Some((command, hold)) = self.answer(provider, &need, ask, now) {
                    // Held before the command runs: an acceptance is awarded at once.
                    if let Some(hold) = hold {
                        self.hold(&need, hold);
                    }
                    let declined = match &command {
                        Command::Accept { .. } => Some(Command::Decline {
                            provider: self.providers[provider].id.clone(),
                            need: need.clone(),
                            offer: match ask {
                                Ask::Offer { offer, .. } => Some(offer),
                                _ => None,
                            },
                            reason: DeclineReason::NoCapacity,
                        }),
                        _ => None,
                    };
                    // Part of an all-or-nothing offer cannot be taken: decline instead.
                    if !self.execute(command) {
                        if let Some(hold) = hold {
                            self.unhold(&need, hold);
                        }
                        if let Some(decline) = declined {
                            self.execute(decline);
                        }
                    }
                }
            }
            Action::Deliver {
                provider,
                need,
                award,
                gpus,
                price,
            } => self.deliver(provider, need, award, gpus, price, now),
        }
    }

    /// A provider's answer, from its model; `None` is silence.
    fn answer(
        &mut self,
        p: usize,
        id: &NeedId,
        ask: Ask,
        now: Timestamp,
    ) -> Option<(Command, Option<Hold>)> {
        let model = self.providers[p].model;
        if self.rng.random::<f64>() < model.silence_probability {
            return None;
        }
        let provider = self.providers[p].id.clone();
        let need = id.clone();
        let offer = match ask {
            Ask::Offer { offer, .. } | Ask::Match { offer, .. } => Some(offer),
            Ask::Rfq { .. } => None,
        };
        let decline = |reason| Command::Decline {
            provider: provider.clone(),
            need: need.clone(),
            offer,
            reason,
        };
        if self.rng.random::<f64>() < model.decline_probability {
            return Some((decline(DeclineReason::Other), None));
        }
        let asked = self.engine.state().need(id.as_str())?;
        let spec = &asked.spec;
        let sim = &self.providers[p];
        let Some(own_price) = sim.price(spec, now, self.scenario.start) else {
            return Some((decline(DeclineReason::NoCapacity), None));
        };
        let Some(start) = sim.start_for(spec, now) else {
            return Some((decline(DeclineReason::Timing), None));
        };
        let (pool, free) = sim
            .best_pool(spec, start, self.scenario.start)
            .unwrap_or((0, 0));
        if free == 0 {
            return Some((decline(DeclineReason::NoCapacity), None));
        }
        let hold = |gpus: u32| {
            Some(Hold {
                provider: p,
                pool,
                start,
                gpus,
            })
        };
        match ask {
            Ask::Rfq { gpus } => {
                let price = Price::from_dollars(own_price).ok()?;
                if price > spec.max_price_per_gpu_hour {
                    return Some((decline(DeclineReason::Price), None));
                }
                let gpus = gpus.get().min(free);
                let quote = Command::Quote {
                    provider,
                    need,
                    gpus: Gpus(gpus),
                    price,
                };
                Some((quote, hold(gpus)))
            }
            Ask::Offer { gpus, price, .. } => {
                if price.dollars() < own_price {
                    return Some((decline(DeclineReason::Price), None));
                }
                let gpus = gpus.get().min(free);
                let accept = Command::Accept {
                    provider,
                    need,
                    offer,
                    gpus: Some(Gpus(gpus)),
                    price: None,
                };
                Some((accept, hold(gpus)))
            }
            Ask::Match { gpus, price, .. } => {
                if price.dollars() < own_price {
                    return Some((decline(DeclineReason::Price), None));
                }
                if free < gpus.get() {
                    return Some((decline(DeclineReason::NoCapacity), None));
                }
                let matched = Command::Match {
                    provider,
                    need,
                    offer,
                    gpus: None,
                };
                Some((matched, hold(gpus.get())))
            }
        }
    }

    fn deliver(
        &mut self,
        p: usize,
        id: NeedId,
        award: u32,
        gpus: Gpus,
        price: Price,
        now: Timestamp,
    ) {
        let model = self.providers[p].model;
        let provider = self.providers[p].id.clone();
        let fail = |reason: &str| Command::Fail {
            provider: provider.clone(),
            need: id.clone(),
            award,
            reason: reason.to_owned(),
        };
        if self.rng.random::<f64>() < model.failure_probability {
            if let Some(hold) = self.awarded.remove(&(id.clone(), award)) {
                self.give_back(&id, hold);
            }
            self.execute(fail("could not deliver"));
            return;
        }
        let spec = self.spec(&id);
        let set_aside = self.awarded.remove(&(id.clone(), award));
        // What was held for the award, topped up from what is free now where the hold
        // fell short; late delivery is still delivery: the launch slips.
        let start = set_aside.map_or_else(
            || spec.earliest_start.max(now.plus_seconds(model.lead_time)),
            |h| h.start,
        );
        let held = set_aside.map_or(0, |h| h.gpus);
        let mut topped = None;
        if held < gpus.get() {
            let more = gpus.get() - held;
            match self.providers[p]
                .best_pool(&spec, start, self.scenario.start)
                .filter(|&(_, free)| free >= more)
            {
                Some((pool, _)) => topped = Some((pool, more)),
                None => {
                    if let Some(hold) = set_aside {
                        self.give_back(&id, hold);
                    }
                    self.execute(fail("the capacity was taken meanwhile"));
                    return;
                }
            }
        }
        self.providers[p].reservations += 1;
        let mut reservation = String::with_capacity(provider.as_str().len() + 8);
        reservation.push_str(provider.as_str());
        reservation.push('-');
        push_decimal(
            &mut reservation,
            u64::from(self.providers[p].reservations),
            1,
        );
        if !self.execute(Command::Confirm {
            provider,
            need: id.clone(),
            award,
            reservation,
        }) {
            if let Some(hold) = set_aside {
                self.give_back(&id, hold);
            }
            return;
        }
        if let Some((pool, more)) = topped {
            self.providers[p].adjust(pool, &spec, start, self.scenario.start, more, false);
        }
        let gpu_hours = spec.gpu_hours(gpus);
        let cost = gpu_hours * price.dollars();
        let step = step_of(self.scenario, now);
        self.result.awarded_gpu_hours += gpu_hours;
        self.result.by_provider[p] += gpu_hours;
        self.result.step_gpu_hours[step][p] += gpu_hours;
        self.result.step_cost[step] += cost;
        self.result.cost += cost;
        let launch = self.needs[&id].launch;
        self.launch_start[launch] = self.launch_start[launch].max(start);
        self.launch_got[launch] += gpus.get();
    }

    fn hold(&mut self, need: &NeedId, hold: Hold) {
        self.set_aside(need, &hold, false);
        self.holds.entry(need.clone()).or_default().push(hold);
    }

    /// Gives back a hold whose command the engine refused.
    fn unhold(&mut self, need: &NeedId, hold: Hold) {
        if let Some(holds) = self.holds.get_mut(need) {
            if let Some(i) = holds.iter().rposition(|h| *h == hold) {
                holds.remove(i);
                self.give_back(need, hold);
            }
        }
    }

    /// What the need `id` asked for.
    fn spec(&self, id: &NeedId) -> NeedSpec {
        match self.engine.state().need(id.as_str()).expect("a known need") {
            Cow::Borrowed(need) => need.spec.clone(),
            Cow::Owned(need) => need.spec,
        }
    }

    fn give_back(&mut self, need: &NeedId, hold: Hold) {
        self.set_aside(need, &hold, true);
    }

    /// Takes a hold's GPUs out of its provider's free capacity, or puts them back.
    fn set_aside(&mut self, need: &NeedId, hold: &Hold, back: bool) {
        let asked = self
            .engine
            .state()
            .need(need.as_str())
            .expect("a known need");
        self.providers[hold.provider].adjust(
            hold.pool,
            &asked.spec,
            hold.start,
            self.scenario.start,
            hold.gpus,
            back,
        );
    }

    /// Moves an award's GPUs from the provider's hold on the round to the award.
    fn carve(&mut self, need: &NeedId, provider: usize, award: u32, gpus: Gpus) {
        let Some(holds) = self.holds.get_mut(need) else {
            return;
        };
        let Some(hold) = holds
            .iter_mut()
            .find(|h| h.provider == provider && h.gpus > 0)
        else {
            return;
        };
        let taken = hold.gpus.min(gpus.get());
        hold.gpus -= taken;
        let carved = Hold {
            gpus: taken,
            ..*hold
        };
        self.awarded.insert((need.clone(), award), carved);
    }

    /// Gives back whatever is still held for a need's rounds.
    fn release(&mut self, need: &NeedId) {
        for hold in self.holds.remove(need).unwrap_or_default() {
            if hold.gpus > 0 {
                self.give_back(need, hold);
            }
        }
    }

    fn finish(mut self) -> RunResult {
        let end = self.scenario.end;
        for (i, launch) in self.drawn.launches.iter().enumerate() {
            let met = self.launch_got[i] >= launch.gpus;
            let started = if met {
                self.launch_start[i]
            } else {
                end.max(launch.date)
            };
            if met {
                self.result.launches_met += 1;
            }
            let late = (started.unix_seconds() - launch.date.unix_seconds()).max(0);
            self.result.delays.push(late as f64 / DAY as f64);
        }
        for need in self.engine.state().needs() {
            let id = &need.spec.id;
            let confirmed: u32 = need
                .awards
                .iter()
                .filter(|a| a.status == AwardStatus::Confirmed)
                .map(|a| a.gpus.get())
                .sum();
            self.result.state_awarded_gpu_hours += need.spec.gpu_hours(Gpus(confirmed));
            // What was neither confirmed nor carried into a resubmission is unmet.
            let carried = self.needs.get(id).map_or(0, |n| n.carried);
            let short = f64::from(need.spec.gpus.get()) - f64::from(confirmed) - f64::from(carried);
            self.result.unmet_gpu_hours += short * f64::from(need.spec.hours);
        }
        self.result.resubmissions =
            self.needs.values().filter(|n| n.resubmissions > 0).count() as u32;
        self.result
    }
}

/// The reporting step a moment falls in, clamped to the horizon.
pub fn step_of(scenario: &Scenario, at: Timestamp) -> usize {
    let offset = (at.unix_seconds() - scenario.start.unix_seconds()).max(0);
    ((offset / scenario.step) as usize).min(scenario.steps() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_written_by_hand_equal_the_formatted_ones() {
        let mut indices = vec![0usize, 7, 42, 999_999, 1_000_000, 123_456_789];
        indices.extend((0..2_000).map(|i| i * 7_919));
        for index in indices {
            for part in [0u32, 3, 10, 4_000_000_000] {
                assert_eq!(drawn_id(index, part), format!("l{index:06}-{part}"));
            }
        }
        for n in [0u64, 9, 10, 65_535, u64::MAX] {
            for width in [0usize, 1, 5, 20, 25] {
                let mut text = String::from("x");
                push_decimal(&mut text, n, width);
                let expected = format!("x{n:0w$}", w = width.min(20));
                assert_eq!(text, expected, "{n} width {width}");
            }
        }
    }
}
