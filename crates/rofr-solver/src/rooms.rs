//! An exact search over unit rooms, for instances where no share limit binds.
//!
//! Counted in single GPUs, an allocation is a flow: from each need, to the pools it may
//! use or to shortfall, with each pool's GPUs as an arc's capacity. Flows have optima in
//! whole GPUs, but a need with a unit of 8 must take multiples of 8 from each pool. Give
//! each pool one node per unit, between the needs of that unit and the pool: the arc
//! from it to the pool carries the pool's *room* for that unit. Once every room is a
//! multiple of its unit, the needs of each unit form a transportation problem with data
//! in whole units, which has an optimum in whole units of the same cost. So the search
//! branches on rooms alone (below or above the nearest multiples of the unit), solving
//! a flow at each node of the tree; [`crate::flow`] re-solves each child from its
//! parent's optimum in a few shortest paths.
//!
//! Limits on providers' shares are not flows. Where the first flow keeps them all, the
//! search leaves them out: its bound holds with them too, and an optimum it finds that
//! keeps every limit is an optimum of the instance; one that breaks a limit hands the
//! rest to the general program. Where the first flow breaks a limit, the search prices
//! the limits into the network instead (a Lagrangian relaxation): multipliers λ ≥ 0
//! charge each provider's pools for the share they take, every flow's cost at any λ
//! then bounds every allocation that keeps the limits from below, and the search
//! raises that bound over λ by cutting planes, each value one re-solve of the flow
//! from the last. It then searches the rooms at the best λ found, trimming each
//! allocation it meets to the limits; a node is closed only where the best allocation
//! found is no dearer than the node's bound.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use crate::flow::{Arc, Builder, FlowState, Network};
use crate::{fill, Instance, Progress, Reporter, ShareLimit, Solution, Strategy, Tally};

/// GPUs by (need, pool).
pub(crate) type Taken = BTreeMap<(usize, usize), u64>;

/// What the search found.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The least cost of the relaxation without limits, less the network's rounding
    /// of costs: a lower bound on every allocation, limits or not.
    pub bound: f64,
    /// The cheapest allocation found that keeps every limit.
    pub best: Option<Solution>,
    /// Whether the search finished: then no allocation that keeps the limits costs
    /// less than `best`.
    pub finished: bool,
    /// Whether it stopped for want of time (rather than at an allocation that breaks
    /// a limit, where the program may still prove an optimum).
    pub out_of_time: bool,
}

/// One pool's room for one unit: the arc from the unit's node to the pool.
struct Room {
    unit: u64,
    pool: usize,
    arc: Arc,
}

/// A need's arc to a pool's room for its unit.
struct Placement {
    need: usize,
    pool: usize,
    arc: Arc,
}

struct Search<'a> {
    instance: &'a Instance,
    limits: &'a [ShareLimit],
    preferred: &'a BTreeSet<String>,
    net: Network,
    rooms: Vec<Room>,
    placements: Vec<Placement>,
    /// Each need's arc for its shortfall.
    shortfalls: Vec<Arc>,
    /// The needs, most to lose first ([`most_to_lose_first`]).
    order: Vec<usize>,
    /// What the network charges.
    prices: Prices,
    /// Whether the limits are priced into the network: then a node in whole units is
    /// no optimum of its part of the tree unless the best allocation found meets its
    /// bound, and the search goes on past it.
    lagrangian: bool,
    /// When a search with the limits priced in stops to leave the rest of the time to
    /// the program, which proves small instances with binding limits sooner; and
    /// whether it has.
    hand_over: Option<Instant>,
    handed_over: bool,
    best: Option<Solution>,
    deadline: Option<Instant>,
    /// False once a part of the tree is left unexplored: for want of time, or at a
    /// node in whole units whose allocation breaks a limit (without multipliers) or
    /// costs more than the node's bound (with them).
    finished: bool,
    out_of_time: bool,
    /// How far the network's cost of any flow, in dollars, may lie from its cost in
    /// the instance's prices: half a unit of the network's costs for every GPU.
    error: f64,
    /// What branching on each room has cost so far, per whole unit moved: the sum of
    /// the rises in cost and how many there were, below and above.
    pseudo: Vec<Pseudo>,
    /// The first flow's cost (or, with multipliers, the best Lagrangian value), less
    /// the rounding of costs.
    bound: f64,
    reporter: Option<&'a Reporter>,
    /// Nodes solved, and when the reporter was last told.
    nodes: u64,
    reported: Instant,
}

#[derive(Debug, Clone, Default)]
struct Pseudo {
    down: (f64, u32),
    up: (f64, u32),
}

impl Pseudo {
    /// Whether the room's record is to be trusted, and the score it gives a room
    /// `f` of a unit above a whole number of units.
    fn estimate(&self, f: f64) -> (bool, f64) {
        let known = self.down.1 >= RELIABLE && self.up.1 >= RELIABLE;
        let down = self.down.0 / f64::from(self.down.1.max(1)) * f;
        let up = self.up.0 / f64::from(self.up.1.max(1)) * (1.0 - f);
        (known, score(down, up))
    }
}

/// How often the reporter is told where the search stands.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Rooms tried out at most at one node of the tree.
const STRONG: usize = 8;
/// Tries without a better room after which the rest are estimated.
const LOOKAHEAD: usize = 4;
/// Tries of a room on each side after which its estimate is trusted.
const RELIABLE: u32 = 2;

/// How good a room is to branch on, from the rises in cost on its two sides.
fn score(down: f64, up: f64) -> f64 {
    down.max(1e-3) * up.max(1e-3)
}

