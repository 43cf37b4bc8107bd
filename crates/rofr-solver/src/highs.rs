//! The proof by HiGHS (feature `highs`): the same program as the search's
//! (`Program`), handed to HiGHS's branch and cut in process, started from an allocation
//! the caller found. Its answer is re-checked by [`check_within`] like every other.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{
    check_within, constant_cost, given_per_need, infeasible, shortfall, to_allocations, Infeasible,
    Instance, Objective, Program, ShareLimit, Solution, Status,
};

/// Solves the program with HiGHS within `time_limit`, from `start` where given (an
/// allocation that keeps every limit). `optimal` where HiGHS proved it (its gap
/// closed to a millionth of a dollar); otherwise the best found with HiGHS's bound.
pub(crate) fn prove(
    instance: &Instance,
    limits: &[ShareLimit],
    start: Option<&Solution>,
    time_limit: Option<Duration>,
) -> Result<Solution, Infeasible> {
    use highs::{HighsModelStatus, RowProblem, Sense};
    let written = Program::new(instance, limits, &Objective::Cost, None);
    let mut problem = RowProblem::default();
    let columns: Vec<highs::Col> = (written.columns.iter())
        .map(|&(_, _, cost, most)| problem.add_integer_column(cost, 0.0..=most as f64))
        .collect();
    for (terms, bound) in &written.rows {
        let terms: Vec<(highs::Col, f64)> = terms.iter().map(|&(c, k)| (columns[c], k)).collect();
        problem.add_row(..=*bound, &terms);
    }
    let mut model = problem.optimise(Sense::Minimise);
    model.make_quiet();
    // The optimum itself, not HiGHS's default 0.01% of it.
    model.set_option("mip_rel_gap", 0.0);
    model.set_option("mip_abs_gap", 1e-6);
    if let Some(limit) = time_limit {
        model.set_option("time_limit", limit.as_secs_f64());
    }
    if let Some(start) = start {
        let placed: BTreeMap<(&str, &str), u64> = (start.allocations.iter())
            .map(|a| ((a.need.as_str(), a.pool.as_str()), a.gpus))
            .collect();
        let values: Vec<f64> = (written.columns.iter())
            .map(|&(n, p, _, _)| {
                let need = &instance.needs[n];
                let gpus = placed
                    .get(&(need.id.as_str(), instance.pools[p].id.as_str()))
                    .copied()
                    .unwrap_or(0);
                (gpus / need.unit) as f64
            })
            .collect();
        // A start HiGHS refuses (it never should) only costs it the head start.
        let _ = model.try_set_solution(Some(&values), None, None, None);
    }
    let solved = model
        .try_solve()
        .map_err(|e| Infeasible(format!("HiGHS failed: {e:?}")))?;
    let status = solved.status();
    if status == HighsModelStatus::Infeasible {
        return Ok(infeasible());
    }
    let constant = constant_cost(instance);
    let bound = solved
        .double_info_value(c"mip_dual_bound")
        .ok()
        .filter(|b| b.is_finite())
        .map_or(instance.lower_bound(), |b| b + constant);
    let values = solved.get_solution().columns().to_vec();
    let found = (written.columns.iter().zip(&values))
        .map(|(&(n, p, _, _), &units)| ((n, p), units.round() as u64 * instance.needs[n].unit))
        .filter(|(_, gpus)| *gpus > 0)
        .collect::<BTreeMap<_, _>>();
    let allocations = to_allocations(instance, &found);
    let Ok(cost) = check_within(instance, limits, &allocations) else {
        // No allocation yet (the limit came first), or one the checker refuses: the
        // start, if any, is the answer.
        return match start {
            Some(start) => Ok(Solution {
                status: Status::Feasible,
                bound: bound.min(start.cost),
                ..start.clone()
            }),
            None => Err(Infeasible(format!(
                "HiGHS stopped ({status:?}) without an allocation within the caps"
            ))),
        };
    };
    let optimal = status == HighsModelStatus::Optimal;
    Ok(Solution {
        shortfall: shortfall(instance, &given_per_need(instance, &found)),
        allocations,
        cost,
        status: if optimal {
            Status::Optimal
        } else {
            Status::Feasible
        },
        bound: if optimal { cost } else { bound.min(cost) },
    })
}
