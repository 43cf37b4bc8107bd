//! Allocation (docs/allocation.md): the instance and solution formats that any LP/MIP
//! solver can read, parsing with errors that name the JSON path, an independent
//! feasibility and cost checker, a valid lower bound, and the two baselines an optimizer
//! must beat — `ordered` (providers tried in a fixed preference order, as multi-cloud
//! launchers fail over today) and `cheapest-first` (greedy by price).
//!
//! The optimizer, [`exact`], first searches over each pool's room for each unit, on a
//! minimum-cost flow (`rooms`, `flow`), with share limits that bind priced into the
//! flow; where that search leaves part of its tree open, or costs are too large for
//! it, it states the problem as a mixed-integer program and solves it with `microlp`
//! (pure Rust branch and bound). Every answer is re-checked by [`check`].
//!
//! Pure: no IO.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

mod flow;
#[cfg(feature = "highs")]
mod highs;
mod rooms;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub needs: Vec<Need>,
    pub pools: Vec<Pool>,
    #[serde(default)]
    pub caps: Vec<Cap>,
    #[serde(default)]
    pub base_gpu_hours: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Need {
    pub id: String,
    pub gpus: u64,
    pub hours: f64,
    pub unit: u64,
    pub shortfall_penalty: f64,
    pub pools: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub id: String,
    pub provider: String,
    pub gpus: u64,
    pub price_per_gpu_hour: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    pub provider: String,
    pub max_share: f64,
}

/// Whether `own` usage keeps a share of at most `max_share` of `total`: the one cap rule
/// the engine, its invariants and the solver all judge by. Usage is a sum of products
/// in `f64`, so the bound is given a relative 1e-9 and an absolute 1e-6 (a millionth
/// of a GPU-hour or dollar) against rounding.
pub fn keeps_share(own: f64, max_share: f64, total: f64) -> bool {
    own <= max_share * total * (1.0 + 1e-9) + 1e-6
}

/// A concentration limit in the general form the engine needs:
/// `own + Σ w·x over the provider's pools ≤ max_share · (total + Σ w·x over all pools)`,
/// where `w` is a placement's GPU-hours, or its spend when `spend` is set. A cap of
/// docs/allocation.md is the case `own = base[provider]`, `total = Σ base`, counted in
/// GPU-hours.
#[derive(Debug, Clone, PartialEq)]
pub struct ShareLimit {
    pub provider: String,
    pub max_share: f64,
    pub spend: bool,
    /// What the provider already holds.
    pub own: f64,
    /// What every provider together already holds.
    pub total: f64,
}

impl ShareLimit {
    /// The amount one GPU of a need lasting `hours` at `price` adds.
    fn weight(&self, hours: f64, price: f64) -> f64 {
        if self.spend {
            hours * price
        } else {
            hours
        }
    }
}

/// Where a long search stands: the cheapest allocation found so far, if any, and the
/// lower bound it is measured against.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub best: Option<f64>,
    pub bound: f64,
    /// Nodes of the search tree solved so far.
    pub nodes: u64,
}

/// Told of a search's [`Progress`] every few seconds while it runs.
#[derive(Clone)]
pub struct Reporter(pub std::sync::Arc<dyn Fn(&Progress) + Send + Sync>);

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reporter")
    }
}

/// Whether this build can prove with HiGHS ([`Settings::highs`]).
pub const WITH_HIGHS: bool = cfg!(feature = "highs");

/// How [`solve`] should go about an instance.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The limits to keep, in place of the instance's own caps.
    pub limits: Vec<ShareLimit>,
    /// Providers to favour where that costs nothing (a deal's commitments).
    pub preferred: BTreeSet<String>,
    pub time_limit: Option<std::time::Duration>,
    /// Prove with branch and bound on the program, counting its work in nodes rather
    /// than seconds: at most this many nodes (and as many again for favouring
    /// preferred providers). The answer then depends on the instance alone, never on
    /// the machine's speed, and where the limit stops the proof it is `feasible` with
    /// the bound the open nodes prove. The engine decides this way. Without it the
    /// search over rooms runs first and the time limit governs.
    pub work_limit: Option<u64>,
    /// Prove with HiGHS in process (a build with the `highs` feature, [`WITH_HIGHS`])
    /// instead of the search over rooms, with cheapest first to fall back on. Ignored with
    /// `work_limit`, whose answer must not depend on the build.
    pub highs: bool,
    /// Told where the search stands every few seconds, where it takes that long.
    pub progress: Option<Reporter>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    pub need: String,
    pub pool: String,
    pub gpus: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shortfall {
    pub need: String,
    pub gpus: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Solution {
    pub allocations: Vec<Allocation>,
    pub shortfall: Vec<Shortfall>,
    pub cost: f64,
    pub status: Status,
    pub bound: f64,
}

impl Solution {
    /// Each allocation as the index of its pool in `instance.pools`, with its GPUs, in
    /// the order of the allocations: how a caller that built the instance maps the
    /// answer back to its own values without reading ids. An allocation naming no pool
    /// of `instance` is left out ([`check`] refuses such a solution).
    pub fn placements(&self, instance: &Instance) -> Vec<(usize, u64)> {
        let index: HashMap<&str, usize> = instance
            .pools
            .iter()
            .enumerate()
            .map(|(i, pool)| (pool.id.as_str(), i))
            .collect();
        self.allocations
            .iter()
            .filter_map(|a| Some((*index.get(a.pool.as_str())?, a.gpus)))
            .collect()
    }
}

/// What a solution is (docs/allocation.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Its cost equals the proven lower bound.
    Optimal,
    /// A bound is given and the gap is open.
    Feasible,
    Infeasible,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Optimal => "optimal",
            Status::Feasible => "feasible",
            Status::Infeasible => "infeasible",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An invalid instance: the JSON path at fault and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InstanceError {
    pub path: String,
    pub message: String,
}

fn invalid(path: impl Into<String>, message: impl Into<String>) -> InstanceError {
    InstanceError {
        path: path.into(),
        message: message.into(),
    }
}

fn non_negative(path: String, value: f64, what: &str) -> Result<(), InstanceError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("{what} must be a finite number ≥ 0, not {value}"),
        ))
    }
}

