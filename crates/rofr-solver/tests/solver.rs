//! Instances and baselines: paths in errors, the checker, the bound, and baselines
//! against brute-force optima on small instances.

use proptest::prelude::*;
use rofr_solver::{baseline, check, exact, Allocation, Instance, Strategy as Baseline};

const EXAMPLE: &str = r#"{
  "needs": [ { "id": "n1", "gpus": 64, "hours": 720, "unit": 8, "shortfall_penalty": 50.0, "pools": ["oci-a"] } ],
  "pools": [ { "id": "oci-a", "provider": "oci", "gpus": 512, "price_per_gpu_hour": 3.9 } ],
  "caps": [ { "provider": "oci", "max_share": 0.4 } ],
  "base_gpu_hours": { "oci": 100000, "azure": 800000 }
}"#;

#[test]
fn the_product_example_costs_what_the_product_says_and_is_proven_optimal() {
    let instance = Instance::parse(EXAMPLE.as_bytes()).unwrap();
    for strategy in [Baseline::Ordered, Baseline::CheapestFirst] {
        let solution = baseline(&instance, strategy).unwrap();
        assert_eq!(solution.cost, 179712.0);
        assert_eq!(
            solution.status,
            rofr_solver::Status::Optimal,
            "the cost meets the lower bound"
        );
        assert_eq!(
            solution.allocations,
            vec![Allocation {
                need: "n1".into(),
                pool: "oci-a".into(),
                gpus: 64
            }]
        );
    }
}

#[test]
fn a_binding_cap_and_rounding_to_units_are_solved_exactly() {
    // Two pools: a cheap one whose provider is capped at 30%, a dear one; units of 8.
    let text = r#"{
      "needs": [ { "id": "n1", "gpus": 64, "hours": 10, "unit": 8, "shortfall_penalty": 100.0, "pools": ["cheap", "dear"] } ],
      "pools": [ { "id": "cheap", "provider": "a", "gpus": 64, "price_per_gpu_hour": 1.0 },
                 { "id": "dear", "provider": "b", "gpus": 64, "price_per_gpu_hour": 5.0 } ],
      "caps": [ { "provider": "a", "max_share": 0.3 } ],
      "base_gpu_hours": { "b": 100 }
    }"#;
    let instance = Instance::parse(text.as_bytes()).unwrap();
    let solved = exact(&instance, None).unwrap();
    // a's GPU-hours 10·x ≤ 0.3·(100 + 640) = 222 → x ≤ 22.2 → 16 GPUs in units of 8.
    let cheap: u64 = solved
        .allocations
        .iter()
        .filter(|a| a.pool == "cheap")
        .map(|a| a.gpus)
        .sum();
    assert_eq!(cheap, 16);
    assert_eq!(solved.cost, 16.0 * 10.0 * 1.0 + 48.0 * 10.0 * 5.0);
    assert_eq!(solved.status, rofr_solver::Status::Optimal);
    // By the pools' indexes: cheap is pool 0, dear pool 1.
    let mut placed = solved.placements(&instance);
    placed.sort_unstable();
    assert_eq!(placed, [(0, 16), (1, 48)]);
}

#[test]
fn a_pool_shared_by_units_of_one_and_eight_is_rounded_to_the_optimum() {
    // The cheap pool is worth more to b (a unit of 1) than to a (a unit of 8), so the
    // relaxation gives b 4 GPUs there and a the other 4 — half a unit. Whole units
    // leave a choice: a all on the dear pool (24 + 8 = 32), or a on the cheap pool
    // and b short (8 + 80 = 88).
    let text = r#"{
      "needs": [ { "id": "a", "gpus": 8, "hours": 1, "unit": 8, "shortfall_penalty": 10.0, "pools": ["cheap", "dear"] },
                 { "id": "b", "gpus": 4, "hours": 2, "unit": 1, "shortfall_penalty": 10.0, "pools": ["cheap"] } ],
      "pools": [ { "id": "cheap", "provider": "x", "gpus": 8, "price_per_gpu_hour": 1.0 },
                 { "id": "dear", "provider": "y", "gpus": 8, "price_per_gpu_hour": 3.0 } ]
    }"#;
    let instance = Instance::parse(text.as_bytes()).unwrap();
    assert_eq!(rofr_solver::relaxation_bound(&instance), Some(24.0));
    let solved = exact(&instance, None).unwrap();
    assert_eq!(solved.cost, 32.0);
    assert_eq!(solved.status, rofr_solver::Status::Optimal);
    assert_eq!(solved.bound, 32.0);
    let mut given: Vec<(String, String, u64)> = solved
        .allocations
        .iter()
        .map(|a| (a.need.clone(), a.pool.clone(), a.gpus))
        .collect();
    given.sort();
    assert_eq!(
        given,
        vec![
            ("a".into(), "dear".into(), 8),
            ("b".into(), "cheap".into(), 4)
        ]
    );
}