/// Searches for the cheapest allocation that keeps `limits`, favouring `preferred`
/// providers where a greedy fill tops up an allocation, until `deadline`. `None`
/// where the search does not apply (costs too large for whole millionths). A first
/// flow cut short by the deadline answers with itself rounded down and topped up, and
/// the bound its potentials prove.
pub(crate) fn search(
    instance: &Instance,
    limits: &[ShareLimit],
    preferred: &BTreeSet<String>,
    deadline: Option<Instant>,
    reporter: Option<&Reporter>,
) -> Option<Outcome> {
    if !fits(instance) {
        return None;
    }
    let order = most_to_lose_first(instance);
    let prices = Prices::plain(instance);
    let (net, rooms, placements, shortfalls) = network(instance, &order, &prices);
    let mut search = Search {
        instance,
        limits,
        preferred,
        net,
        pseudo: vec![Pseudo::default(); rooms.len()],
        rooms,
        placements,
        shortfalls,
        order,
        prices,
        lagrangian: false,
        hand_over: None,
        handed_over: false,
        best: None,
        deadline,
        finished: true,
        out_of_time: false,
        error: 0.5 / SCALE * instance.needs.iter().map(|n| n.gpus as f64).sum::<f64>(),
        bound: f64::NEG_INFINITY,
        reporter,
        nodes: 0,
        reported: Instant::now(),
    };
    search.net.deadline = deadline;
    let first_flow = Instant::now();
    if !search.net.optimize() {
        if !search.net.timed_out {
            return None;
        }
        // Cut short, the flow is still optimal for what it carries: rounded down to
        // whole units and topped up it is an allocation, and its potentials still
        // bound every other from below.
        search.bound = search.net.dual_bound() as f64 / SCALE - search.error;
        search.improve(search.rounded_down());
        search.stop_for_time();
        return Some(search.outcome());
    }
    search.bound = search.net.cost() as f64 / SCALE - search.error;
    // The first flow rounded gives a first allocation (trimmed to the limits where it
    // breaks one). Each placement rounded down is one at once; each room rounded down,
    // with the needs placed again, is a better one.
    search.improve(search.rounded_down());
    if !keeps_limits(instance, limits, &search.gpus_by_placement()) {
        let first_flow = first_flow.elapsed();
        search.lagrangian = true;
        if !search.ascend() {
            search.stop_for_time();
            return Some(search.outcome());
        }
        // Half the time left, where the program's relaxation (about twice a first
        // flow) fits in the other half; without a limit, ten first flows or half a
        // second.
        let now = Instant::now();
        search.hand_over = match deadline {
            Some(d) => {
                let half = d.saturating_duration_since(now) / 2;
                (half >= 3 * first_flow).then_some(now + half)
            }
            None => Some(now + (10 * first_flow).max(std::time::Duration::from_millis(500))),
        };
    }
    match search.whole_units() {
        None => search.stop_for_time(),
        Some(taken) => {
            search.improve(taken);
            search.dive();
        }
    }
    Some(search.outcome())
}

/// The flow network of an instance: needs → rooms → pools → the sink, and each need
/// straight to the sink for its shortfall (the arcs last, one per need); the needs'
/// nodes made in `order`.
fn network(
    instance: &Instance,
    order: &[usize],
    prices: &Prices,
) -> (Network, Vec<Room>, Vec<Placement>, Vec<Arc>) {
    let pool_index = instance.pool_index();
    let total: u64 = instance.needs.iter().map(|n| n.gpus).sum();
    let mut b = Builder::default();
    let sink = b.node(-(total as i64));
    let mut need_nodes = vec![0; instance.needs.len()];
    for &n in order {
        need_nodes[n] = b.node(instance.needs[n].gpus as i64);
    }
    // Each room's node, and what the needs of its unit could ask of it at most.
    let mut room_of: BTreeMap<(usize, u64), (usize, u64)> = BTreeMap::new();
    let mut placements = Vec::new();
    let mut arcs_to_rooms = Vec::new();
    for (n, need) in instance.needs.iter().enumerate() {
        let mut pools: Vec<usize> = need.pools.iter().map(|p| pool_index[p.as_str()]).collect();
        pools.sort_unstable();
        pools.dedup();
        for p in pools {
            let room = room_of
                .entry((p, need.unit))
                .or_insert_with(|| (b.node(0), 0));
            room.1 += need.gpus;
            arcs_to_rooms.push((n, p, room.0));
        }
    }
    for (n, p, room) in arcs_to_rooms {
        let need = &instance.needs[n];
        let arc = b.arc(
            need_nodes[n],
            room,
            prices.placement(need, p),
            0,
            need.gpus as i64,
        );
        placements.push(Placement {
            need: n,
            pool: p,
            arc,
        });
    }
    let shortfalls = instance
        .needs
        .iter()
        .enumerate()
        .map(|(n, need)| {
            b.arc(
                need_nodes[n],
                sink,
                prices.shortfall(need),
                0,
                need.gpus as i64,
            )
        })
        .collect();
    // A pool whose needs all come in multiples of g can give at most its size rounded
    // down to a multiple of g.
    let mut step: BTreeMap<usize, u64> = BTreeMap::new();
    for &(p, unit) in room_of.keys() {
        let g = step.entry(p).or_insert(0);
        *g = gcd(*g, unit);
    }
    let mut pool_nodes = BTreeMap::new();
    for (&p, &g) in &step {
        let node = b.node(0);
        let gpus = instance.pools[p].gpus / g * g;
        b.arc(node, sink, 0, 0, gpus as i64);
        pool_nodes.insert(p, (node, gpus));
    }
    let mut rooms = Vec::new();
    for (&(p, unit), &(node, asked)) in &room_of {
        let (pool_node, gpus) = pool_nodes[&p];
        let most = asked.min(gpus) / unit * unit;
        let arc = b.arc(node, pool_node, 0, 0, most as i64);
        rooms.push(Room { unit, pool: p, arc });
    }
    (b.build(), rooms, placements, shortfalls)
}

/// The needs in order of what each GPU of theirs saves against its shortfall in the
/// cheapest pool they may use, most first. Needs' nodes are made in this order: a
/// first flow gives every need its cheapest path at once and sends along them need by
/// need in the order of their nodes, so pools fill first with the needs that have most
/// to lose, and fewer of them have to move later.
fn most_to_lose_first(instance: &Instance) -> Vec<usize> {
    let pool_index = instance.pool_index();
    let saves: Vec<f64> = instance
        .needs
        .iter()
        .map(|n| {
            let cheapest = n
                .pools
                .iter()
                .map(|p| instance.pools[pool_index[p.as_str()]].price_per_gpu_hour)
                .fold(n.shortfall_penalty, f64::min);
            n.hours * (n.shortfall_penalty - cheapest)
        })
        .collect();
    let mut order: Vec<usize> = (0..instance.needs.len()).collect();
    order.sort_by(|&a, &b| saves[b].total_cmp(&saves[a]).then(a.cmp(&b)));
    order
}

