//! Minimum-cost flow by successive shortest paths, kept optimal as arc bounds change.
//!
//! The branch and bound over unit rooms ([`crate::rooms`]) solves thousands of flow
//! problems that differ from their parent by one arc's bounds. A solver that starts from
//! scratch each time would spend its time re-deriving what the parent knew; this one
//! keeps the parent's flow and node potentials (which prove its optimality), moves the
//! changed arc's flow inside its new bounds, and routes only the few GPUs displaced,
//! along shortest paths under reduced costs. No crate found offers a flow solver that can
//! be re-solved this way after a bound change, which is why this one is written here.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// An arc's index.
pub(crate) type Arc = usize;

/// What can change as the network is solved: the flow on each arc, what each node has
/// yet to send (negative: to receive), and the node potentials.
#[derive(Debug, Clone)]
pub(crate) struct FlowState {
    flow: Vec<i64>,
    lo: Vec<i64>,
    hi: Vec<i64>,
    excess: Vec<i64>,
    potential: Vec<i64>,
}

/// A network with costs per unit of flow on its arcs and supplies at its nodes.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    from: Vec<u32>,
    to: Vec<u32>,
    cost: Vec<i64>,
    /// For each node, its arcs in `adjacent[first[v]..first[v + 1]]`, each as
    /// `2·arc` (leaving the node) or `2·arc + 1` (entering it).
    first: Vec<u32>,
    adjacent: Vec<u32>,
    pub(crate) state: FlowState,
    // Buffers of the shortest-path search, kept between searches.
    distance: Vec<i64>,
    parent: Vec<u32>,
    settled: Vec<bool>,
    /// When [`Network::optimize`] gives up, and whether it has.
    pub(crate) deadline: Option<std::time::Instant>,
    pub(crate) timed_out: bool,
}

/// Builds a [`Network`] arc by arc.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    supply: Vec<i64>,
    arcs: Vec<(u32, u32, i64, i64, i64)>,
}

impl Builder {
    /// A node with `supply` to send (negative: to receive); returns its index.
    pub(crate) fn node(&mut self, supply: i64) -> usize {
        self.supply.push(supply);
        self.supply.len() - 1
    }

    /// An arc carrying between `lo` and `hi` at `cost` a unit; returns its index.
    pub(crate) fn arc(&mut self, from: usize, to: usize, cost: i64, lo: i64, hi: i64) -> Arc {
        self.arcs.push((from as u32, to as u32, cost, lo, hi));
        self.arcs.len() - 1
    }

    /// The network with no flow yet: solve it with [`Network::optimize`]. Costs must not
    /// be negative, so that zero potentials prove the empty flow optimal.
    pub(crate) fn build(self) -> Network {
        let nodes = self.supply.len();
        let mut degree = vec![0u32; nodes + 1];
        for &(from, to, ..) in &self.arcs {
            degree[from as usize + 1] += 1;
            degree[to as usize + 1] += 1;
        }
        for v in 0..nodes {
            degree[v + 1] += degree[v];
        }
        let first = degree.clone();
        let mut fill = degree;
        let mut adjacent = vec![0u32; 2 * self.arcs.len()];
        for (a, &(from, to, ..)) in self.arcs.iter().enumerate() {
            adjacent[fill[from as usize] as usize] = 2 * a as u32;
            fill[from as usize] += 1;
            adjacent[fill[to as usize] as usize] = 2 * a as u32 + 1;
            fill[to as usize] += 1;
        }
        let mut excess = self.supply;
        let mut flow = Vec::with_capacity(self.arcs.len());
        for &(from, to, _, lo, _) in &self.arcs {
            // Lower bounds are met from the start; the nodes at either end make up.
            flow.push(lo);
            excess[from as usize] -= lo;
            excess[to as usize] += lo;
        }
        Network {
            from: self.arcs.iter().map(|a| a.0).collect(),
            to: self.arcs.iter().map(|a| a.1).collect(),
            cost: self.arcs.iter().map(|a| a.2).collect(),
            first,
            adjacent,
            state: FlowState {
                flow,
                lo: self.arcs.iter().map(|a| a.3).collect(),
                hi: self.arcs.iter().map(|a| a.4).collect(),
                excess,
                potential: vec![0; nodes],
            },
            distance: vec![i64::MAX; nodes],
            parent: vec![u32::MAX; nodes],
            settled: vec![false; nodes],
            deadline: None,
            timed_out: false,
        }
    }
}