#[test]
fn a_limit_that_rounding_breaks_is_still_solved_to_a_proven_optimum() {
    // c1 holds 100 of 100 in spend and may hold at most 20%: 400 more must be placed
    // elsewhere. The relaxation places 720 and keeps the limit, but of its two roundings
    // of p2's room for units of 8, one (n1 on p2, n0 short: 160) breaks it. The optimum
    // is n0 on p2 (120) and n1 on p1 (1,040).
    let text = r#"{
      "needs": [ { "id": "n0", "gpus": 4, "hours": 15, "unit": 4, "shortfall_penalty": 11.0, "pools": ["p0", "p2"] },
                 { "id": "n1", "gpus": 8, "hours": 10, "unit": 8, "shortfall_penalty": 14.0, "pools": ["p1", "p2"] } ],
      "pools": [ { "id": "p0", "provider": "c0", "gpus": 0, "price_per_gpu_hour": 1.0 },
                 { "id": "p1", "provider": "c0", "gpus": 8, "price_per_gpu_hour": 13.0 },
                 { "id": "p2", "provider": "c0", "gpus": 8, "price_per_gpu_hour": 2.0 } ]
    }"#;
    let instance = Instance::parse(text.as_bytes()).unwrap();
    let settings = rofr_solver::Settings {
        limits: vec![rofr_solver::ShareLimit {
            provider: "c1".into(),
            max_share: 0.2,
            spend: true,
            own: 100.0,
            total: 100.0,
        }],
        ..Default::default()
    };
    let solved = rofr_solver::solve(&instance, &settings).unwrap();
    assert_eq!(solved.status, rofr_solver::Status::Optimal);
    assert_eq!(solved.cost, 1160.0);
}

#[test]
fn shortfall_is_chosen_where_it_costs_less_than_supply() {
    let text = EXAMPLE.replace(
        r#""shortfall_penalty": 50.0"#,
        r#""shortfall_penalty": 2.0"#,
    );
    let instance = Instance::parse(text.as_bytes()).unwrap();
    let solved = exact(&instance, None).unwrap();
    assert!(solved.allocations.is_empty());
    assert_eq!(solved.cost, 64.0 * 720.0 * 2.0);
}