/// Network costs are whole millionths of a dollar, so that the flow's arithmetic is
/// exact: reduced costs of zero are zero, not a rounding away from it.
const SCALE: f64 = 1e6;

fn scaled(dollars: f64) -> i64 {
    (dollars * SCALE).round() as i64
}

/// Whether every cost of the instance fits the network's whole numbers with room for
/// sums along paths and over every GPU.
fn fits(instance: &Instance) -> bool {
    fits_prices(instance, &Prices::plain(instance))
}

/// [`fits`] at `prices`.
fn fits_prices(instance: &Instance, prices: &Prices) -> bool {
    let gpus: f64 = instance.needs.iter().map(|n| n.gpus as f64).sum::<f64>() + 1.0;
    let price = prices.pool.iter().copied().fold(0.0, f64::max);
    let nodes = (instance.needs.len() + 3 * instance.pools.len() + 2) as f64;
    gpus < 1e15
        && prices.pool.iter().all(|p| p.is_finite() && *p >= 0.0)
        && instance.needs.iter().all(|n| {
            let penalty = n.shortfall_penalty + prices.shift;
            let most = n.unit as f64 * n.hours * price.max(penalty) * SCALE;
            most * gpus < 1e18 && most * nodes < 1e18
        })
}

/// What the network charges a GPU-hour in each pool and adds to every need's
/// shortfall penalty, and what it adds to a flow's cost for the Lagrangian value: the
/// instance's own prices, or prices that charge providers for their shares.
#[derive(Debug, Clone)]
struct Prices {
    pool: Vec<f64>,
    shift: f64,
    constant: f64,
}

impl Prices {
    fn plain(instance: &Instance) -> Prices {
        Prices {
            pool: instance
                .pools
                .iter()
                .map(|p| p.price_per_gpu_hour)
                .collect(),
            shift: 0.0,
            constant: 0.0,
        }
    }

    /// The prices under multipliers `lambda` on `limits`. Limit c holds when
    /// `Σ w·x (1[p is c's] − s_c) ≤ s_c·total_c − own_c`; adding λ_c times each side's
    /// difference to the cost charges a GPU-hour of pool p λ_c·(1[p is c's] − s_c) times
    /// its weight. Where that leaves a price below zero, every price and penalty rise
    /// by the same amount, which every allocation pays on each of its needs' GPU-hours
    /// (placed or short) and the constant takes back.
    fn charged(instance: &Instance, limits: &[ShareLimit], lambda: &[f64]) -> Prices {
        let mut pool: Vec<f64> = instance
            .pools
            .iter()
            .map(|p| p.price_per_gpu_hour)
            .collect();
        let mut constant = 0.0;
        for (limit, &l) in limits.iter().zip(lambda) {
            if l == 0.0 {
                continue;
            }
            for (price, p) in pool.iter_mut().zip(&instance.pools) {
                let own = if p.provider == limit.provider {
                    1.0
                } else {
                    0.0
                };
                *price += l * limit.weight(1.0, p.price_per_gpu_hour) * (own - limit.max_share);
            }
            constant -= l * (limit.max_share * limit.total - limit.own);
        }
        let shift = -pool.iter().copied().fold(0.0, f64::min);
        for price in &mut pool {
            *price += shift;
        }
        let hours: f64 = instance.needs.iter().map(|n| n.gpus as f64 * n.hours).sum();
        Prices {
            pool,
            shift,
            constant: constant - shift * hours,
        }
    }

    /// A GPU of `need` in pool `p`, in the network's units.
    fn placement(&self, need: &crate::Need, p: usize) -> i64 {
        scaled(need.hours * self.pool[p])
    }