impl Instance {
    /// Parses and validates an instance; every error names its JSON path.
    pub fn parse(json: &[u8]) -> Result<Instance, InstanceError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let instance: Instance = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            invalid(
                if path == "." {
                    "$".to_owned()
                } else {
                    format!("$.{path}")
                },
                e.into_inner().to_string(),
            )
        })?;
        instance.validate()?;
        Ok(instance)
    }

    pub fn validate(&self) -> Result<(), InstanceError> {
        let mut pools: HashMap<&str, usize> = HashMap::new();
        for (i, pool) in self.pools.iter().enumerate() {
            if pools.insert(pool.id.as_str(), i).is_some() {
                return Err(invalid(
                    format!("$.pools[{i}].id"),
                    format!("pool `{}` is listed twice", pool.id),
                ));
            }
            non_negative(
                format!("$.pools[{i}].price_per_gpu_hour"),
                pool.price_per_gpu_hour,
                "a price",
            )?;
        }
        let mut needs: HashMap<&str, usize> = HashMap::new();
        for (i, need) in self.needs.iter().enumerate() {
            if needs.insert(need.id.as_str(), i).is_some() {
                return Err(invalid(
                    format!("$.needs[{i}].id"),
                    format!("need `{}` is listed twice", need.id),
                ));
            }
            non_negative(format!("$.needs[{i}].hours"), need.hours, "hours")?;
            non_negative(
                format!("$.needs[{i}].shortfall_penalty"),
                need.shortfall_penalty,
                "a shortfall penalty",
            )?;
            if need.unit == 0 || need.gpus % need.unit != 0 {
                return Err(invalid(
                    format!("$.needs[{i}].unit"),
                    format!(
                        "the unit must be positive and divide the need's {} GPUs, not {}",
                        need.gpus, need.unit
                    ),
                ));
            }
            for (j, pool) in need.pools.iter().enumerate() {
                if !pools.contains_key(pool.as_str()) {
                    return Err(invalid(
                        format!("$.needs[{i}].pools[{j}]"),
                        format!("no pool `{pool}`"),
                    ));
                }
            }
        }
        for (i, cap) in self.caps.iter().enumerate() {
            if !(cap.max_share > 0.0 && cap.max_share <= 1.0) {
                return Err(invalid(
                    format!("$.caps[{i}].max_share"),
                    format!("a share lies in (0, 1], not {}", cap.max_share),
                ));
            }
        }
        for (provider, base) in &self.base_gpu_hours {
            non_negative(
                format!("$.base_gpu_hours.{provider}"),
                *base,
                "base GPU-hours",
            )?;
        }
        Ok(())
    }

    /// The instance's caps in the general form.
    pub fn share_limits(&self) -> Vec<ShareLimit> {
        let total: f64 = self.base_gpu_hours.values().sum();
        self.caps
            .iter()
            .filter(|c| c.max_share < 1.0)
            .map(|c| ShareLimit {
                provider: c.provider.clone(),
                max_share: c.max_share,
                spend: false,
                own: self.base_gpu_hours.get(&c.provider).copied().unwrap_or(0.0),
                total,
            })
            .collect()
    }

    /// Each pool's index by its id.
    fn pool_index(&self) -> HashMap<&str, usize> {
        self.pools
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.as_str(), i))
            .collect()
    }

    /// True when no pool serves two needs: then, caps aside, each need is allocated on
    /// its own, and the cheapest pools first are its optimum.
    fn pools_unshared(&self) -> bool {
        let mut seen = std::collections::HashSet::new();
        self.needs
            .iter()
            .flat_map(|n| n.pools.iter())
            .all(|p| seen.insert(p.as_str()))
    }

    /// A valid lower bound on any solution's cost: each need at its cheapest option
    /// (a pool it may use, or shortfall), ignoring capacities, caps and units.
    pub fn lower_bound(&self) -> f64 {
        let price: HashMap<&str, f64> = self
            .pools
            .iter()
            .map(|p| (p.id.as_str(), p.price_per_gpu_hour))
            .collect();
        self.needs
            .iter()
            .map(|n| {
                let cheapest = n
                    .pools
                    .iter()
                    .map(|p| price[p.as_str()])
                    .fold(n.shortfall_penalty, f64::min);
                n.gpus as f64 * n.hours * cheapest
            })
            .sum()
    }
}

/// Why a solution is not feasible for its instance.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct Infeasible(pub String);

/// Checks every constraint of docs/allocation.md and returns the solution's cost.
pub fn check(instance: &Instance, allocations: &[Allocation]) -> Result<f64, Infeasible> {
    check_within(instance, &instance.share_limits(), allocations)
}

