"""Validate the cost model behind `input_jacobian(mode="auto")` against measured times.

Reads a `jacobian_modes.py` result file. For every network it asks the cost model of this
checkout (`jacsens.jacobian_cost(model, B).best`, a function of shapes and the platform
only) which of rev / fwd / chain to use, and checks whether that mode's measured time is
within 10% of the fastest of the three. The choice recorded in the file (the cost model of
the run that measured it) is scored the same way, and so is `legacy_best`, the FLOP-only
model that `auto` used before the roofline model: the before/after agreement. Both the
median and the minimum over repeats are used as "the measured time" (on a shared machine
the minimum is the least disturbed).

    python benchmarks/cost_model.py benchmarks/results/cpu-2026-11-23-jacobian_modes.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax.numpy as jnp

from jacsens import _cost, read_chain
from jacsens._order import optimal_order

from harness import NetSpec, format_table, make_model, write_json

MODES = ("rev", "fwd", "chain")


def legacy_best(chain, batch: int) -> str:
    """The cost model before the roofline change (commit 60e0af3), for before/after scores:
    per-sample multiply-adds `(1 + out)·matvec` (rev), `(1 + in)·matvec` (fwd), forward +
    optimal matrix-chain product + `out·in` (chain), ties broken by the bytes of the widest
    intermediate."""
    dims = chain.dims
    n_in, n_out = chain.in_width, chain.out_width
    matvec = sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
    widest = max(dims)
    order = optimal_order(chain.spec.dims, chain.spec.flags)
    madds = {
        "rev": matvec + n_out * matvec,
        "fwd": matvec + n_in * matvec,
        "chain": matvec + order.cost + n_out * n_in,
    }
    elems = {
        "rev": n_out * widest + n_out * n_in,
        "fwd": n_in * widest + n_out * n_in,
        "chain": max(order.dims) ** 2 + n_out * n_in,
    }
    return min(("chain", "rev", "fwd"), key=lambda m: (madds[m] * batch, elems[m] * batch))


def estimated_seconds(chain, batch: int, platform: str) -> dict[str, float]:
    """The cost model's estimated float32 time of each chain-based mode for the batch."""
    estimate = {
        "rev": _cost.rev_estimate,
        "fwd": _cost.fwd_estimate,
        "chain": _cost.chain_order_estimate,
        "backprop": _cost.backprop_estimate,
    }
    args = (chain.spec.dims, chain.spec.flags, batch, 4, _cost.device_model(platform))
    return {mode: fn(*args)[2] for mode, fn in estimate.items()}


def spec_of(case: dict) -> NetSpec:
    out = case["out"]
    if case["net"].endswith("-1") and case["name"] == "seed":
        out = "scalar"
    return NetSpec(case["name"], case["in"], tuple(case["widths"]), out, case["batch"])


def evaluate(results: dict) -> dict:
    """Score the recorded and the current cost model on every measured case."""
    from jacsens import jacobian_cost

    platform = results["meta"]["backend"]
    rows, cases = [], []
    for case in results["cases"]:
        timings = case.get("timings", {})
        if not all(timings.get(m, {}).get("ok") for m in MODES):
            # A mode that was skipped as far too slow cannot be the fastest: it still counts.
            if not any(timings.get(m, {}).get("ok") for m in MODES):
                continue
        spec = spec_of(case)
        model = make_model(spec)
        chain = read_chain(model)
        new = jacobian_cost(model, spec.batch).best
        predicted = estimated_seconds(chain, spec.batch, platform)
        entry = {
            "name": case["name"],
            "net": case["net"],
            "batch": spec.batch,
            "recorded_choice": case.get("auto_choice"),
            "legacy_choice": legacy_best(chain, spec.batch),
            "new_choice": new,
            "predicted_s": predicted,
            "measured_median_s": {},
            "measured_min_s": {},
        }
        for stat in ("median", "min"):
            measured = {m: timings[m][f"{stat}_s"] for m in MODES if timings.get(m, {}).get("ok")}
            fastest = min(measured, key=measured.__getitem__)
            entry[f"measured_{stat}_s"] = measured
            entry[f"fastest_{stat}"] = fastest
            for who in ("recorded", "legacy", "new"):
                choice = entry[f"{who}_choice"]
                t = measured.get(choice)
                # a skipped mode was predicted over budget: far slower than the fastest
                entry[f"{who}_ok_{stat}"] = t is not None and t <= 1.10 * measured[fastest]
        cases.append(entry)
        rows.append(
            {
                "net": entry["net"],
                "B": entry["batch"],
                "fastest (median)": entry["fastest_median"],
                "fastest (min)": entry["fastest_min"],
                "legacy auto": entry["legacy_choice"],
                "new auto": entry["new_choice"],
                "new ok (median/min)": f"{entry['new_ok_median']:d}/{entry['new_ok_min']:d}",
            }
        )
    n = len(cases)
    summary = {
        f"{who}_agreement_{stat}": sum(c[f"{who}_ok_{stat}"] for c in cases) / n if n else None
        for who in ("recorded", "legacy", "new")
        for stat in ("median", "min")
    }
    summary["cases"] = n
    return {"platform": platform, "cases": cases, "summary": summary, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a jacobian_modes.py JSON file")
    parser.add_argument("--out", type=Path, default=None, help="JSON path for the evaluation")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    ev = evaluate(results)
    print(format_table(ev.pop("rows"), list(_columns())))
    s = ev["summary"]
    print(
        f"\nauto within 10% of the fastest of rev/fwd/chain, {s['cases']} cases "
        f"({ev['platform']}, measured {results['meta']['date'][:10]}):\n"
        f"  recorded in the file: {s['recorded_agreement_median']:.0%} (median), "
        f"{s['recorded_agreement_min']:.0%} (min)\n"
        f"  FLOP-only model (before): {s['legacy_agreement_median']:.0%} (median), "
        f"{s['legacy_agreement_min']:.0%} (min)\n"
        f"  roofline model (now):     {s['new_agreement_median']:.0%} (median), "
        f"{s['new_agreement_min']:.0%} (min)"
    )
    out = args.out or args.results.with_name(args.results.stem + "-costmodel.json")
    ev["source"] = args.results.name
    write_json(ev, out)
    print(f"evaluation written to {out}")
    return ev


def _columns():
    return (
        "net",
        "B",
        "fastest (median)",
        "fastest (min)",
        "legacy auto",
        "new auto",
        "new ok (median/min)",
    )


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before reading the platform
    main()