impl Network {
    pub(crate) fn flow(&self, arc: Arc) -> i64 {
        self.state.flow[arc]
    }

    pub(crate) fn bounds(&self, arc: Arc) -> (i64, i64) {
        (self.state.lo[arc], self.state.hi[arc])
    }

    /// The cost of the current flow.
    pub(crate) fn cost(&self) -> i128 {
        self.state
            .flow
            .iter()
            .zip(&self.cost)
            .map(|(&f, &c)| i128::from(f) * i128::from(c))
            .sum()
    }

    /// A lower bound on the cost of every flow that keeps the arcs' bounds and the
    /// nodes' supplies, from the potentials alone (the dual of the flow's program):
    /// the supplies priced at the potentials, plus each arc's reduced cost at whichever
    /// bound makes it least. It holds for any potentials and equals the cost at an
    /// optimum; it is what a first flow cut short can still prove.
    pub(crate) fn dual_bound(&self) -> i128 {
        let s = &self.state;
        // Supplies are what each node has yet to send plus what its arcs carry out.
        let priced: i128 = s
            .excess
            .iter()
            .zip(&s.potential)
            .map(|(&e, &p)| i128::from(e) * i128::from(p))
            .sum();
        let arcs: i128 = (0..self.cost.len())
            .map(|a| {
                let reduced = i128::from(self.reduced(a));
                let through = i128::from(s.potential[self.from[a] as usize])
                    - i128::from(s.potential[self.to[a] as usize]);
                let least = (reduced * i128::from(s.lo[a])).min(reduced * i128::from(s.hi[a]));
                i128::from(s.flow[a]) * through + least
            })
            .sum();
        priced + arcs
    }

    /// The arc's cost less the potentials of its ends: what a unit more costs, given
    /// what the potentials say a unit is worth at each end.
    fn reduced(&self, arc: Arc) -> i64 {
        self.cost[arc] - self.state.potential[self.from[arc] as usize]
            + self.state.potential[self.to[arc] as usize]
    }

    /// Gives `arc` new bounds. Its flow moves inside them, and, where its reduced cost
    /// asks for it, to the bound it favours; the GPUs displaced wait at its ends for
    /// [`Network::optimize`].
    pub(crate) fn set_bounds(&mut self, arc: Arc, lo: i64, hi: i64) {
        debug_assert!(lo <= hi);
        let reduced = self.reduced(arc);
        let s = &mut self.state;
        s.lo[arc] = lo;
        s.hi[arc] = hi;
        let target = match reduced.cmp(&0) {
            std::cmp::Ordering::Less => hi,
            std::cmp::Ordering::Greater => lo,
            std::cmp::Ordering::Equal => s.flow[arc].clamp(lo, hi),
        };
        let moved = target - s.flow[arc];
        s.flow[arc] = target;
        s.excess[self.from[arc] as usize] -= moved;
        s.excess[self.to[arc] as usize] += moved;
    }