/// Checks units, needs, pools and the given limits (in place of the instance's caps),
/// and returns the solution's cost.
pub fn check_within(
    instance: &Instance,
    limits: &[ShareLimit],
    allocations: &[Allocation],
) -> Result<f64, Infeasible> {
    let pools: HashMap<&str, &Pool> = instance.pools.iter().map(|p| (p.id.as_str(), p)).collect();
    let needs: HashMap<&str, &Need> = instance.needs.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut per_need: HashMap<&str, u64> = HashMap::new();
    let mut per_pool: HashMap<&str, u64> = HashMap::new();
    let mut limit_own = vec![0.0; limits.len()];
    let mut limit_total = vec![0.0; limits.len()];
    let mut cost = 0.0;
    for a in allocations {
        let need = needs
            .get(a.need.as_str())
            .ok_or_else(|| Infeasible(format!("unknown need `{}`", a.need)))?;
        let pool = pools
            .get(a.pool.as_str())
            .ok_or_else(|| Infeasible(format!("unknown pool `{}`", a.pool)))?;
        if !need.pools.contains(&a.pool) {
            return Err(Infeasible(format!(
                "need `{}` may not use pool `{}`",
                a.need, a.pool
            )));
        }
        if a.gpus % need.unit != 0 {
            return Err(Infeasible(format!(
                "{} GPUs of need `{}` is not a multiple of its unit {}",
                a.gpus, a.need, need.unit
            )));
        }
        *per_need.entry(&a.need).or_default() += a.gpus;
        *per_pool.entry(&a.pool).or_default() += a.gpus;
        for (i, limit) in limits.iter().enumerate() {
            let amount = a.gpus as f64 * limit.weight(need.hours, pool.price_per_gpu_hour);
            limit_total[i] += amount;
            if pool.provider == limit.provider {
                limit_own[i] += amount;
            }
        }
        cost += a.gpus as f64 * need.hours * pool.price_per_gpu_hour;
    }
    for need in &instance.needs {
        let given = per_need.get(need.id.as_str()).copied().unwrap_or(0);
        if given > need.gpus {
            return Err(Infeasible(format!(
                "need `{}` gets {given} GPUs, more than its {}",
                need.id, need.gpus
            )));
        }
        cost += (need.gpus - given) as f64 * need.hours * need.shortfall_penalty;
    }
    for pool in &instance.pools {
        let used = per_pool.get(pool.id.as_str()).copied().unwrap_or(0);
        if used > pool.gpus {
            return Err(Infeasible(format!(
                "pool `{}` gives {used} GPUs, more than its {}",
                pool.id, pool.gpus
            )));
        }
    }
    for (i, limit) in limits.iter().enumerate() {
        let own = limit.own + limit_own[i];
        let bound = limit.max_share * (limit.total + limit_total[i]);
        if !keeps_share(own, limit.max_share, limit.total + limit_total[i]) {
            let what = if limit.spend { "of spend" } else { "GPU-hours" };
            return Err(Infeasible(format!(
                "provider `{}` holds {own:.1} {what}, above its cap of {bound:.1}",
                limit.provider
            )));
        }
    }
    Ok(cost)
}

/// The baseline strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Pools in the instance's order (the preference order), each giving what it has.
    Ordered,
    /// Cheapest pool first across all needs, while cheaper than shortfall.
    CheapestFirst,
}

/// Allocates with a baseline strategy. Allocations that would break a cap are cut back,
/// so the result keeps every cap unless the bases alone already break one, in which case
/// the baseline has no answer. The status is `optimal` only when the cost meets the
/// lower bound, which proves it; otherwise `feasible`.
pub fn baseline(instance: &Instance, strategy: Strategy) -> Result<Solution, Infeasible> {
    fill(
        instance,
        &instance.share_limits(),
        &BTreeSet::new(),
        strategy,
        BTreeMap::new(),
    )
}

/// Allocates with a baseline strategy under the given limits in place of the
/// instance's caps (the engine's `ordered` sourcing).
pub fn baseline_within(
    instance: &Instance,
    limits: &[ShareLimit],
    strategy: Strategy,
) -> Result<Solution, Infeasible> {
    fill(
        instance,
        limits,
        &BTreeSet::new(),
        strategy,
        BTreeMap::new(),
    )
}

/// Adds to the allocation `start` (GPUs by need and pool index) in the order of
/// `strategy`, as far as needs, pools and limits allow. At equal prices, pools of
/// `preferred` providers come first.
fn fill(
    instance: &Instance,
    limits: &[ShareLimit],
    preferred: &BTreeSet<String>,
    strategy: Strategy,
    start: BTreeMap<(usize, usize), u64>,
) -> Result<Solution, Infeasible> {
    let pool_index = instance.pool_index();
    // (need index, pool index) pairs in the order the strategy tries them.
    let mut pairs: Vec<(usize, usize)> = instance
        .needs
        .iter()
        .enumerate()
        .flat_map(|(n, need)| need.pools.iter().map(move |p| (n, p)))
        .map(|(n, p)| (n, pool_index[p.as_str()]))
        .collect();
    match strategy {
        Strategy::Ordered => pairs.sort_by_key(|&(n, p)| (n, p)),
        Strategy::CheapestFirst => pairs.sort_by(|&(n1, p1), &(n2, p2)| {
            let pool = |p: usize| &instance.pools[p];
            let favoured = |p: usize| !preferred.contains(&pool(p).provider);
            pool(p1)
                .price_per_gpu_hour
                .total_cmp(&pool(p2).price_per_gpu_hour)
                .then(favoured(p1).cmp(&favoured(p2)))
                .then((n1, p1).cmp(&(n2, p2)))
        }),
    }
    let limits: Vec<&ShareLimit> = limits.iter().filter(|l| l.max_share < 1.0).collect();
    let mut tally = Tally::of(instance, &limits, &start);
    let mut taken = start;
    for (n, p) in pairs {
        let need = &instance.needs[n];
        let pool = &instance.pools[p];
        // Supply no cheaper than shortfall is skipped, unless it is a preferred
        // provider's and costs no more.
        let dearer = match pool.price_per_gpu_hour.total_cmp(&need.shortfall_penalty) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => !preferred.contains(&pool.provider),
            std::cmp::Ordering::Greater => true,
        };
        if strategy == Strategy::CheapestFirst && dearer {
            continue;
        }
        let mut room = tally.left_need[n].min(tally.left_pool[p]);
        for (i, limit) in limits.iter().enumerate() {
            let weight = limit.weight(need.hours, pool.price_per_gpu_hour);
            if limit.provider != pool.provider || weight <= 0.0 {
                continue;
            }
            let headroom = (limit.max_share * tally.total[i] - tally.own[i])
                / (weight * (1.0 - limit.max_share));
            room = room.min((headroom + 1e-9).floor().max(0.0) as u64);
        }
        let gpus = room / need.unit * need.unit;
        if gpus == 0 {
            continue;
        }
        tally.place(instance, &limits, n, p, gpus);
        *taken.entry((n, p)).or_default() += gpus;
    }
    let allocations = to_allocations(instance, &taken);
    let given = given_per_need(instance, &taken);
    let cost = check_within(
        instance,
        &limits.into_iter().cloned().collect::<Vec<_>>(),
        &allocations,
    )?;
    let bound = instance.lower_bound();
    let proven = cost - bound <= 1e-9 * cost.abs().max(1.0);
    Ok(Solution {
        allocations,
        shortfall: shortfall(instance, &given),
        cost,
        status: if proven {
            Status::Optimal
        } else {
            Status::Feasible
        },
        bound,
    })
}