    /// A GPU of `need` left short, in the network's units.
    fn shortfall(&self, need: &crate::Need) -> i64 {
        scaled(need.hours * (need.shortfall_penalty + self.shift))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Takes GPUs from providers above their limits, whole units at a time, those worth
/// least against shortfall for the share they take first, until every limit holds.
/// Each unit taken moves to the cheapest other provider's pool of its need that has
/// room, where there is one (a move frees more share than a cut), and is left short
/// otherwise. False where taking all of a provider's would not do.
fn trim_to_limits(instance: &Instance, limits: &[ShareLimit], taken: &mut Taken) -> bool {
    let limits: Vec<&ShareLimit> = limits.iter().filter(|l| l.max_share < 1.0).collect();
    let pool_index = instance.pool_index();
    for round in 0.. {
        // Moves can break another provider's limit; after a few rounds, only cuts,
        // which always end.
        let may_move = round < 4 * limits.len() + 4;
        let tally = Tally::of(instance, &limits, taken);
        if tally.keeps(&limits) {
            return true;
        }
        let over = |i: usize| tally.over(&limits, i);
        let i = (0..limits.len())
            .max_by(|&a, &b| over(a).total_cmp(&over(b)))
            .expect("a limit is broken");
        let limit = limits[i];
        let weight = |n: usize, p: usize| {
            limit.weight(
                instance.needs[n].hours,
                instance.pools[p].price_per_gpu_hour,
            )
        };
        let mut theirs: Vec<((usize, usize), f64)> = taken
            .keys()
            .filter(|&&(_, p)| instance.pools[p].provider == limit.provider)
            .map(|&(n, p)| {
                let need = &instance.needs[n];
                let saves =
                    need.hours * (need.shortfall_penalty - instance.pools[p].price_per_gpu_hour);
                let share = weight(n, p) * (1.0 - limit.max_share);
                ((n, p), saves / share.max(f64::MIN_POSITIVE))
            })
            .collect();
        if theirs.is_empty() {
            return false;
        }
        theirs.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        let mut left = tally.left_pool.clone();
        let mut excess = over(i);
        for ((n, p), _) in theirs {
            if excess <= 0.0 {
                break;
            }
            let need = &instance.needs[n];
            let unit = need.unit;
            let have = taken[&(n, p)] / unit;
            // The cheapest pool of another provider with room for a unit.
            let elsewhere = need
                .pools
                .iter()
                .map(|q| pool_index[q.as_str()])
                .filter(|&q| instance.pools[q].provider != limit.provider && left[q] >= unit)
                .min_by(|&a, &b| {
                    let price = |q: usize| instance.pools[q].price_per_gpu_hour;
                    price(a).total_cmp(&price(b)).then(a.cmp(&b))
                })
                .filter(|_| may_move);
            let (units, to) = match elsewhere {
                Some(q) => {
                    // Own share falls by the unit's weight; the total changes by
                    // the difference in weight, counted at the limit's share.
                    let freed = (weight(n, p) - limit.max_share * (weight(n, p) - weight(n, q)))
                        * unit as f64;
                    let units = (excess / freed.max(f64::MIN_POSITIVE)).ceil() as u64;
                    (units.min(have).min(left[q] / unit).max(1), Some(q))
                }
                None => {
                    let freed = weight(n, p) * (1.0 - limit.max_share) * unit as f64;
                    let units = (excess / freed.max(f64::MIN_POSITIVE)).ceil() as u64;
                    (units.min(have).max(1), None)
                }
            };
            let gpus = taken.get_mut(&(n, p)).expect("a placement listed");
            *gpus -= units * unit;
            if *gpus == 0 {
                taken.remove(&(n, p));
            }
            left[p] += units * unit;
            let mut freed = weight(n, p) * units as f64 * unit as f64;
            match to {
                Some(q) => {
                    *taken.entry((n, q)).or_default() += units * unit;
                    left[q] -= units * unit;
                    freed -=
                        limit.max_share * (weight(n, p) - weight(n, q)) * (units * unit) as f64;
                }
                None => freed *= 1.0 - limit.max_share,
            }
            excess -= freed;
        }
    }
    unreachable!("rounds never run out")
}

/// Cuts of the Lagrangian value: each the multipliers it was taken at, the value
/// there, and how far that flow broke each limit (a supergradient).
type Cuts = Vec<(Vec<f64>, f64, Vec<f64>)>;

/// The best point of the cutting-plane model of the Lagrangian value (the least of
/// its cuts) within `reach` times `scale` of `center` on every multiplier: the
/// multipliers there and the model's value, which bounds the true one from above.
fn model_step(
    cuts: &Cuts,
    center: &[f64],
    center_value: f64,
    scale: &[f64],
    reach: f64,
) -> Option<(Vec<f64>, f64)> {
    use microlp::{ComparisonOp, OptimizationDirection, Problem};
    let mut problem = Problem::new(OptimizationDirection::Maximize);
    let lambda: Vec<_> = center
        .iter()
        .zip(scale)
        .map(|(&c, &s)| problem.add_var(0.0, ((c - reach * s).max(0.0), c + reach * s)))
        .collect();
    // The model's rise above the center's value.
    let rise = problem.add_var(1.0, (f64::NEG_INFINITY, f64::INFINITY));
    for (at, value, slope) in cuts {
        // rise ≤ value − center_value + slope·(λ − at)
        let mut terms = vec![(rise, 1.0)];
        let mut rhs = value - center_value;
        for ((&v, &g), &a) in lambda.iter().zip(slope).zip(at) {
            terms.push((v, -g));
            rhs -= g * a;
        }
        problem.add_constraint(terms.as_slice(), ComparisonOp::Le, rhs);
    }
    let outcome = problem.solve().ok()?;
    let solved = outcome.solution()?;
    let next = lambda
        .iter()
        .map(|&v| solved.var_value(v).max(0.0))
        .collect();
    Some((next, center_value + solved.var_value(rise)))
}

/// A flow met in the ascent (see [`Search::met`]).
struct Met {
    rooms: Vec<i64>,
    cost: f64,
    over: Vec<f64>,
}

/// Evaluations of the Lagrangian value at most in one ascent.
const ASCENT_STEPS: usize = 60;

/// Whether GPUs placed by (need, pool), whole units or not, keep every limit.
fn keeps_limits(instance: &Instance, limits: &[ShareLimit], taken: &Taken) -> bool {
    let limits: Vec<&ShareLimit> = limits.iter().filter(|l| l.max_share < 1.0).collect();
    Tally::of(instance, &limits, taken).keeps(&limits)
}

impl Search<'_> {
    fn outcome(self) -> Outcome {
        Outcome {
            bound: self.bound,
            best: self.best,
            finished: self.finished,
            out_of_time: self.out_of_time,
        }
    }

    fn gpus_by_placement(&self) -> Taken {
        self.placements
            .iter()
            .filter(|pl| self.net.flow(pl.arc) > 0)
            .map(|pl| ((pl.need, pl.pool), self.net.flow(pl.arc) as u64))
            .collect()
    }

    /// The Lagrangian value of the current flow in dollars, not yet less the rounding
    /// of costs: with plain prices, the flow's cost.
    fn value(&self) -> f64 {
        self.net.cost() as f64 / SCALE + self.prices.constant
    }

    /// How far the current flow breaks each limit, in what the limit counts (below
    /// zero: how far it keeps it): a supergradient of the Lagrangian value.
    fn violations(&self) -> Vec<f64> {
        let limits: Vec<&ShareLimit> = self.limits.iter().collect();
        let tally = Tally::of(self.instance, &limits, &self.gpus_by_placement());
        (0..limits.len()).map(|i| tally.over(&limits, i)).collect()
    }

    /// Charges the network `prices`; the flow is optimal again after
    /// [`Network::optimize`].
    fn price(&mut self, prices: Prices) {
        let needs = &self.instance.needs;
        let changes: Vec<(Arc, i64)> = self
            .placements
            .iter()
            .map(|pl| (pl.arc, prices.placement(&needs[pl.need], pl.pool)))
            .chain(
                needs
                    .iter()
                    .zip(&self.shortfalls)
                    .map(|(need, &arc)| (arc, prices.shortfall(need))),
            )
            .collect();
        self.net.set_costs(&changes);
        self.prices = prices;
    }

    /// Raises the bound by pricing the limits into the network: maximises the
    /// Lagrangian value over the multipliers by cutting planes, each step within a box
    /// around the best point so far that doubles after a step that gains most of what
    /// the model promised and halves after one that does not. Each flow met on the way,
    /// rounded down and trimmed to the limits, is an allocation. Ends with the network
    /// solved at the best multipliers found and the bound their value; false when the
    /// deadline passed first.
    fn ascend(&mut self) -> bool {
        let started = Instant::now();
        // A third of the time left at most: the search over rooms needs the rest.
        let until = self
            .deadline
            .map(|d| started + d.saturating_duration_since(started) / 3);
        let top = self
            .instance
            .pools
            .iter()
            .map(|p| p.price_per_gpu_hour)
            .fold(1e-3, f64::max);
        // A multiplier on a limit counted in GPU-hours is dollars a GPU-hour; on one
        // counted in spend, dollars a dollar.
        let scale: Vec<f64> = self
            .limits
            .iter()
            .map(|l| if l.spend { 1.0 } else { top })
            .collect();
        let mut center = vec![0.0; self.limits.len()];
        let mut center_value = self.value();
        let mut best = (center.clone(), center_value);
        // Each flow met: its rooms, its cost at the instance's prices, and how far it
        // breaks each limit (the supergradient of its cut).
        let mut met = vec![self.met(&center)];
        let mut cuts: Cuts = vec![(center.clone(), center_value, met[0].over.clone())];
        // Small first steps: a large change of prices moves most of the flow, and each
        // step is a re-solve from the last flow.
        let mut reach = 1.0 / 8.0;
        // The multipliers the network is solved at.
        let mut current = center.clone();
        self.net.deadline = until.or(self.deadline);
        for _ in 0..ASCENT_STEPS {
            if until.is_some_and(|u| Instant::now() >= u) {
                break;
            }
            let Some((next, promised)) = model_step(&cuts, &center, center_value, &scale, reach)
            else {
                break;
            };
            if promised - center_value <= 1e-9 * center_value.abs().max(1.0) {
                break;
            }
            let prices = Prices::charged(self.instance, self.limits, &next);
            if !fits_prices(self.instance, &prices) {
                reach /= 2.0;
                continue;
            }
            let before = (self.net.state.clone(), self.prices.clone());
            self.price(prices);
            if !self.net.optimize() {
                // New costs leave every flow feasible: only the deadline stops it. The
                // flow before the step is optimal at the prices before it.
                self.net.timed_out = false;
                self.price(before.1);
                self.net.state = before.0;
                break;
            }
            current.clone_from(&next);
            let value = self.value();
            self.improve(self.rounded_down());
            if value > best.1 {
                best = (next.clone(), value);
            }
            if value - center_value >= 0.5 * (promised - center_value) {
                center.clone_from(&next);
                center_value = value;
                reach *= 2.0;
            } else {
                reach /= 2.0;
            }
            let flow = self.met(&next);
            cuts.push((next, value, flow.over.clone()));
            met.push(flow);
        }
        self.mix(&met);
        self.net.deadline = self.deadline;
        if current != best.0 {
            self.price(Prices::charged(self.instance, self.limits, &best.0));
            if !self.net.optimize() {
                return false;
            }
        }
        self.bound = self.bound.max(self.value() - self.error);
        true
    }

    /// The current flow, solved at multipliers `lambda`: its rooms' GPUs, its cost at
    /// the instance's own prices, and how far it breaks each limit.
    fn met(&self, lambda: &[f64]) -> Met {
        let over = self.violations();
        let charged: f64 = lambda.iter().zip(&over).map(|(l, o)| l * o).sum();
        Met {
            rooms: self.room_flows(),
            cost: self.value() - charged,
            over,
        }
    }

    /// The cheapest mixture of the flows `met` that keeps every limit (a small linear
    /// program over their weights): where the best multipliers lie between flows that
    /// break a limit and flows that keep it with room, their mixture keeps it at about
    /// the relaxation's cost. Its rooms in whole units, with the needs placed again,
    /// are an allocation.
    fn mix(&mut self, met: &[Met]) {
        use microlp::{ComparisonOp, OptimizationDirection, Problem};
        let mut problem = Problem::new(OptimizationDirection::Minimize);
        let weights: Vec<_> = met
            .iter()
            .map(|m| problem.add_var(m.cost, (0.0, 1.0)))
            .collect();
        let all: Vec<_> = weights.iter().map(|&w| (w, 1.0)).collect();
        problem.add_constraint(all.as_slice(), ComparisonOp::Eq, 1.0);
        for c in 0..self.limits.len() {
            let terms: Vec<_> = weights
                .iter()
                .zip(met)
                .map(|(&w, m)| (w, m.over[c]))
                .collect();
            problem.add_constraint(terms.as_slice(), ComparisonOp::Le, 0.0);
        }
        let Ok(outcome) = problem.solve() else {
            return;
        };
        let Some(solved) = outcome.solution() else {
            return;
        };
        let mixed: Vec<f64> = (0..self.rooms.len())
            .map(|r| {
                weights
                    .iter()
                    .zip(met)
                    .map(|(&w, m)| solved.var_value(w) * m.rooms[r] as f64)
                    .sum()
            })
            .collect();
        // Each room to the nearest whole unit, or down where the pool has no room for
        // it (rounding down alone, the needs of larger units lost GPUs that the
        // single ones could not take up: 134,209,344 against 134,132,860 on the
        // instance of BENCHMARKS.md, whose optimum is 134,111,870).
        let mut rooms: Vec<i64> = self
            .rooms
            .iter()
            .zip(&mixed)
            .map(|(room, &gpus)| ((gpus / room.unit as f64).round() as i64) * room.unit as i64)
            .collect();
        let mut used = vec![0i64; self.instance.pools.len()];
        for (room, &gpus) in self.rooms.iter().zip(&rooms) {
            if room.unit > 1 {
                used[room.pool] += gpus;
            }
        }
        for (i, room) in self.rooms.iter().enumerate() {
            if room.unit > 1 && used[room.pool] > self.instance.pools[room.pool].gpus as i64 {
                let unit = room.unit as i64;
                let down = (mixed[i] as i64) / unit * unit;
                used[room.pool] -= rooms[i] - down;
                rooms[i] = down;
            }
        }
        if let Some(taken) = self.whole_units_of(&rooms) {
            self.improve(taken);
        }
    }

    /// Counts a node solved and says whether the deadline has passed; tells the
    /// reporter where the search stands when it last did so some seconds ago.
    fn out_of_time(&mut self) -> bool {
        self.nodes += 1;
        let now = Instant::now();
        if let Some(reporter) = self.reporter {
            if now.duration_since(self.reported) >= REPORT_EVERY {
                self.reported = now;
                (reporter.0)(&Progress {
                    best: self.best.as_ref().map(|b| b.cost),
                    bound: self.bound,
                    nodes: self.nodes,
                });
            }
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return true;
        }
        if self.hand_over.is_some_and(|h| now >= h) {
            self.handed_over = true;
            return true;
        }
        false
    }

    /// Stops the search where [`Search::out_of_time`] said so: for want of time, or
    /// to hand the rest to the program.
    fn stop_for_time(&mut self) {
        self.finished = false;
        self.out_of_time = !self.handed_over;
    }

    /// Whether the search is to stop: out of time, or, without multipliers, at an
    /// allocation that breaks a limit.
    fn halted(&self) -> bool {
        self.out_of_time || self.handed_over || (!self.finished && !self.lagrangian)
    }

    /// The cost of the network (in its units) at or above which a node cannot lead to
    /// an allocation cheaper than the best so far.
    fn cutoff(&self) -> i128 {
        match &self.best {
            None => i128::MAX,
            Some(best) => {
                let dollars = best.cost - slack(best.cost) + self.error - self.prices.constant;
                (dollars * SCALE).floor() as i128
            }
        }
    }

    /// Depth first from the current node, the cheaper child first. The room branched
    /// on is the one whose children's costs rise most (their product), tried out on
    /// the most promising rooms and estimated for the rest from what branching on
    /// each has cost before. A room whose one side cannot beat the best allocation
    /// found is moved to its other side at once, without a branch.
    fn dive(&mut self) {
        if self.out_of_time() {
            self.stop_for_time();
            return;
        }
        if self.net.cost() >= self.cutoff() {
            return;
        }
        let mut children = loop {
            let here = self.net.cost();
            let mut fractional: Vec<(usize, f64)> = Vec::new();
            for (r, room) in self.rooms.iter().enumerate() {
                let unit = room.unit as i64;
                let part = self.net.flow(room.arc) % unit;
                if part != 0 {
                    fractional.push((r, part as f64 / unit as f64));
                }
            }
            if fractional.is_empty() {
                // Every room is in whole units: the node's optimum is an allocation.
                // Without multipliers, one that keeps the limits is the node's optimum;
                // one that breaks a limit leaves the node unresolved, and the search
                // stops: the limits need the program's branch and bound. With them,
                // the node is resolved only where the best found meets its bound.
                // Where each need's GPUs in each pool are whole units already, the
                // flow is the allocation; otherwise each unit's needs are placed anew.
                let whole = self.placements.iter().all(|pl| {
                    self.net.flow(pl.arc) % self.instance.needs[pl.need].unit as i64 == 0
                });
                let taken = if whole {
                    Some(self.gpus_by_placement())
                } else {
                    self.whole_units()
                };
                match taken {
                    None => self.stop_for_time(),
                    Some(taken) => {
                        let keeps =
                            !self.lagrangian && keeps_limits(self.instance, self.limits, &taken);
                        self.improve(taken);
                        let resolved = if self.lagrangian {
                            self.net.cost() >= self.cutoff()
                        } else {
                            keeps
                        };
                        if !resolved {
                            self.finished = false;
                        }
                    }
                }
                return;
            }
            // Rooms never tried out first, then by their estimated score.
            fractional.sort_by(|&(r1, f1), &(r2, f2)| {
                let (k1, s1) = self.pseudo[r1].estimate(f1);
                let (k2, s2) = self.pseudo[r2].estimate(f2);
                k1.cmp(&k2).then(s2.total_cmp(&s1))
            });
            let parent = self.net.state.clone();
            let mut best: Option<(f64, Vec<(i128, FlowState)>)> = None;
            let mut fixed = false;
            let mut since_better = 0;
            for (k, &(r, f)) in fractional.iter().enumerate() {
                // The first room is always tried out; then rooms until STRONG, except
                // that once estimates can be trusted (or LOOKAHEAD tries brought
                // nothing better), rooms whose estimate is below the best stop it.
                let (known, estimated) = self.pseudo[r].estimate(f);
                let settled = known || since_better >= LOOKAHEAD;
                if k >= STRONG
                    || (k > 0 && settled && best.as_ref().is_some_and(|b| b.0 >= estimated))
                {
                    break;
                }
                let arc = self.rooms[r].arc;
                let unit = self.rooms[r].unit as i64;
                let (lo, hi) = self.net.bounds(arc);
                let below = self.net.flow(arc) / unit * unit;
                let mut sides = Vec::with_capacity(2);
                for (up, l, h) in [(false, lo, below), (true, below + unit, hi)] {
                    self.net.state.clone_from(&parent);
                    let solved = l <= h && {
                        self.net.set_bounds(arc, l, h);
                        self.net.optimize()
                    };
                    let cost = self.net.cost();
                    if solved {
                        let gain = (cost - here) as f64 / SCALE;
                        let distance = if up { 1.0 - f } else { f };
                        let p = &mut self.pseudo[r];
                        let side = if up { &mut p.up } else { &mut p.down };
                        side.0 += gain / distance;
                        side.1 += 1;
                    }
                    if solved && cost < self.cutoff() {
                        sides.push((cost, self.net.state.clone()));
                    }
                }
                if self.net.timed_out {
                    // A side not solved in time is neither infeasible nor priced.
                    self.stop_for_time();
                    return;
                }
                match sides.len() {
                    0 => return,
                    1 => {
                        // One side only can still beat the best: go there, no branch.
                        self.net.state = sides.pop().expect("one side").1;
                        fixed = true;
                        break;
                    }
                    _ => {}
                }
                let s = score(
                    (sides[0].0 - here) as f64 / SCALE,
                    (sides[1].0 - here) as f64 / SCALE,
                );
                if best.as_ref().is_none_or(|b| s > b.0) {
                    best = Some((s, sides));
                    since_better = 0;
                } else {
                    since_better += 1;
                }
            }
            if fixed {
                if self.out_of_time() {
                    self.stop_for_time();
                    return;
                }
                continue;
            }
            break best.expect("the first room is always tried").1;
        };
        children.sort_by_key(|c| c.0);
        for (cost, state) in children {
            if cost >= self.cutoff() {
                continue;
            }
            self.net.state = state;
            self.dive();
            if self.halted() {
                return;
            }
        }
    }

    /// The current flow with each placement rounded down to whole units.
    fn rounded_down(&self) -> Taken {
        self.placements
            .iter()
            .filter_map(|pl| {
                let unit = self.instance.needs[pl.need].unit as i64;
                let whole = self.net.flow(pl.arc) / unit * unit;
                (whole > 0).then_some(((pl.need, pl.pool), whole as u64))
            })
            .collect()
    }

    /// An allocation in whole units from the current node: each room for a unit above
    /// one rounded down to whole units, the rest of each pool left to single GPUs, and
    /// each unit's needs placed in those rooms at least cost. Where every room is whole
    /// already, this costs no more than the node does.
    /// `None` where the deadline passed first.
    fn whole_units(&self) -> Option<Taken> {
        self.whole_units_of(&self.room_flows())
    }

    /// The GPUs each room carries in the current flow, in the order of `rooms`.
    fn room_flows(&self) -> Vec<i64> {
        self.rooms.iter().map(|r| self.net.flow(r.arc)).collect()
    }

    /// [`Search::whole_units`] from `flows`, the GPUs of each room in order.
    fn whole_units_of(&self, flows: &[i64]) -> Option<Taken> {
        let mut rooms: HashMap<(usize, u64), i64> = HashMap::new();
        let mut left: Vec<i64> = self.instance.pools.iter().map(|p| p.gpus as i64).collect();
        for (room, &flow) in self.rooms.iter().zip(flows).filter(|(r, _)| r.unit > 1) {
            let unit = room.unit as i64;
            let whole = flow / unit * unit;
            left[room.pool] -= whole;
            rooms.insert((room.pool, room.unit), whole);
        }
        for room in self.rooms.iter().filter(|r| r.unit == 1) {
            rooms.insert((room.pool, 1), left[room.pool]);
        }
        let mut units: Vec<u64> = self.rooms.iter().map(|r| r.unit).collect();
        units.sort_unstable();
        units.dedup();
        let mut taken = Taken::new();
        for unit in units {
            taken.extend(self.transport(unit, &rooms)?);
        }
        Some(taken)
    }

    /// The needs of one unit placed, in whole units, in `rooms` (GPUs by pool and
    /// unit, whole units each): a transportation problem, solved as a flow in units.
    /// `None` where the deadline passed first.
    fn transport(&self, unit: u64, rooms: &HashMap<(usize, u64), i64>) -> Option<Taken> {
        let instance = self.instance;
        let mut b = Builder::default();
        let total: u64 = instance
            .needs
            .iter()
            .filter(|n| n.unit == unit)
            .map(|n| n.gpus / unit)
            .sum();
        let sink = b.node(-(total as i64));
        let mut need_nodes = HashMap::new();
        for &n in &self.order {
            let need = &instance.needs[n];
            if need.unit == unit {
                let node = b.node((need.gpus / unit) as i64);
                need_nodes.insert(n, node);
                b.arc(
                    node,
                    sink,
                    unit as i64 * self.prices.shortfall(need),
                    0,
                    (need.gpus / unit) as i64,
                );
            }
        }
        let mut room_nodes = HashMap::new();
        for room in self.rooms.iter().filter(|r| r.unit == unit) {
            let node = b.node(0);
            b.arc(node, sink, 0, 0, rooms[&(room.pool, unit)] / unit as i64);
            room_nodes.insert(room.pool, node);
        }
        let mut arcs = Vec::new();
        for pl in &self.placements {
            let need = &instance.needs[pl.need];
            if need.unit != unit {
                continue;
            }
            let cost = unit as i64 * self.prices.placement(need, pl.pool);
            let arc = b.arc(
                need_nodes[&pl.need],
                room_nodes[&pl.pool],
                cost,
                0,
                (need.gpus / unit) as i64,
            );
            arcs.push((pl.need, pl.pool, arc));
        }
        let mut net = b.build();
        net.deadline = self.deadline;
        if !net.optimize() {
            debug_assert!(
                net.timed_out,
                "shortfall always absorbs what the rooms cannot"
            );
            return None;
        }
        Some(
            arcs.into_iter()
                .filter(|&(.., arc)| net.flow(arc) > 0)
                .map(|(n, p, arc)| ((n, p), net.flow(arc) as u64 * unit))
                .collect(),
        )
    }

    /// Trims `taken` to the limits where it breaks one, tops it up greedily, and keeps
    /// it if it costs less than the best so far.
    fn improve(&mut self, mut taken: Taken) {
        if !trim_to_limits(self.instance, self.limits, &mut taken) {
            return;
        }
        let Ok(solution) = fill(
            self.instance,
            self.limits,
            self.preferred,
            Strategy::CheapestFirst,
            taken,
        ) else {
            return;
        };
        if self
            .best
            .as_ref()
            .is_none_or(|b| solution.cost < b.cost - slack(b.cost))
        {
            self.best = Some(solution);
        }
    }
}

/// How far costs may differ and still count as equal.
fn slack(cost: f64) -> f64 {
    1e-9 * cost.abs().max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One need of 10 GPUs; provider a's pool costs 1 a GPU-hour, b's 2, and a may
    /// have at most 30% of the GPU-hours. The optimum is 3 GPUs from a and 7 from b,
    /// 17; the Lagrangian value is 10·min(1 + 0.7λ, 2 − 0.3λ), 17 at λ = 1.
    const CAPPED: &str = r#"{
      "needs": [ { "id": "n", "gpus": 10, "hours": 1, "unit": 1, "shortfall_penalty": 10,
                   "pools": ["a1", "b1"] } ],
      "pools": [ { "id": "a1", "provider": "a", "gpus": 10, "price_per_gpu_hour": 1 },
                 { "id": "b1", "provider": "b", "gpus": 10, "price_per_gpu_hour": 2 } ],
      "caps": [ { "provider": "a", "max_share": 0.3 } ]
    }"#;