    /// Gives arcs new costs, `(arc, cost)` each. Then each arc whose reduced cost asks
    /// for it moves to the bound it favours, and the GPUs displaced wait at its ends for
    /// [`Network::optimize`]: every residual arc's reduced cost is again not negative,
    /// so the flow stays optimal for what it carries. Any potentials would do for that;
    /// first each node that a changed arc leaves takes, of the potentials that make one
    /// of its arcs' reduced cost zero, the one that displaces least along its arcs (the
    /// others' potentials as they are): a need whose every option got cheaper by the
    /// same then displaces nothing, and one that now prefers another pool displaces
    /// its GPUs once, not once for every pool it now prefers.
    pub(crate) fn set_costs(&mut self, changes: &[(Arc, i64)]) {
        for &(arc, cost) in changes {
            self.cost[arc] = cost;
        }
        let mut moved = vec![false; self.state.potential.len()];
        for &(arc, _) in changes {
            let v = self.from[arc] as usize;
            if std::mem::replace(&mut moved[v], true) {
                continue;
            }
            let entries = &self.adjacent[self.first[v] as usize..self.first[v + 1] as usize];
            // Weighing every choice costs the square of the node's arcs: a node of
            // many (a sink) keeps its potential.
            if entries.len() > 64 {
                continue;
            }
            // The potential at which each of v's arcs has no reduced cost.
            let zero = |entry: u32| {
                let a = (entry / 2) as usize;
                if entry % 2 == 0 {
                    self.cost[a] + self.state.potential[self.to[a] as usize]
                } else {
                    self.state.potential[self.from[a] as usize] - self.cost[a]
                }
            };
            // What v's arcs would displace were its potential `p`: an arc out of v
            // costs less than nothing above its zero and more below it; one into v
            // the other way round.
            let displaced = |p: i64| -> i64 {
                entries
                    .iter()
                    .map(|&entry| {
                        let a = (entry / 2) as usize;
                        let z = zero(entry);
                        let below = if entry % 2 == 0 { p > z } else { p < z };
                        let above = if entry % 2 == 0 { p < z } else { p > z };
                        if below {
                            self.state.hi[a] - self.state.flow[a]
                        } else if above {
                            self.state.flow[a] - self.state.lo[a]
                        } else {
                            0
                        }
                    })
                    .sum()
            };
            let mut best = (displaced(self.state.potential[v]), self.state.potential[v]);
            for &entry in entries {
                let p = zero(entry);
                let d = displaced(p);
                if d < best.0 {
                    best = (d, p);
                }
            }
            self.state.potential[v] = best.1;
        }
        for arc in 0..self.cost.len() {
            let (lo, hi) = self.bounds(arc);
            self.set_bounds(arc, lo, hi);
        }
    }

    /// Routes every node's excess to nodes short of flow, cheapest paths first, keeping
    /// the flow optimal for what it carries. False when some excess has nowhere to go
    /// (then no flow keeps every bound) or the deadline passed (then `timed_out` is
    /// set); either way the state is of no further use.
    pub(crate) fn optimize(&mut self) -> bool {
        for round in 0u64.. {
            if round % 64 == 63
                && self
                    .deadline
                    .is_some_and(|d| std::time::Instant::now() >= d)
            {
                self.timed_out = true;
                return false;
            }
            let (mut sources, mut deficits) = (Vec::new(), Vec::new());
            for (v, &e) in self.state.excess.iter().enumerate() {
                match e.cmp(&0) {
                    std::cmp::Ordering::Greater => sources.push(v as u32),
                    std::cmp::Ordering::Less => deficits.push(v as u32),
                    std::cmp::Ordering::Equal => {}
                }
            }
            if sources.is_empty() {
                return true;
            }
            // After a bound change, one node has excess and one is short, and the
            // nearest path is enough. Where more have excess (at the start, every need,
            // with only the sink short; after new costs, many nodes of both kinds), one
            // search backwards from every node short of flow gives each node with
            // excess its cheapest path at once.
            if sources.len() == 1 {
                let Some(sink) = self.shortest_paths(&sources) else {
                    return false;
                };
                self.augment(sink);
            } else if !self.toward_deficits(&sources, &deficits) {
                return false;
            }
            self.augment_admissible(&sources);
        }
        unreachable!("rounds never run out")
    }

    /// The residual arc that `entry` (as in `adjacent`, at some node) gives, leaving
    /// the node (`outward`) or entering it: the node at its other end and its reduced
    /// cost; `None` where the arc's bounds leave no room that way.
    fn residual(&self, entry: u32, outward: bool) -> Option<(usize, i64)> {
        let arc = (entry / 2) as usize;
        let leaves = entry % 2 == 0;
        let other = if leaves { self.to[arc] } else { self.from[arc] } as usize;
        if leaves == outward {
            // Along the arc: more flow.
            (self.state.flow[arc] < self.state.hi[arc]).then(|| (other, self.reduced(arc)))
        } else {
            // Against it: less flow.
            (self.state.flow[arc] > self.state.lo[arc]).then(|| (other, -self.reduced(arc)))
        }
    }