/// What is left of needs and pools, and what each limit counts, as a fill proceeds.
pub(crate) struct Tally {
    left_need: Vec<u64>,
    left_pool: Vec<u64>,
    own: Vec<f64>,
    total: Vec<f64>,
}

impl Tally {
    /// Nothing placed yet.
    pub(crate) fn new(instance: &Instance, limits: &[&ShareLimit]) -> Tally {
        Tally {
            left_need: instance.needs.iter().map(|n| n.gpus).collect(),
            left_pool: instance.pools.iter().map(|p| p.gpus).collect(),
            own: limits.iter().map(|l| l.own).collect(),
            total: limits.iter().map(|l| l.total).collect(),
        }
    }

    /// What `taken` (GPUs by need and pool index) places.
    pub(crate) fn of(
        instance: &Instance,
        limits: &[&ShareLimit],
        taken: &BTreeMap<(usize, usize), u64>,
    ) -> Tally {
        let mut tally = Tally::new(instance, limits);
        for (&(n, p), &gpus) in taken {
            tally.place(instance, limits, n, p, gpus);
        }
        tally
    }

    /// By how much what is placed breaks limit `i` (below zero: keeps it with room).
    pub(crate) fn over(&self, limits: &[&ShareLimit], i: usize) -> f64 {
        self.own[i] - limits[i].max_share * self.total[i]
    }

    /// Whether what is placed keeps every limit (the checker's tolerance).
    pub(crate) fn keeps(&self, limits: &[&ShareLimit]) -> bool {
        limits
            .iter()
            .enumerate()
            .all(|(i, limit)| keeps_share(self.own[i], limit.max_share, self.total[i]))
    }

    pub(crate) fn place(
        &mut self,
        instance: &Instance,
        limits: &[&ShareLimit],
        n: usize,
        p: usize,
        gpus: u64,
    ) {
        self.left_need[n] = self.left_need[n].saturating_sub(gpus);
        self.left_pool[p] = self.left_pool[p].saturating_sub(gpus);
        let pool = &instance.pools[p];
        for (i, limit) in limits.iter().enumerate() {
            let amount =
                gpus as f64 * limit.weight(instance.needs[n].hours, pool.price_per_gpu_hour);
            self.total[i] += amount;
            if pool.provider == limit.provider {
                self.own[i] += amount;
            }
        }
    }
}

/// GPUs by (need, pool) in a solver's answer.
fn taken_by(
    instance: &Instance,
    vars: &Vars,
    found: &microlp::Solution,
) -> BTreeMap<(usize, usize), u64> {
    in_whole_units(
        instance,
        vars.iter().map(|&(n, p, v)| ((n, p), found.var_value(v))),
    )
}

/// A program's values (units of a need from a pool, within the solver's tolerance of
/// whole numbers) as GPUs by need and pool index.
pub(crate) fn in_whole_units(
    instance: &Instance,
    values: impl IntoIterator<Item = ((usize, usize), f64)>,
) -> BTreeMap<(usize, usize), u64> {
    values
        .into_iter()
        .map(|((n, p), units)| ((n, p), units.round() as u64 * instance.needs[n].unit))
        .filter(|(_, gpus)| *gpus > 0)
        .collect()
}

/// `taken` as an answer, checked against the limits: `feasible`, with no bound yet.
pub(crate) fn checked(
    instance: &Instance,
    limits: &[ShareLimit],
    taken: &BTreeMap<(usize, usize), u64>,
) -> Result<Solution, Infeasible> {
    let allocations = to_allocations(instance, taken);
    let cost = check_within(instance, limits, &allocations)?;
    Ok(Solution {
        shortfall: shortfall(instance, &given_per_need(instance, taken)),
        allocations,
        cost,
        status: Status::Feasible,
        bound: f64::NEG_INFINITY,
    })
}

fn given_per_need(instance: &Instance, taken: &BTreeMap<(usize, usize), u64>) -> Vec<u64> {
    let mut given = vec![0; instance.needs.len()];
    for (&(n, _), &gpus) in taken {
        given[n] += gpus;
    }
    given
}