    #[test]
    fn every_multiplier_bounds_the_capped_optimum_and_the_best_one_meets_it() {
        let instance = Instance::parse(CAPPED.as_bytes()).unwrap();
        let limits = instance.share_limits();
        let order = most_to_lose_first(&instance);
        let (mut net, ..) = network(&instance, &order, &Prices::plain(&instance));
        assert!(net.optimize());
        assert_eq!(net.cost(), 10_000_000, "uncapped: all ten from a");
        for (lambda, expected) in [(0.5, 13.5), (1.0, 17.0), (2.0, 14.0), (4.0, 8.0)] {
            let prices = Prices::charged(&instance, &limits, &[lambda]);
            let (mut net, ..) = network(&instance, &order, &prices);
            assert!(net.optimize());
            let value = net.cost() as f64 / SCALE + prices.constant;
            assert!(
                (value - expected).abs() < 1e-6,
                "L({lambda}) = {value}, not {expected}"
            );
        }
        let outcome = search(&instance, &limits, &BTreeSet::new(), None, None).unwrap();
        let best = outcome.best.expect("an allocation");
        assert!((best.cost - 17.0).abs() < 1e-9, "best {}", best.cost);
        assert!(
            outcome.bound <= 17.0 && outcome.bound > 17.0 - 1e-4,
            "bound {}",
            outcome.bound
        );
    }