    /// Whether a unit more along `entry` (as in `adjacent`) fits its arc's bounds and
    /// costs nothing under the potentials; and the node it leads to.
    fn admissible(&self, entry: u32) -> Option<usize> {
        let arc = (entry / 2) as usize;
        if entry % 2 == 0 {
            (self.state.flow[arc] < self.state.hi[arc] && self.reduced(arc) == 0)
                .then_some(self.to[arc] as usize)
        } else {
            (self.state.flow[arc] > self.state.lo[arc] && self.reduced(arc) == 0)
                .then_some(self.from[arc] as usize)
        }
    }

    /// After the potentials moved, sends what more excess it can along paths that cost
    /// nothing under them, depth first, before another search is needed. Such paths
    /// keep the flow optimal, as the one the search found does.
    fn augment_admissible(&mut self, sources: &[u32]) {
        let nodes = self.state.excess.len();
        // Nodes from which no such path leads on, and the path being followed.
        self.settled.fill(false);
        let mut on_path = vec![false; nodes];
        let mut next: Vec<u32> = self.first[..nodes].to_vec();
        let mut path: Vec<u32> = Vec::new();
        for &s in sources {
            let s = s as usize;
            while self.state.excess[s] > 0 && !self.settled[s] {
                // Follow admissible arcs from `s` until a node short of flow.
                let mut v = s;
                on_path[v] = true;
                loop {
                    if self.state.excess[v] < 0 {
                        break;
                    }
                    let mut moved = false;
                    while next[v] < self.first[v + 1] {
                        let entry = self.adjacent[next[v] as usize];
                        if let Some(w) = self.admissible(entry) {
                            if !self.settled[w] && !on_path[w] {
                                path.push(entry);
                                on_path[w] = true;
                                v = w;
                                moved = true;
                                break;
                            }
                        }
                        next[v] += 1;
                    }
                    if moved {
                        continue;
                    }
                    // A dead end: back up one step.
                    self.settled[v] = true;
                    on_path[v] = false;
                    let Some(entry) = path.pop() else {
                        break;
                    };
                    let arc = (entry / 2) as usize;
                    v = if entry % 2 == 0 {
                        self.from[arc] as usize
                    } else {
                        self.to[arc] as usize
                    };
                    next[v] += 1;
                }
                if self.state.excess[v] >= 0 {
                    // `s` itself is a dead end.
                    debug_assert!(path.is_empty());
                    break;
                }
                let sink = v;
                let mut amount = self.state.excess[s].min(-self.state.excess[sink]);
                for &entry in &path {
                    let arc = (entry / 2) as usize;
                    let room = if entry % 2 == 0 {
                        self.state.hi[arc] - self.state.flow[arc]
                    } else {
                        self.state.flow[arc] - self.state.lo[arc]
                    };
                    amount = amount.min(room);
                }
                for &entry in &path {
                    let arc = (entry / 2) as usize;
                    if entry % 2 == 0 {
                        self.state.flow[arc] += amount;
                    } else {
                        self.state.flow[arc] -= amount;
                    }
                }
                self.state.excess[s] -= amount;
                self.state.excess[sink] += amount;
                for &entry in &path {
                    let arc = (entry / 2) as usize;
                    on_path[self.from[arc] as usize] = false;
                    on_path[self.to[arc] as usize] = false;
                }
                on_path[s] = false;
                path.clear();
            }
        }
    }

    /// Dijkstra's search from every node with excess, under reduced costs, until the
    /// nearest node short of flow is settled; then the potentials move so that the path
    /// found costs nothing under them and no residual arc has a negative reduced cost.
    fn shortest_paths(&mut self, sources: &[u32]) -> Option<usize> {
        let (sink, reach) = self.search(sources, true, |net, v| net.state.excess[v] < 0)?;
        self.shift_potentials(reach, -1);
        Some(sink)
    }