fn shortfall(instance: &Instance, given: &[u64]) -> Vec<Shortfall> {
    instance
        .needs
        .iter()
        .zip(given)
        .map(|(n, g)| Shortfall {
            need: n.id.clone(),
            gpus: n.gpus - g,
        })
        .collect()
}

/// Solves the instance exactly: integer multiples of each need's unit per pool, under
/// pool sizes and caps, at least cost. `optimal` when branch and bound finished the
/// proof within `time_limit`; otherwise `feasible` with the best lower bound known.
/// `infeasible` when the solver proved no allocation keeps every cap.
pub fn exact(
    instance: &Instance,
    time_limit: Option<std::time::Duration>,
) -> Result<Solution, Infeasible> {
    solve(
        instance,
        &Settings {
            limits: instance.share_limits(),
            preferred: BTreeSet::new(),
            time_limit,
            work_limit: None,
            highs: false,
            progress: None,
        },
    )
}

/// [`exact`] under the limits of `settings` in place of the instance's caps, favouring
/// its preferred providers among allocations of the least cost.
pub fn solve(instance: &Instance, settings: &Settings) -> Result<Solution, Infeasible> {
    let started = std::time::Instant::now();
    let limits: Vec<ShareLimit> = settings
        .limits
        .iter()
        .filter(|l| l.max_share < 1.0)
        .cloned()
        .collect();
    // Where needs share no pool, cheapest first is the optimum without limits; when
    // it keeps the limits too, nothing can cost less. The engine's sourcing rounds are
    // mostly of this kind, so they rarely need the search.
    if instance.pools_unshared() {
        let greedy = fill(
            instance,
            &[],
            &settings.preferred,
            Strategy::CheapestFirst,
            BTreeMap::new(),
        )?;
        if check_within(instance, &limits, &greedy.allocations).is_ok() {
            return Ok(Solution {
                status: Status::Optimal,
                bound: greedy.cost,
                ..greedy
            });
        }
    }
    let best = if settings.highs && settings.work_limit.is_none() {
        with_highs(instance, &limits, settings)?
    } else {
        least_cost(instance, &limits, settings)?
    };
    if best.status != Status::Optimal || settings.preferred.is_empty() {
        return Ok(best);
    }
    let mut options = microlp::SolveOptions::default();
    options.time_limit = settings
        .time_limit
        .map(|t| t.saturating_sub(started.elapsed()));
    options.node_limit = settings.work_limit;
    Ok(favour(
        instance,
        &limits,
        &settings.preferred,
        best,
        options,
    ))
}

/// The proof by HiGHS, with cheapest first (which keeps every limit where placing
/// nothing does) to fall back on.
#[cfg(feature = "highs")]
fn with_highs(
    instance: &Instance,
    limits: &[ShareLimit],
    settings: &Settings,
) -> Result<Solution, Infeasible> {
    let start = fill(
        instance,
        limits,
        &settings.preferred,
        Strategy::CheapestFirst,
        BTreeMap::new(),
    )
    .ok();
    highs::prove(instance, limits, start.as_ref(), settings.time_limit)
}

#[cfg(not(feature = "highs"))]
fn with_highs(_: &Instance, _: &[ShareLimit], _: &Settings) -> Result<Solution, Infeasible> {
    Err(Infeasible(
        "this build has no HiGHS: build with `--features highs` (needs cmake and a C++ compiler)"
            .into(),
    ))
}

fn least_cost(
    instance: &Instance,
    limits: &[ShareLimit],
    settings: &Settings,
) -> Result<Solution, Infeasible> {
    use microlp::SolutionStatus;
    let (preferred, time_limit, work_limit) = (
        &settings.preferred,
        settings.time_limit,
        settings.work_limit,
    );
    let started = std::time::Instant::now();
    let mut searched_best = None;
    // The search over rooms decides by the clock when to give way, so a proof counted
    // in nodes goes to the program alone.
    if work_limit.is_none() {
        // The search over unit rooms (with binding limits priced in): it may take all
        // the time, less a margin for checking its answer.
        let searched = rooms::search(
            instance,
            limits,
            preferred,
            time_limit.map(|t| started + t.mul_f64(0.95)),
            settings.progress.as_ref(),
        );
        if let Some(outcome) = searched {
            match outcome.best {
                Some(best) if outcome.finished => {
                    let cost = best.cost;
                    return Ok(cheapest_against(vec![best], cost));
                }
                Some(best) if outcome.out_of_time => {
                    let bound = outcome.bound.max(instance.lower_bound());
                    return Ok(cheapest_against(vec![best], bound));
                }
                // Stopped at an allocation that breaks a limit: the program goes on
                // from the best found.
                best => searched_best = best,
            }
        }
    }
    // The relaxation first: its cost bounds every allocation from below, and rounding
    // its answer down to whole units, then filling greedily, gives a good start.
    let (relaxation, lp_vars) = program(instance, limits, false, &Objective::Cost, None);
    let relaxation_started = std::time::Instant::now();
    let relaxed = match relaxation.solve() {
        Ok(outcome) => outcome.solution().cloned(),
        Err(microlp::Error::Infeasible) => return Ok(infeasible()),
        Err(error) => return Err(Infeasible(format!("the solver failed: {error}"))),
    };
    // How long a relaxation of this instance takes: the search starts with one, and
    // cannot be stopped before it is solved.
    let relaxing = relaxation_started.elapsed();
    // What the next step may take: what is left, less a margin for checking answers,
    // so that the whole call keeps to the limit.
    let remaining = || time_limit.map(|t| t.saturating_sub(started.elapsed()).mul_f64(0.8));
    let mut bound = instance.lower_bound();
    let mut candidates: Vec<Solution> = searched_best.into_iter().collect();
    if let Some(lp) = &relaxed {
        bound = bound.max(lp.objective() + constant_cost(instance));
        let mut start = BTreeMap::new();
        for &(n, p, v) in &lp_vars {
            let units = (lp.var_value(v) + 1e-9).floor() as u64;
            if units > 0 {
                start.insert((n, p), units * instance.needs[n].unit);
            }
        }
        if check_within(instance, limits, &to_allocations(instance, &start)).is_ok() {
            candidates
                .extend(fill(instance, limits, preferred, Strategy::CheapestFirst, start).ok());
        }
        // Another relaxation of the same size: started only where one fits in the time
        // left (the solver overshoots its own limit by a good part of a second on the
        // largest instances), and given up at the limit.
        let deadline = time_limit.map(|t| started + t);
        if remaining().is_none_or(|r| r > relaxing) {
            if let Some(start) = round_by_units(instance, limits, &lp_vars, lp, deadline) {
                candidates
                    .extend(fill(instance, limits, preferred, Strategy::CheapestFirst, start).ok());
            }
        }
    }
    if work_limit.is_some() {
        // Cheapest first from nothing keeps every limit where nothing placed does, so
        // there is always an answer to start the proof from.
        candidates.extend(
            fill(
                instance,
                limits,
                preferred,
                Strategy::CheapestFirst,
                BTreeMap::new(),
            )
            .ok(),
        );
    }
    if let (Some(nodes), false) = (work_limit, candidates.is_empty()) {
        return Ok(prove_within(instance, limits, candidates, bound, nodes));
    }
    let too_late = remaining().is_some_and(|r| r < relaxing.max(Duration::from_millis(50)));
    if too_late && !candidates.is_empty() {
        return Ok(cheapest_against(candidates, bound));
    }
    let (problem, vars) = program(instance, limits, true, &Objective::Cost, None);
    let proven = search(
        instance,
        limits,
        problem,
        vars,
        remaining(),
        SolutionStatus::Optimal,
    )?;
    if matches!(proven.status, Status::Infeasible | Status::Optimal) {
        return Ok(proven);
    }
    candidates.push(proven);
    Ok(cheapest_against(candidates, bound))
}

