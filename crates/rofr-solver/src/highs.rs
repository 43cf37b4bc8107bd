//! The proof by HiGHS (feature `highs`): the same program as the search's
//! (`Program`), handed to HiGHS's branch and cut in process. Its answer is re-checked
//! by the checker like every other.

use std::time::Duration;

use crate::{
    checked, constant_cost, in_whole_units, infeasible, Infeasible, Instance, Objective, Program,
    ShareLimit, Solution, Status,
};

/// Solves the program with HiGHS within `time_limit`. `optimal` where HiGHS proved it
/// (its gap closed to a millionth of a dollar); otherwise the best found with HiGHS's
/// bound, or `fallback` (an allocation that keeps every limit) where HiGHS found none
/// or a dearer one in the time.
///
/// HiGHS is not started from `fallback`: on the benchmark's instances a start far from
/// the optimum (cheapest first is 40–70% above it where caps bind) changes HiGHS's
/// path without shortening it, and even one within 0.01% of it did not shorten the
/// proof (`BENCHMARKS.md`).
pub(crate) fn prove(
    instance: &Instance,
    limits: &[ShareLimit],
    fallback: Option<&Solution>,
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
    let taken = in_whole_units(
        instance,
        (written.columns.iter().zip(values)).map(|(&(n, p, _, _), units)| ((n, p), units)),
    );
    let answer = checked(instance, limits, &taken)
        .ok()
        .filter(|a| fallback.is_none_or(|f| a.cost <= f.cost));
    let Some(answer) = answer else {
        // No allocation yet (the limit came first), one the checker refuses, or one
        // dearer than the fallback: the fallback, if any, is the answer.
        return match fallback {
            Some(fallback) => Ok(Solution {
                status: Status::Feasible,
                bound: bound.min(fallback.cost),
                ..fallback.clone()
            }),
            None => Err(Infeasible(format!(
                "HiGHS stopped ({status:?}) without an allocation within the caps"
            ))),
        };
    };
    let optimal = status == HighsModelStatus::Optimal;
    Ok(Solution {
        status: if optimal {
            Status::Optimal
        } else {
            Status::Feasible
        },
        bound: if optimal {
            answer.cost
        } else {
            bound.min(answer.cost)
        },
        ..answer
    })
}