#[test]
fn invalid_instances_name_the_json_path() {
    let cases = [
        (
            EXAMPLE.replace(r#""pools": ["oci-a"]"#, r#""pools": ["cw-b"]"#),
            "$.needs[0].pools[0]",
        ),
        (
            EXAMPLE.replace(r#""gpus": 64"#, r#""gpus": -64"#),
            "$.needs[0].gpus",
        ),
        (
            EXAMPLE.replace(r#""unit": 8"#, r#""unit": 7"#),
            "$.needs[0].unit",
        ),
        (
            EXAMPLE.replace(r#""max_share": 0.4"#, r#""max_share": 1.5"#),
            "$.caps[0].max_share",
        ),
        (
            EXAMPLE.replace(r#""max_share": 0.4"#, r#""max_share": 0"#),
            "$.caps[0].max_share",
        ),
        (
            EXAMPLE.replace(
                r#""price_per_gpu_hour": 3.9"#,
                r#""price_per_gpu_hour": -3.9"#,
            ),
            "$.pools[0].price_per_gpu_hour",
        ),
        (
            EXAMPLE.replace(r#""hours": 720"#, r#""hours": 720, "colour": 1"#),
            "$.needs[0]",
        ),
    ];
    for (text, path) in cases {
        let error = Instance::parse(text.as_bytes()).unwrap_err();
        assert!(error.path.starts_with(path), "{path}: {error}");
    }
}

#[test]
fn the_checker_refuses_each_broken_constraint() {
    let instance = Instance::parse(EXAMPLE.as_bytes()).unwrap();
    let alloc = |gpus| {
        vec![Allocation {
            need: "n1".into(),
            pool: "oci-a".into(),
            gpus,
        }]
    };
    assert!(
        check(&instance, &alloc(60)).is_err(),
        "not a multiple of the unit"
    );
    assert!(check(&instance, &alloc(72)).is_err(), "more than the need");
    let capped = EXAMPLE.replace(r#""max_share": 0.4"#, r#""max_share": 0.12"#);
    let capped = Instance::parse(capped.as_bytes()).unwrap();
    assert!(check(&capped, &alloc(64)).is_err(), "breaks the cap");
    let solution = baseline(&capped, Baseline::CheapestFirst).unwrap();
    assert!(
        solution.allocations.iter().map(|a| a.gpus).sum::<u64>() < 64,
        "the baseline cuts back under the cap"
    );
    assert_eq!(solution.status, rofr_solver::Status::Feasible);
}

fn instance_strategy() -> impl Strategy<Value = Instance> {
    let need = (
        prop::sample::select(vec![4u64, 8]),
        1u64..4,
        1u32..50,
        prop::sample::subsequence(vec![0usize, 1, 2], 1..=3),
        1u32..20,
    )
        .prop_map(|(unit, units, hours, pools, penalty)| {
            (unit, unit * units, hours, pools, penalty)
        });
    (
        prop::collection::vec(need, 1..=2),
        prop::collection::vec((0u64..20, 1u32..15, 0usize..2), 3),
        prop::option::of(1u32..10),
    )
        .prop_map(|(needs, pools, cap)| {
            let json = serde_json::json!({
                "needs": needs.iter().enumerate().map(|(i, (unit, gpus, hours, ps, penalty))| serde_json::json!({
                    "id": format!("n{i}"), "gpus": gpus, "hours": hours, "unit": unit,
                    "shortfall_penalty": *penalty as f64, "pools": ps.iter().map(|p| format!("p{p}")).collect::<Vec<_>>()
                })).collect::<Vec<_>>(),
                "pools": pools.iter().enumerate().map(|(i, (gpus, price, provider))| serde_json::json!({
                    "id": format!("p{i}"), "provider": format!("c{provider}"), "gpus": gpus, "price_per_gpu_hour": *price as f64
                })).collect::<Vec<_>>(),
                "caps": cap.map(|c| vec![serde_json::json!({"provider": "c0", "max_share": c as f64 / 10.0})]).unwrap_or_default(),
                "base_gpu_hours": {"c1": 200.0},
            });
            Instance::parse(json.to_string().as_bytes()).unwrap()
        })
}

/// The cheapest feasible allocation, by trying every one.
fn brute_force(instance: &Instance) -> f64 {
    brute_force_with(instance, |allocations| check(instance, allocations).ok()).0
}

/// The least cost over every allocation that `cost` accepts, and the most GPU-hours
/// that any allocation of that cost gives to pools of provider `c0` (a commitment is
/// counted in GPU-hours or spend, so the solver favours GPU-hours, not GPUs).
fn brute_force_with(
    instance: &Instance,
    cost: impl Fn(&[Allocation]) -> Option<f64>,
) -> (f64, f64) {
    let pairs: Vec<(usize, String, u64)> = instance
        .needs
        .iter()
        .enumerate()
        .flat_map(|(n, need)| need.pools.iter().map(move |p| (n, p.clone(), need.unit)))
        .collect();
    let mut best = f64::INFINITY;
    let mut favoured = 0.0f64;
    let mut counts = vec![0u64; pairs.len()];
    loop {
        let allocations: Vec<Allocation> = pairs
            .iter()
            .zip(&counts)
            .filter(|(_, c)| **c > 0)
            .map(|((n, p, unit), c)| Allocation {
                need: instance.needs[*n].id.clone(),
                pool: p.clone(),
                gpus: c * unit,
            })
            .collect();
        if let Some(cost) = cost(&allocations) {
            let to_c0 = gpu_hours_to_c0(instance, &allocations);
            if cost < best - 1e-6 {
                (best, favoured) = (cost, to_c0);
            } else if (cost - best).abs() <= 1e-6 {
                favoured = favoured.max(to_c0);
            }
        }
        // Next combination: each pair takes 0..=gpus/unit units of its need.
        let mut i = 0;
        loop {
            if i == pairs.len() {
                return (best, favoured);
            }
            let max = instance.needs[pairs[i].0].gpus / pairs[i].2;
            if counts[i] < max {
                counts[i] += 1;
                break;
            }
            counts[i] = 0;
            i += 1;
        }
    }
}

/// The GPU-hours that `allocations` give to pools of provider `c0`.
fn gpu_hours_to_c0(instance: &Instance, allocations: &[Allocation]) -> f64 {
    allocations
        .iter()
        .filter(|a| provider_of(instance, &a.pool) == "c0")
        .map(|a| {
            let need = instance.needs.iter().find(|n| n.id == a.need).unwrap();
            a.gpus as f64 * need.hours
        })
        .sum()
}

fn provider_of<'a>(instance: &'a Instance, pool: &str) -> &'a str {
    let pool = instance.pools.iter().find(|p| p.id == pool).unwrap();
    &pool.provider
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_exact_solver_finds_the_brute_force_optimum_and_baselines_never_beat_it(instance in instance_strategy()) {
        let optimum = brute_force(&instance);
        let bound = instance.lower_bound();
        let solved = exact(&instance, None).unwrap();
        prop_assert_eq!(solved.status, rofr_solver::Status::Optimal);
        prop_assert!((solved.cost - optimum).abs() < 1e-6, "exact {} but the optimum is {optimum}", solved.cost);
        prop_assert_eq!(check(&instance, &solved.allocations).unwrap(), solved.cost);
        prop_assert!(bound <= optimum + 1e-6, "bound {bound} above the optimum {optimum}");
        if let Some(relaxed) = rofr_solver::relaxation_bound(&instance) {
            prop_assert!(relaxed <= optimum + 1e-6, "relaxation {relaxed} above the optimum {optimum}");
        }
        for strategy in [Baseline::Ordered, Baseline::CheapestFirst] {
            if let Ok(solution) = baseline(&instance, strategy) {
                prop_assert_eq!(check(&instance, &solution.allocations).unwrap(), solution.cost);
                prop_assert!(solution.cost + 1e-6 >= optimum, "{strategy:?} {} below the optimum {optimum}", solution.cost);
                if solution.status == rofr_solver::Status::Optimal {
                    prop_assert!((solution.cost - optimum).abs() < 1e-6, "claimed optimal but the optimum is {optimum}");
                }
            }
        }
    }
}

/// [`exact`]'s settings with `change` applied.
fn settings_with(
    instance: &Instance,
    change: impl FnOnce(&mut rofr_solver::Settings),
) -> rofr_solver::Settings {
    let mut settings = rofr_solver::Settings {
        limits: instance.share_limits(),
        ..Default::default()
    };
    change(&mut settings);
    settings
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// The proof counted in nodes (the engine's) finds the brute-force optimum and says
    /// so, and gives the same answer twice; so does HiGHS where it is built in.
    #[test]
    fn a_proof_counted_in_nodes_finds_the_brute_force_optimum(instance in instance_strategy()) {
        let optimum = brute_force(&instance);
        let counted = settings_with(&instance, |s| s.work_limit = Some(2_000));
        let solved = rofr_solver::solve(&instance, &counted).unwrap();
        prop_assert_eq!(solved.status, rofr_solver::Status::Optimal);
        prop_assert!((solved.cost - optimum).abs() < 1e-6, "counted {} but the optimum is {optimum}", solved.cost);
        prop_assert_eq!(&rofr_solver::solve(&instance, &counted).unwrap(), &solved);
        if rofr_solver::WITH_HIGHS {
            let by_highs = rofr_solver::solve(&instance, &settings_with(&instance, |s| s.highs = true)).unwrap();
            prop_assert_eq!(by_highs.status, rofr_solver::Status::Optimal);
            prop_assert!((by_highs.cost - optimum).abs() < 1e-6, "HiGHS {} but the optimum is {optimum}", by_highs.cost);
            prop_assert_eq!(check(&instance, &by_highs.allocations).unwrap(), by_highs.cost);
        }
    }
}

/// A node limit too small for the proof still answers, `feasible`, with a bound: the
/// optimum lies between the two.
#[test]
fn a_proof_cut_short_by_its_node_count_says_so_with_its_bound() {
    let instance = rofr_tools_free_instance();
    let optimum = rofr_solver::solve(
        &instance,
        &settings_with(&instance, |s| s.work_limit = Some(100_000)),
    )
    .unwrap();
    assert_eq!(optimum.status, rofr_solver::Status::Optimal);
    let cut = rofr_solver::solve(
        &instance,
        &settings_with(&instance, |s| s.work_limit = Some(1)),
    )
    .unwrap();
    assert_eq!(cut.status, rofr_solver::Status::Feasible, "{cut:?}");
    assert!(
        cut.bound < optimum.cost && optimum.cost < cut.cost,
        "{cut:?} against {}",
        optimum.cost
    );
}

/// Twelve needs of mixed units over four pools of two providers, one capped: enough
/// that one node does not finish the proof.
fn rofr_tools_free_instance() -> Instance {
    let needs: Vec<String> = (0..12)
        .map(|n| {
            let unit = [1, 4, 8][n % 3];
            format!(
                r#"{{"id":"n{n}","gpus":{},"hours":{},"unit":{unit},"shortfall_penalty":{},"pools":["a{}","b{}","a{}"]}}"#,
                unit * (3 + n % 5),
                24 + 37 * n,
                9.0 + (n % 4) as f64,
                n % 2,
                n % 2,
                (n + 1) % 2
            )
        })
        .collect();
    let text = format!(
        r#"{{"needs":[{}],"pools":[{{"id":"a0","provider":"x","gpus":40,"price_per_gpu_hour":3.1}},{{"id":"a1","provider":"x","gpus":36,"price_per_gpu_hour":3.3}},{{"id":"b0","provider":"y","gpus":64,"price_per_gpu_hour":4.7}},{{"id":"b1","provider":"y","gpus":48,"price_per_gpu_hour":5.2}}],"caps":[{{"provider":"x","max_share":0.35}}],"base_gpu_hours":{{"x":100,"y":2000}}}}"#,
        needs.join(",")
    );
    Instance::parse(text.as_bytes()).unwrap()
}

#[test]
fn the_relaxation_bound_lies_between_the_simple_bound_and_the_optimum() {
    let text = r#"{
      "needs": [ { "id": "n1", "gpus": 64, "hours": 10, "unit": 8, "shortfall_penalty": 100.0, "pools": ["cheap", "dear"] } ],
      "pools": [ { "id": "cheap", "provider": "a", "gpus": 64, "price_per_gpu_hour": 1.0 },
                 { "id": "dear", "provider": "b", "gpus": 64, "price_per_gpu_hour": 5.0 } ],
      "caps": [ { "provider": "a", "max_share": 0.3 } ],
      "base_gpu_hours": { "b": 100 }
    }"#;
    let instance = Instance::parse(text.as_bytes()).unwrap();
    let optimum = exact(&instance, None).unwrap().cost;
    let relaxed = rofr_solver::relaxation_bound(&instance).unwrap();
    assert!(
        instance.lower_bound() < relaxed,
        "the cap binds, so the relaxation is tighter"
    );
    assert!(
        relaxed <= optimum + 1e-6,
        "relaxation {relaxed} above the optimum {optimum}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    /// The engine's form: limits counted in spend with usage already held, and a
    /// preferred provider; the answer is the brute-force optimum and, among optima,
    /// gives the preferred provider the most.
    #[test]
    fn limits_on_spend_and_preferences_are_solved_exactly(
        instance in instance_strategy(),
        share in 2u32..9,
        own in 0u32..400,
        others in 0u32..400,
    ) {
        let mut instance = instance;
        instance.caps.clear();
        let limits = vec![rofr_solver::ShareLimit {
            provider: "c1".into(),
            max_share: f64::from(share) / 10.0,
            spend: true,
            own: f64::from(own),
            total: f64::from(own + others),
        }];
        let (optimum, favoured) = brute_force_with(&instance, |a| {
            rofr_solver::check_within(&instance, &limits, a).ok()
        });
        let settings = rofr_solver::Settings {
            limits: limits.clone(),
            preferred: ["c0".to_owned()].into(),
            time_limit: None,
            ..Default::default()
        };
        let solved = rofr_solver::solve(&instance, &settings).unwrap();
        if optimum.is_infinite() {
            prop_assert_eq!(solved.status, rofr_solver::Status::Infeasible);
        } else {
            prop_assert_eq!(solved.status, rofr_solver::Status::Optimal);
            prop_assert!((solved.cost - optimum).abs() < 1e-6, "solved {} but the optimum is {optimum}", solved.cost);
            let checked = rofr_solver::check_within(&instance, &limits, &solved.allocations).unwrap();
            prop_assert!((checked - solved.cost).abs() < 1e-6);
            let to_c0 = gpu_hours_to_c0(&instance, &solved.allocations);
            prop_assert!((to_c0 - favoured).abs() < 1e-6, "c0 has {to_c0} GPU-hours but could have {favoured} at the same cost");
        }
    }
}

#[test]
fn a_preferred_provider_is_favoured_by_gpu_hours_at_equal_cost() {
    // Three allocations cost 1,736 each: n0 to c1's p0 with n1 to c0's p2 (the spend
    // of n1 keeps c1 under its 30% limit), n0 to p2 alone, and nothing at all. The
    // first gives c0 8 GPUs for 168 GPU-hours, the second 4 GPUs for 196 GPU-hours.
    let text = r#"{
      "needs": [ { "id": "n0", "gpus": 4, "hours": 49, "unit": 4, "shortfall_penalty": 8.0, "pools": ["p0", "p2"] },
                 { "id": "n1", "gpus": 8, "hours": 21, "unit": 8, "shortfall_penalty": 1.0, "pools": ["p2"] } ],
      "pools": [ { "id": "p0", "provider": "c1", "gpus": 4, "price_per_gpu_hour": 2.0 },
                 { "id": "p1", "provider": "c0", "gpus": 0, "price_per_gpu_hour": 1.0 },
                 { "id": "p2", "provider": "c0", "gpus": 8, "price_per_gpu_hour": 8.0 } ],
      "caps": [],
      "base_gpu_hours": { "c1": 200 }
    }"#;
    let instance = Instance::parse(text.as_bytes()).unwrap();
    let settings = rofr_solver::Settings {
        limits: vec![rofr_solver::ShareLimit {
            provider: "c1".into(),
            max_share: 0.3,
            spend: true,
            own: 0.0,
            total: 0.0,
        }],
        preferred: ["c0".to_owned()].into(),
        time_limit: None,
        ..Default::default()
    };
    let solved = rofr_solver::solve(&instance, &settings).unwrap();
    assert_eq!(solved.status, rofr_solver::Status::Optimal);
    assert_eq!(solved.cost, 1736.0);
    assert_eq!(
        solved.allocations,
        vec![Allocation {
            need: "n0".into(),
            pool: "p2".into(),
            gpus: 4
        }]
    );
    assert_eq!(gpu_hours_to_c0(&instance, &solved.allocations), 196.0);
}

/// The one cap rule: at the share exactly it holds, within rounding it holds, and a
/// millionth of a GPU-hour beyond its tolerance it breaks.
#[test]
fn the_cap_rule_allows_rounding_and_nothing_more() {
    use rofr_solver::keeps_share;
    let total = 1_000_000.0;
    assert!(keeps_share(400_000.0, 0.4, total));
    assert!(keeps_share(400_000.0 + 1e-4, 0.4, total));
    assert!(!keeps_share(400_000.0 + 0.4e-3 + 2e-6, 0.4, total));
    assert!(keeps_share(0.0, 0.0, 0.0));
    assert!(!keeps_share(1e-5, 0.0, 0.0));
}