/// Branch and bound on the program for at most `nodes` nodes, started from the
/// cheapest of `candidates` (not empty), which the search can only improve on. The
/// bound is the larger of `bound` (the relaxation's) and what the open nodes prove.
/// No clock is read: the same instance gives the same answer on any machine.
fn prove_within(
    instance: &Instance,
    limits: &[ShareLimit],
    mut candidates: Vec<Solution>,
    mut bound: f64,
    nodes: u64,
) -> Solution {
    let (problem, vars) = program(instance, limits, true, &Objective::Cost, None);
    let start = candidates
        .iter()
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
        .expect("at least one candidate");
    let placed: HashMap<(&str, &str), u64> = start
        .allocations
        .iter()
        .map(|a| ((a.need.as_str(), a.pool.as_str()), a.gpus))
        .collect();
    let warm = vars
        .iter()
        .map(|&(n, p, v)| {
            let need = &instance.needs[n];
            let gpus = placed
                .get(&(need.id.as_str(), instance.pools[p].id.as_str()))
                .copied()
                .unwrap_or(0);
            (v, (gpus / need.unit) as f64)
        })
        .collect();
    let mut options = microlp::SolveOptions::default();
    options.node_limit = Some(nodes);
    options.warm_start = Some(warm);
    if let Ok(outcome) = problem.solve_with(options) {
        let stats = outcome.stats();
        if let Some(found) = outcome.solution() {
            if let Ok(answer) = checked(instance, limits, &taken_by(instance, &vars, found)) {
                if found.status() == microlp::SolutionStatus::Optimal {
                    bound = bound.max(answer.cost);
                }
                candidates.push(Solution { bound, ..answer });
            }
        }
        if let Some(proven) = stats.best_bound {
            bound = bound.max(proven + constant_cost(instance));
        }
    }
    cheapest_against(candidates, bound)
}

/// GPUs of each pool set aside for the needs of each unit: (pool, unit) → GPUs.
type UnitRooms = BTreeMap<(usize, u64), u64>;

/// Rounds the relaxation by shares of pools rather than need by need. Where each pool's
/// GPUs are shared out among units in whole units (the relaxation's share of each unit
/// above one, rounded down; the rest to single GPUs), what is left is one
/// transportation problem per unit, whose relaxation has an optimum in whole units.
/// So solving the relaxation again under those shares and rounding it down (a no-op
/// unless a limit binds) gives an allocation that gives up only the rounding of the
/// shares: far less, on the benchmark's instances, than rounding each need's units.
fn round_by_units(
    instance: &Instance,
    limits: &[ShareLimit],
    lp_vars: &Vars,
    lp: &microlp::Solution,
    deadline: Option<std::time::Instant>,
) -> Option<BTreeMap<(usize, usize), u64>> {
    let mut shares: BTreeMap<(usize, u64), f64> = BTreeMap::new();
    for &(n, p, v) in lp_vars {
        let unit = instance.needs[n].unit;
        *shares.entry((p, unit)).or_default() += lp.var_value(v) * unit as f64;
    }
    let mut rooms: UnitRooms = BTreeMap::new();
    let mut left: Vec<u64> = instance.pools.iter().map(|p| p.gpus).collect();
    for (&(p, unit), &gpus) in shares.iter().filter(|((_, unit), _)| *unit > 1) {
        let room = (((gpus + 1e-6) / unit as f64).floor().max(0.0) as u64 * unit).min(left[p]);
        left[p] -= room;
        rooms.insert((p, unit), room);
    }
    for &(p, unit) in shares.keys().filter(|(_, unit)| *unit == 1) {
        rooms.insert((p, unit), left[p]);
    }
    let (problem, vars) = program(instance, limits, false, &Objective::Cost, Some(&rooms));
    let mut options = microlp::SolveOptions::default();
    // A margin for rounding, filling and checking the answer after it.
    options.time_limit = deadline.map(|d| {
        d.saturating_duration_since(std::time::Instant::now())
            .mul_f64(0.8)
    });
    let outcome = problem.solve_with(options).ok()?;
    let solved = outcome.solution()?;
    let mut start = BTreeMap::new();
    for &(n, p, v) in &vars {
        let units = (solved.var_value(v) + 1e-6).floor() as u64;
        if units > 0 {
            start.insert((n, p), units * instance.needs[n].unit);
        }
    }
    check_within(instance, limits, &to_allocations(instance, &start)).ok()?;
    Some(start)
}