    /// The least cost of every allocation of `instance` that keeps its caps, by
    /// enumeration (whole units of each need in each pool); infinite where none does.
    fn brute_force(instance: &Instance) -> f64 {
        let pairs: Vec<(usize, usize)> = instance
            .needs
            .iter()
            .enumerate()
            .flat_map(|(n, need)| {
                need.pools
                    .iter()
                    .map(move |p| (n, instance.pool_index()[p.as_str()]))
            })
            .collect();
        let mut best = f64::INFINITY;
        let mut units = vec![0u64; pairs.len()];
        loop {
            let allocations: Vec<crate::Allocation> = pairs
                .iter()
                .zip(&units)
                .filter(|(_, &u)| u > 0)
                .map(|(&(n, p), &u)| crate::Allocation {
                    need: instance.needs[n].id.clone(),
                    pool: instance.pools[p].id.clone(),
                    gpus: u * instance.needs[n].unit,
                })
                .collect();
            if let Ok(cost) = crate::check(instance, &allocations) {
                best = best.min(cost);
            }
            // The next vector of units, each up to its need's size.
            let mut i = 0;
            loop {
                if i == pairs.len() {
                    return best;
                }
                let need = &instance.needs[pairs[i].0];
                if units[i] < need.gpus / need.unit {
                    units[i] += 1;
                    break;
                }
                units[i] = 0;
                i += 1;
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 200, failure_persistence: None, ..Default::default()
        })]