    /// Dijkstra's search backwards from every node short of flow, under reduced costs,
    /// until every node with excess is settled; then the potentials move so that each
    /// of those nodes' cheapest paths to a node short of flow costs nothing, and no
    /// residual arc has a negative reduced cost. False when some node with excess
    /// reaches no node short of flow (`deficits`).
    fn toward_deficits(&mut self, sources: &[u32], deficits: &[u32]) -> bool {
        let mut waiting = sources.len();
        let last = self.search(deficits, false, |net, v| {
            if net.state.excess[v] > 0 {
                waiting -= 1;
            }
            waiting == 0
        });
        let Some((_, reach)) = last else {
            return false;
        };
        self.shift_potentials(reach, 1);
        true
    }

    /// Dijkstra's search from `roots` along residual arcs leaving each node (`outward`)
    /// or, backwards, entering it, under reduced costs, until `done` says of a node just
    /// settled that it is the last needed: that node and its distance. Arcs of no
    /// reduced cost settle their far end at once, without the heap. Distances and the
    /// entry each node was reached by are left in `distance` and `parent`.
    fn search(
        &mut self,
        roots: &[u32],
        outward: bool,
        mut done: impl FnMut(&Self, usize) -> bool,
    ) -> Option<(usize, i64)> {
        self.distance.fill(i64::MAX);
        self.settled.fill(false);
        let mut heap = BinaryHeap::new();
        for &r in roots {
            self.distance[r as usize] = 0;
            self.parent[r as usize] = u32::MAX;
            heap.push(Reverse((0i64, r)));
        }
        // Nodes settled at the distance being searched, whose arcs are still to scan.
        let mut level: Vec<usize> = Vec::new();
        while let Some(Reverse((d, v))) = heap.pop() {
            let v = v as usize;
            if self.settled[v] || d > self.distance[v] {
                continue;
            }
            self.settled[v] = true;
            if done(self, v) {
                return Some((v, d));
            }
            level.push(v);
            while let Some(u) = level.pop() {
                for i in self.first[u]..self.first[u + 1] {
                    let entry = self.adjacent[i as usize];
                    let Some((w, step)) = self.residual(entry, outward) else {
                        continue;
                    };
                    if self.settled[w] {
                        continue;
                    }
                    debug_assert!(step >= 0, "a residual arc of negative reduced cost");
                    if step <= 0 {
                        self.distance[w] = d;
                        self.parent[w] = entry;
                        self.settled[w] = true;
                        if done(self, w) {
                            return Some((w, d));
                        }
                        level.push(w);
                    } else if d + step < self.distance[w] {
                        self.distance[w] = d + step;
                        self.parent[w] = entry;
                        heap.push(Reverse((d + step, w as u32)));
                    }
                }
            }
        }
        None
    }

    /// Moves each node's potential by its distance in the last search (`sign` −1 for
    /// a search along arcs, +1 for one against them), nodes not settled by `reach`:
    /// the paths the search found then cost nothing, and no residual arc has a negative
    /// reduced cost.
    fn shift_potentials(&mut self, reach: i64, sign: i64) {
        for v in 0..self.state.potential.len() {
            let d = if self.settled[v] {
                self.distance[v]
            } else {
                reach
            };
            self.state.potential[v] += sign * d;
        }
    }