/// The cheapest of `candidates` (not empty), `optimal` where its cost meets `bound`.
fn cheapest_against(candidates: Vec<Solution>, bound: f64) -> Solution {
    let mut best = candidates
        .into_iter()
        .min_by(|a, b| a.cost.total_cmp(&b.cost))
        .expect("at least one candidate");
    let met = best.cost - bound <= 1e-9 * best.cost.abs().max(1.0);
    best.status = if met {
        Status::Optimal
    } else {
        Status::Feasible
    };
    best.bound = if met { best.cost } else { bound };
    best
}

/// Among allocations costing no more than the optimum `best`, finds one giving the most
/// GPU-hours to preferred providers. Keeps `best` when that search fails or runs out of
/// time.
fn favour(
    instance: &Instance,
    limits: &[ShareLimit],
    preferred: &BTreeSet<String>,
    best: Solution,
    options: microlp::SolveOptions,
) -> Solution {
    let could_gain = instance
        .pools
        .iter()
        .any(|p| preferred.contains(&p.provider));
    if !could_gain {
        return best;
    }
    let max_cost = best.cost - constant_cost(instance) + 1e-9 * best.cost.abs().max(1.0);
    let objective = Objective::Favour {
        preferred,
        max_cost,
    };
    let (problem, vars) = program(instance, limits, true, &objective, None);
    let Ok(outcome) = problem.solve_with(options) else {
        return best;
    };
    let Some(found) = outcome.solution() else {
        return best;
    };
    match checked(instance, limits, &taken_by(instance, &vars, found)) {
        Ok(answer) if answer.cost <= best.cost + 1e-9 * best.cost.abs().max(1.0) => Solution {
            status: best.status,
            bound: best.bound,
            ..answer
        },
        _ => best,
    }
}

fn infeasible() -> Solution {
    Solution {
        allocations: Vec::new(),
        shortfall: Vec::new(),
        cost: f64::INFINITY,
        status: Status::Infeasible,
        bound: f64::INFINITY,
    }
}

/// The cost of leaving every need entirely short; the programs price placement against it.
fn constant_cost(instance: &Instance) -> f64 {
    instance
        .needs
        .iter()
        .map(|n| n.gpus as f64 * n.hours * n.shortfall_penalty)
        .sum()
}

fn to_allocations(instance: &Instance, taken: &BTreeMap<(usize, usize), u64>) -> Vec<Allocation> {
    taken
        .iter()
        .filter(|(_, &gpus)| gpus > 0)
        .map(|(&(n, p), &gpus)| Allocation {
            need: instance.needs[n].id.clone(),
            pool: instance.pools[p].id.clone(),
            gpus,
        })
        .collect()
}

/// The least cost of the linear relaxation (GPUs need not come in units): a lower bound
/// on every allocation's cost, far tighter than [`Instance::lower_bound`] when capacity
/// or caps bind. `None` when the relaxation is infeasible or the solver fails.
pub fn relaxation_bound(instance: &Instance) -> Option<f64> {
    let (problem, _) = program(
        instance,
        &instance.share_limits(),
        false,
        &Objective::Cost,
        None,
    );
    let outcome = problem.solve().ok()?;
    outcome
        .solution()
        .map(|s| s.objective() + constant_cost(instance))
}

type Vars = Vec<(usize, usize, microlp::Variable)>;

/// What a program minimises.
pub(crate) enum Objective<'a> {
    /// The cost of placement, less the shortfall it saves.
    Cost,
    /// GPU-hours away from preferred providers, at a cost (as [`Objective::Cost`]
    /// counts it) of at most `max_cost`.
    Favour {
        preferred: &'a BTreeSet<String>,
        max_cost: f64,
    },
}

/// The allocation program in solver-neutral form: one column per (need, pool) counting
/// units of the need, and rows of `Σ coefficient · column ≤ bound`.
pub(crate) struct Program {
    /// (need, pool, objective coefficient, most units).
    pub(crate) columns: Vec<(usize, usize, f64, u64)>,
    /// (terms by column index, upper bound).
    pub(crate) rows: Vec<(Vec<(usize, f64)>, f64)>,
}