        /// Small instances with a cap that may bind: the search's bound (Lagrangian
        /// where the first flow breaks the cap) never exceeds the optimum, its best
        /// keeps the cap and costs no less, and where it says it finished, it found
        /// the optimum.
        #[test]
        fn the_search_bound_never_exceeds_the_capped_optimum(
            needs in proptest::collection::vec((1u64..4, 0usize..3, 1u32..6, 5u32..30, 0u8..7), 1..4),
            pools in proptest::collection::vec((1u64..10, 1u32..8), 2..4),
            share in 1u32..9,
            base in 0u32..30,
        ) {
            let units = [1u64, 2, 4];
            let instance = serde_json::json!({
                "needs": needs.iter().enumerate().map(|(i, &(size, unit, hours, penalty, mask))| {
                    let unit = units[unit];
                    let allowed: Vec<String> = (0..pools.len())
                        .filter(|p| mask & (1 << p) != 0 || *p == i % pools.len())
                        .map(|p| format!("p{p}"))
                        .collect();
                    serde_json::json!({ "id": format!("n{i}"), "gpus": size * unit,
                        "hours": hours, "unit": unit, "shortfall_penalty": penalty,
                        "pools": allowed })
                }).collect::<Vec<_>>(),
                "pools": pools.iter().enumerate().map(|(p, &(gpus, price))| serde_json::json!({
                    "id": format!("p{p}"), "provider": format!("c{}", p.min(1)),
                    "gpus": gpus, "price_per_gpu_hour": price })).collect::<Vec<_>>(),
                "caps": [ { "provider": "c0", "max_share": f64::from(share) / 10.0 } ],
                "base_gpu_hours": { "c0": base, "c1": 10 }
            });
            let instance = Instance::parse(instance.to_string().as_bytes()).unwrap();
            let limits = instance.share_limits();
            let optimum = brute_force(&instance);
            let outcome = search(&instance, &limits, &BTreeSet::new(), None, None).unwrap();
            proptest::prop_assert!(outcome.bound <= optimum + 1e-6, "bound {} above {optimum}", outcome.bound);
            if let Some(best) = &outcome.best {
                let cost = crate::check(&instance, &best.allocations).unwrap();
                proptest::prop_assert!(cost >= optimum - 1e-6, "{cost} below the optimum {optimum}");
                if outcome.finished {
                    proptest::prop_assert!((cost - optimum).abs() < 1e-6, "finished at {cost}, optimum {optimum}");
                }
            }
        }
    }

    /// Re-pricing a solved network warm and re-solving it gives what building it at
    /// the new prices does.
    #[test]
    fn a_network_re_priced_warm_matches_one_built_at_those_prices() {
        let instance = Instance::parse(CAPPED.as_bytes()).unwrap();
        let limits = instance.share_limits();
        let order = most_to_lose_first(&instance);
        let prices = Prices::plain(&instance);
        let (net, rooms, placements, shortfalls) = network(&instance, &order, &prices);
        let mut search = Search {
            instance: &instance,
            limits: &limits,
            preferred: &BTreeSet::new(),
            net,
            pseudo: vec![Pseudo::default(); rooms.len()],
            rooms,
            placements,
            shortfalls,
            order: order.clone(),
            prices,
            lagrangian: true,
            hand_over: None,
            handed_over: false,
            best: None,
            deadline: None,
            finished: true,
            out_of_time: false,
            error: 0.0,
            bound: f64::NEG_INFINITY,
            reporter: None,
            nodes: 0,
            reported: Instant::now(),
        };
        assert!(search.net.optimize());
        for lambda in [3.0, 0.25, 1.0, 6.5, 0.0] {
            let prices = Prices::charged(&instance, &limits, &[lambda]);
            let (mut fresh, ..) = network(&instance, &order, &prices);
            assert!(fresh.optimize());
            search.price(prices);
            assert!(search.net.optimize());
            assert_eq!(search.net.cost(), fresh.cost(), "at λ = {lambda}");
        }
    }
}