    /// Sends as much as the path to `sink` allows, from the excess it starts at.
    fn augment(&mut self, sink: usize) {
        let mut amount = -self.state.excess[sink];
        let mut v = sink;
        while self.parent[v] != u32::MAX {
            let entry = self.parent[v];
            let arc = (entry / 2) as usize;
            let (room, back) = if entry % 2 == 0 {
                (
                    self.state.hi[arc] - self.state.flow[arc],
                    self.from[arc] as usize,
                )
            } else {
                (
                    self.state.flow[arc] - self.state.lo[arc],
                    self.to[arc] as usize,
                )
            };
            amount = amount.min(room);
            v = back;
        }
        amount = amount.min(self.state.excess[v]);
        let source = v;
        let mut v = sink;
        while self.parent[v] != u32::MAX {
            let entry = self.parent[v];
            let arc = (entry / 2) as usize;
            if entry % 2 == 0 {
                self.state.flow[arc] += amount;
                v = self.from[arc] as usize;
            } else {
                self.state.flow[arc] -= amount;
                v = self.to[arc] as usize;
            }
        }
        self.state.excess[source] -= amount;
        self.state.excess[sink] += amount;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The network's linear program, solved by `microlp`: the least cost of a flow
    /// that keeps `bounds`, or `None` where there is none. A network's program has an
    /// optimum in whole numbers, so the two solvers must agree exactly.
    fn by_program(
        supply: &[i64],
        arcs: &[(usize, usize, i64)],
        bounds: &[(i64, i64)],
    ) -> Option<f64> {
        use microlp::{ComparisonOp, OptimizationDirection, Problem};
        let mut problem = Problem::new(OptimizationDirection::Minimize);
        let vars: Vec<_> = arcs
            .iter()
            .zip(bounds)
            .map(|(&(.., cost), &(lo, hi))| problem.add_var(cost as f64, (lo as f64, hi as f64)))
            .collect();
        for (v, &s) in supply.iter().enumerate() {
            let terms: Vec<_> = arcs
                .iter()
                .zip(&vars)
                .filter_map(|(&(from, to, _), &x)| match (from == v, to == v) {
                    (true, false) => Some((x, 1.0)),
                    (false, true) => Some((x, -1.0)),
                    _ => None,
                })
                .collect();
            problem.add_constraint(terms.as_slice(), ComparisonOp::Eq, s as f64);
        }
        problem
            .solve()
            .ok()
            .and_then(|o| o.solution().map(|s| s.objective()))
    }

    proptest! {
        /// Random networks, solved and then re-solved after each of a series of
        /// bound changes (each from the last optimum that had a flow), against a
        /// linear-programming solver given the same network from scratch.
        #[test]
        fn re_solving_after_bound_changes_matches_a_linear_program(
            supplies in proptest::collection::vec(0i64..12, 3),
            demand_split in proptest::collection::vec(1i64..4, 1..=3),
            shifts in proptest::collection::vec(-60i64..60, 9),
            arcs in proptest::collection::vec((0usize..8, 0usize..8, 0i64..20, 0i64..15), 6..20),
            changes in proptest::collection::vec((0usize..64, 0i64..15, 0i64..15), 1..12),
            recosts in proptest::collection::vec(
                proptest::collection::vec((0usize..64, 0i64..30), 1..4),
                1..6,
            ),
        ) {
            // Nodes 0–2 supply, 3–5 demand (one to three of them: with fewer, the
            // searches run backwards from them), 6–7 pass flow on; 8 is a costly hub
            // that keeps the first problem feasible.
            let total: i64 = supplies.iter().sum();
            let parts: i64 = demand_split.iter().sum();
            let mut demand: Vec<i64> = demand_split.iter().map(|d| total * d / parts).collect();
            demand[0] += total - demand.iter().sum::<i64>();
            let mut supply = vec![0i64; 9];
            supply[..3].copy_from_slice(&supplies);
            for (i, d) in demand.iter().enumerate() {
                supply[3 + i] = -d;
            }
            let mut list: Vec<(usize, usize, i64)> = Vec::new();
            let mut bounds: Vec<(i64, i64)> = Vec::new();
            for &(from, to, cost, cap) in &arcs {
                if from != to {
                    list.push((from, to, cost));
                    bounds.push((0, cap));
                }
            }
            for (from, to) in (0..3).map(|s| (s, 8)).chain((3..6).map(|t| (8, t))) {
                list.push((from, to, 50));
                bounds.push((0, 100));
            }
            let mut b = Builder::default();
            for &s in &supply {
                b.node(s);
            }
            for (&(from, to, cost), &(lo, hi)) in list.iter().zip(&bounds) {
                b.arc(from, to, cost, lo, hi);
            }
            let mut net = b.build();
            // Any potentials bound the cost from below, with any flow.
            let mut shifted = net.clone();
            shifted.state.potential.copy_from_slice(&shifts);
            let expected = by_program(&supply, &list, &bounds).expect("the hub carries anything");
            prop_assert!(shifted.dual_bound() as f64 <= expected + 1e-6);
            prop_assert!(net.optimize());
            prop_assert!((net.cost() as f64 - expected).abs() < 1e-6);
            prop_assert_eq!(net.dual_bound(), net.cost());
            shifted.state.flow.clone_from(&net.state.flow);
            shifted.state.excess.clone_from(&net.state.excess);
            prop_assert!(shifted.dual_bound() as f64 <= expected + 1e-6);
            for &(which, a, c) in &changes {
                let arc = which % list.len();
                let before = net.state.clone();
                let old = bounds[arc];
                bounds[arc] = (a.min(c), a.max(c));
                net.set_bounds(arc, a.min(c), a.max(c));
                let solved = net.optimize();
                let expected = by_program(&supply, &list, &bounds);
                if solved {
                    let expected = expected.expect("a flow the program also finds");
                    prop_assert!((net.cost() as f64 - expected).abs() < 1e-6, "{} against {expected}", net.cost());
                    prop_assert_eq!(net.dual_bound(), net.cost());
                    for (x, &(lo, hi)) in bounds.iter().enumerate() {
                        prop_assert!(lo <= net.flow(x) && net.flow(x) <= hi);
                    }
                } else {
                    prop_assert!(expected.is_none(), "no flow found where one costs {expected:?}");
                    net.state = before;
                    bounds[arc] = old;
                }
            }
            // Then new costs, a few arcs at a time, each re-solved from the last optimum.
            for batch in &recosts {
                let changes: Vec<(Arc, i64)> =
                    batch.iter().map(|&(which, cost)| (which % list.len(), cost)).collect();
                for &(arc, cost) in &changes {
                    list[arc].2 = cost;
                }
                net.set_costs(&changes);
                prop_assert!(net.optimize(), "the flow before the change still fits");
                let expected = by_program(&supply, &list, &bounds).expect("a flow fits");
                prop_assert!((net.cost() as f64 - expected).abs() < 1e-6, "{} against {expected}", net.cost());
                prop_assert_eq!(net.dual_bound(), net.cost());
            }
        }
    }

    /// Two suppliers, two buyers, a cheap arc of little capacity: the optimum is known
    /// by hand, and tightening a bound moves the flow to the next cheapest way.
    #[test]
    fn a_small_network_is_solved_and_re_solved_after_a_bound_changes() {
        let mut b = Builder::default();
        let s1 = b.node(5);
        let s2 = b.node(5);
        let t1 = b.node(-4);
        let t2 = b.node(-6);
        let a = b.arc(s1, t1, 1, 0, 3);
        let b1 = b.arc(s1, t2, 4, 0, 10);
        let c = b.arc(s2, t1, 3, 0, 10);
        let d = b.arc(s2, t2, 2, 0, 10);
        let mut net = b.build();
        assert!(net.optimize());
        // a: 3 at 1; s1's other 2 to t2 at 4; t1's last 1 from s2 at 3; s2's 4 to t2 at 2.
        let flows = |net: &Network| [a, b1, c, d].map(|arc| net.flow(arc));
        assert_eq!(flows(&net), [3, 2, 1, 4]);
        assert_eq!(net.cost(), 3 + 8 + 3 + 8);
        net.set_bounds(a, 0, 1);
        assert!(net.optimize());
        assert_eq!(flows(&net), [1, 4, 3, 2]);
        assert_eq!(net.cost(), 1 + 16 + 9 + 4);
        // Loosened again, the first optimum returns.
        net.set_bounds(a, 0, 3);
        assert!(net.optimize());
        assert_eq!(net.cost(), 22);
        // A lower bound that cannot be met.
        net.set_bounds(a, 6, 6);
        assert!(!net.optimize());
    }
}
