#!/usr/bin/env python3
"""An independent check of rofr's allocations with the HiGHS MIP solver.

    python3 tools/check-allocation.py INSTANCE.json SOLUTION.json

Builds the program of docs/allocation.md from the instance alone (integer units of
each need per allowed pool, pool sizes, caps, shortfall priced by its penalty), solves
it with HiGHS (the `highspy` package), and compares: exit 0 when the solution's cost is
not above HiGHS's optimum (for a solution marked `optimal`) or not below it (any other
solution claiming to be feasible); exit 1 otherwise, printing both costs.
"""

import json
import sys

import highspy


def main():
    instance = json.load(open(sys.argv[1]))
    solution = json.load(open(sys.argv[2]))
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
    for need in instance["needs"]:
        cols = [(c, need["unit"]) for n, _, c in columns if n is need]
        if cols:
            h.addRow(-inf, need["gpus"], len(cols), [c for c, _ in cols], [v for _, v in cols])
    for pool_id, pool in pools.items():
        cols = [(c, n["unit"]) for n, p, c in columns if p == pool_id]
        if cols:
            h.addRow(-inf, pool["gpus"], len(cols), [c for c, _ in cols], [v for _, v in cols])
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
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        print(f"HiGHS: {h.modelStatusToString(h.getModelStatus())}")
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
