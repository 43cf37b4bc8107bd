#!/usr/bin/env python3
"""An independent check of rofr's allocations with the HiGHS MIP solver.

    python3 tools/check-allocation.py INSTANCE.json SOLUTION.json
    python3 tools/check-allocation.py INSTANCE.json --time-limit 20

Builds the program of docs/allocation.md from the instance alone (integer units of
each need per allowed pool, pool sizes, caps, shortfall priced by its penalty) and
solves it with HiGHS (the `highspy` package).

With a SOLUTION it compares: exit 0 when the solution's cost is not above HiGHS's
optimum (for a solution marked `optimal`) or not below it (any other solution claiming
to be feasible); exit 1 otherwise, printing both costs.

Without one it prints one JSON line, the HiGHS side of `rofr bench solve`:
{"status": "optimal" | "feasible" | "infeasible" | "none", "cost": ..., "bound": ...,
 "solve_seconds": HiGHS's own run, "build_seconds": reading the instance and writing
 the program}.
"""

import argparse
import json
import sys
import time

import highspy


def program(instance):
    """The HiGHS model of the instance, and the constant its objective leaves out."""
    pools = {p["id"]: p for p in instance["pools"]}
    base = instance.get("base_gpu_hours", {})
    base_total = sum(base.values())
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    # HiGHS stops by default within 0.01% of its bound; the check needs the optimum itself.
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-6)
    inf = highspy.kHighsInf
    columns = []  # (need, pool id, column)
    constant = 0.0
    for need in instance["needs"]:
        constant += need["gpus"] * need["hours"] * need["shortfall_penalty"]
        for pool_id in need["pools"]:
            pool = pools[pool_id]
            cost = need["unit"] * need["hours"] * (pool["price_per_gpu_hour"] - need["shortfall_penalty"])
            most = min(need["gpus"], pool["gpus"]) // need["unit"]
            h.addVar(0, most)
            col = h.getNumCol() - 1
            h.changeColCost(col, cost)
            h.changeColIntegrality(col, highspy.HighsVarType.kInteger)
            columns.append((need, pool_id, col))
    by_need = {}
    by_pool = {}
    for n, p, c in columns:
        by_need.setdefault(id(n), (n, []))[1].append((c, n["unit"]))
        by_pool.setdefault(p, []).append((c, n["unit"]))
    for need, cols in by_need.values():
        h.addRow(-inf, need["gpus"], len(cols), [c for c, _ in cols], [v for _, v in cols])
    for pool_id in pools:
        cols = by_pool.get(pool_id)
        if cols:
            h.addRow(-inf, pools[pool_id]["gpus"], len(cols), [c for c, _ in cols], [v for _, v in cols])
    for cap in instance.get("caps", []):
        share = cap["max_share"]
        if share >= 1:
            continue
        idx, val = [], []
        for n, p, c in columns:
            own = 1.0 if pools[p]["provider"] == cap["provider"] else 0.0
            coefficient = n["unit"] * n["hours"] * (own - share)
            if coefficient:
                idx.append(c)
                val.append(coefficient)
        if idx:
            h.addRow(-inf, share * base_total - base.get(cap["provider"], 0.0), len(idx), idx, val)
    return h, constant


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("instance")
    parser.add_argument("solution", nargs="?")
    parser.add_argument("--time-limit", type=float, help="seconds HiGHS may take")
    args = parser.parse_args()
    started = time.perf_counter()
    instance = json.load(open(args.instance))
    h, constant = program(instance)
    if args.time_limit is not None:
        h.setOptionValue("time_limit", args.time_limit)
    built = time.perf_counter()
    h.run()
    solved = time.perf_counter()
    status = h.getModelStatus()
    if args.solution is None:
        info = h.getInfo()
        out = {"build_seconds": built - started, "solve_seconds": solved - built}
        if status == highspy.HighsModelStatus.kInfeasible:
            out["status"] = "infeasible"
        elif info.primal_solution_status == highspy.SolutionStatus.kSolutionStatusFeasible:
            out["status"] = "optimal" if status == highspy.HighsModelStatus.kOptimal else "feasible"
            out["cost"] = info.objective_function_value + constant
            out["bound"] = info.mip_dual_bound + constant
        else:
            out["status"] = "none"
        print(json.dumps(out))
        return 0
    solution = json.load(open(args.solution))
    if status != highspy.HighsModelStatus.kOptimal:
        print(f"HiGHS: {h.modelStatusToString(status)}")
        return 0 if solution["status"] == "infeasible" else 1
    optimum = h.getInfo().objective_function_value + constant
    cost = solution["cost"]
    tolerance = 1e-6 * max(1.0, abs(optimum))
    print(f"rofr {solution['status']} {cost:.2f}; HiGHS optimum {optimum:.2f}")
    if solution["status"] == "optimal":
        return 0 if cost <= optimum + tolerance else 1
    return 0 if cost >= optimum - tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