impl Program {
    pub(crate) fn new(
        instance: &Instance,
        limits: &[ShareLimit],
        objective: &Objective,
        rooms: Option<&UnitRooms>,
    ) -> Program {
        let pool_index = instance.pool_index();
        // Shortfall is priced by difference: placing a GPU saves its penalty.
        let unit_cost = |n: usize, p: usize| {
            let need = &instance.needs[n];
            need.unit as f64
                * need.hours
                * (instance.pools[p].price_per_gpu_hour - need.shortfall_penalty)
        };
        let mut columns = Vec::new();
        for (n, need) in instance.needs.iter().enumerate() {
            for pool_id in &need.pools {
                let p = pool_index[pool_id.as_str()];
                let pool = &instance.pools[p];
                let most = (need.gpus.min(pool.gpus) / need.unit).min(i32::MAX as u64);
                let coefficient = match objective {
                    Objective::Cost => unit_cost(n, p),
                    Objective::Favour { preferred, .. } => {
                        if preferred.contains(&pool.provider) {
                            -(need.unit as f64 * need.hours)
                        } else {
                            0.0
                        }
                    }
                };
                columns.push((n, p, coefficient, most));
            }
        }
        let mut rows = Vec::new();
        if let Objective::Favour { max_cost, .. } = objective {
            let terms = (columns.iter().enumerate())
                .map(|(c, &(n, p, _, _))| (c, unit_cost(n, p)))
                .collect();
            rows.push((terms, *max_cost));
        }
        // Rows gathered in one pass over the columns (a pass per row is quadratic).
        let mut by_need: Vec<Vec<(usize, f64)>> = vec![Vec::new(); instance.needs.len()];
        let mut by_pool: BTreeMap<(usize, u64), Vec<(usize, f64)>> = BTreeMap::new();
        for (c, &(n, p, _, _)) in columns.iter().enumerate() {
            let unit = instance.needs[n].unit;
            by_need[n].push((c, unit as f64));
            // Without rooms, a pool is one row: every unit under one key.
            let class = if rooms.is_some() { unit } else { 0 };
            by_pool
                .entry((p, class))
                .or_default()
                .push((c, unit as f64));
        }
        for (n, terms) in by_need.into_iter().enumerate() {
            if !terms.is_empty() {
                rows.push((terms, instance.needs[n].gpus as f64));
            }
        }
        for ((p, unit), terms) in by_pool {
            // With rooms, the pool's GPUs are shared out by unit: each unit's needs keep
            // to their room.
            let room = match rooms {
                None => instance.pools[p].gpus,
                Some(rooms) => rooms.get(&(p, unit)).copied().unwrap_or(0),
            };
            rows.push((terms, room as f64));
        }
        for limit in limits.iter().filter(|l| l.max_share < 1.0) {
            let terms: Vec<_> = (columns.iter().enumerate())
                .map(|(c, &(n, p, _, _))| {
                    let need = &instance.needs[n];
                    let pool = &instance.pools[p];
                    let own = if pool.provider == limit.provider {
                        1.0
                    } else {
                        0.0
                    };
                    let weight = limit.weight(need.hours, pool.price_per_gpu_hour);
                    (c, need.unit as f64 * weight * (own - limit.max_share))
                })
                .filter(|(_, c)| *c != 0.0)
                .collect();
            if !terms.is_empty() {
                rows.push((terms, limit.max_share * limit.total - limit.own));
            }
        }
        Program { columns, rows }
    }
}

/// The allocation program for `microlp`, integer or (for the relaxation) continuous.
fn program(
    instance: &Instance,
    limits: &[ShareLimit],
    integer: bool,
    objective: &Objective,
    rooms: Option<&UnitRooms>,
) -> (microlp::Problem, Vars) {
    use microlp::{ComparisonOp, OptimizationDirection, Problem};
    let written = Program::new(instance, limits, objective, rooms);
    let mut problem = Problem::new(OptimizationDirection::Minimize);
    let vars: Vars = (written.columns.iter())
        .map(|&(n, p, coefficient, most)| {
            let var = if integer {
                problem.add_integer_var(coefficient, (0, most as i32))
            } else {
                problem.add_var(coefficient, (0.0, most as f64))
            };
            (n, p, var)
        })
        .collect();
    for (terms, bound) in &written.rows {
        let terms: Vec<_> = terms.iter().map(|&(c, k)| (vars[c].2, k)).collect();
        problem.add_constraint(terms.as_slice(), ComparisonOp::Le, *bound);
    }
    (problem, vars)
}

fn search(
    instance: &Instance,
    limits: &[ShareLimit],
    problem: microlp::Problem,
    vars: Vars,
    time_limit: Option<std::time::Duration>,
    proven: microlp::SolutionStatus,
) -> Result<Solution, Infeasible> {
    let mut options = microlp::SolveOptions::default();
    options.time_limit = time_limit;
    let outcome = match problem.solve_with(options) {
        Ok(outcome) => outcome,
        Err(microlp::Error::Infeasible) => return Ok(infeasible()),
        Err(error) => return Err(Infeasible(format!("the solver failed: {error}"))),
    };
    // Without a proof the answer is the best allocation known: the solver's
    // incumbent or a baseline, whichever costs less.
    let best_baseline = || {
        [Strategy::CheapestFirst, Strategy::Ordered]
            .into_iter()
            .filter_map(|s| fill(instance, limits, &BTreeSet::new(), s, BTreeMap::new()).ok())
            .min_by(|a, b| a.cost.total_cmp(&b.cost))
            .map(|mut s| {
                s.status = Status::Feasible;
                s
            })
    };
    let Some(found) = outcome.solution() else {
        return best_baseline().ok_or_else(|| {
            Infeasible(
                "the time limit passed before any allocation within the caps was found".into(),
            )
        });
    };
    let answer = checked(instance, limits, &taken_by(instance, &vars, found))?;
    let optimal = found.status() == proven;
    let solved = Solution {
        status: if optimal {
            Status::Optimal
        } else {
            Status::Feasible
        },
        bound: if optimal {
            answer.cost
        } else {
            instance.lower_bound()
        },
        ..answer
    };
    if !optimal {
        if let Some(better) = best_baseline().filter(|b| b.cost < solved.cost) {
            return Ok(better);
        }
    }
    Ok(solved)
}
