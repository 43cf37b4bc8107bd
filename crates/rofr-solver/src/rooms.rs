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
//! Limits on providers' shares are not flows. The search leaves them out, so its bound
//! holds with them too, and an optimum it finds that keeps every limit is an optimum
//! of the instance. When the relaxation itself breaks a limit, or the optimum found
//! does, it gives way to the general program.

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
    /// The needs, most to lose first ([`most_to_lose_first`]).
    order: Vec<usize>,
    best: Option<Solution>,
    deadline: Option<Instant>,
    /// False once a part of the tree is left unexplored: for want of time, or at a
    /// node in whole units whose allocation breaks a limit.
    finished: bool,
    out_of_time: bool,
    /// How far the network's cost of any flow, in dollars, may lie from its cost in
    /// the instance's prices: half a unit of the network's costs for every GPU.
    error: f64,
    /// What branching on each room has cost so far, per whole unit moved: the sum of
    /// the rises in cost and how many there were, below and above.
    pseudo: Vec<Pseudo>,
    /// The first flow's cost, less the rounding of costs.
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
/// where the search does not apply (costs too large for whole millionths) or where
/// the first flow breaks one of `limits` (the search could then prove nothing). A
/// first flow cut short by the deadline answers with itself rounded down and topped
/// up, and the bound its potentials prove.
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
    let (net, rooms, placements) = network(instance, &order);
    let mut search = Search {
        instance,
        limits,
        preferred,
        net,
        pseudo: vec![Pseudo::default(); rooms.len()],
        rooms,
        placements,
        order,
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
    if !keeps_limits(instance, limits, &search.gpus_by_placement()) {
        return None;
    }
    // The first flow rounded gives a first allocation, whether or not it keeps the
    // limits: the search goes on either way. Each placement rounded down is one at
    // once; each room rounded down, with the needs placed again, is a better one.
    search.improve(search.rounded_down());
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
/// straight to the sink for its shortfall; the needs' nodes made in `order`.
fn network(instance: &Instance, order: &[usize]) -> (Network, Vec<Room>, Vec<Placement>) {
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
        let cost = scaled(need.hours * instance.pools[p].price_per_gpu_hour);
        let arc = b.arc(need_nodes[n], room, cost, 0, need.gpus as i64);
        placements.push(Placement {
            need: n,
            pool: p,
            arc,
        });
    }
    for (n, need) in instance.needs.iter().enumerate() {
        b.arc(
            need_nodes[n],
            sink,
            scaled(need.hours * need.shortfall_penalty),
            0,
            need.gpus as i64,
        );
    }
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
    (b.build(), rooms, placements)
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
    let gpus: f64 = instance.needs.iter().map(|n| n.gpus as f64).sum::<f64>() + 1.0;
    let price = instance
        .pools
        .iter()
        .map(|p| p.price_per_gpu_hour)
        .fold(0.0, f64::max);
    let nodes = (instance.needs.len() + 3 * instance.pools.len() + 2) as f64;
    gpus < 1e15
        && instance.needs.iter().all(|n| {
            let most = n.unit as f64 * n.hours * price.max(n.shortfall_penalty) * SCALE;
            most * gpus < 1e18 && most * nodes < 1e18
        })
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Whether GPUs placed by (need, pool), whole units or not, keep every limit.
fn keeps_limits(instance: &Instance, limits: &[ShareLimit], taken: &Taken) -> bool {
    let limits: Vec<&ShareLimit> = limits.iter().filter(|l| l.max_share < 1.0).collect();
    let mut tally = Tally::new(instance, &limits);
    for (&(n, p), &gpus) in taken {
        tally.place(instance, &limits, n, p, gpus);
    }
    tally.keeps(&limits)
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
        self.deadline.is_some_and(|d| now >= d)
    }

    fn stop_for_time(&mut self) {
        self.finished = false;
        self.out_of_time = true;
    }

    /// The cost of the network (in its units) at or above which a node cannot lead to
    /// an allocation cheaper than the best so far.
    fn cutoff(&self) -> i128 {
        match &self.best {
            None => i128::MAX,
            Some(best) => ((best.cost - slack(best.cost) + self.error) * SCALE).floor() as i128,
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
                // One that breaks a limit leaves the node unresolved, and the search
                // stops: the limits need the program's branch and bound.
                match self.whole_units() {
                    None => self.stop_for_time(),
                    Some(taken) => {
                        if !self.improve(taken) {
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
            if !self.finished {
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
        let mut rooms: HashMap<(usize, u64), i64> = HashMap::new();
        let mut left: Vec<i64> = self.instance.pools.iter().map(|p| p.gpus as i64).collect();
        for room in self.rooms.iter().filter(|r| r.unit > 1) {
            let unit = room.unit as i64;
            let whole = self.net.flow(room.arc) / unit * unit;
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
                    scaled(unit as f64 * need.hours * need.shortfall_penalty),
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
            let cost =
                scaled(unit as f64 * need.hours * instance.pools[pl.pool].price_per_gpu_hour);
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

    /// Tops `taken` up greedily and keeps it if it costs less than the best so far.
    /// False when it breaks a limit.
    fn improve(&mut self, taken: Taken) -> bool {
        let Ok(solution) = fill(
            self.instance,
            self.limits,
            self.preferred,
            Strategy::CheapestFirst,
            taken,
        ) else {
            return false;
        };
        if self
            .best
            .as_ref()
            .is_none_or(|b| solution.cost < b.cost - slack(b.cost))
        {
            self.best = Some(solution);
        }
        true
    }
}

/// How far costs may differ and still count as equal.
fn slack(cost: f64) -> f64 {
    1e-9 * cost.abs().max(1.0)
}
