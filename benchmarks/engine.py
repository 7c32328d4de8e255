"""Engine overhead: what a repeated call of `input_jacobian` costs beyond the plain jitted program.

Three measures, for the engine restructuring (analyse a model once, then reuse the plan):

- **ratio**: `input_jacobian(model, X, mode="rev")` over the plain baseline
  `eqx.filter_jit(lambda m, X: jax.vmap(jax.jacrev(m))(X))(model, X)` (the model passed as an
  argument, as a user would) on the seed net 52-20-10-1 (tanh, `jacsens.MLP`), an MNIST-shaped
  784-512-512-10 `jacsens.MLP`, a small CNN 1x28x28 -> 10, a residual LayerNorm net 64 -> 10 and
  a scan RNN encoder over a (16, 8) sequence -> 4, at B = 32 and 256. Both functions are timed
  interleaved, one sample of each per round in a random order, and the ratio reported is the
  median over rounds of the paired per-round ratio, with its quartiles.
- **overhead**: the same pair on every model at B = 1, where the compiled program is tiny, so
  `input_jacobian - plain` is the per-call Python cost (validation, shape analysis, dispatch)
  in microseconds; also `mode="auto"` on the seed net, and the difference at B = 256.
- **compile**: the first call of `jacsens.sensitivity(model, X)` and of
  `input_jacobian(model, X, mode="auto")` on the seed net and the 784-512-512-10 net, after
  `jax.clear_caches()` and clearing every jacsens cache found (functools caches and any
  `clear_cache`-like function in a jacsens module: the plan cache too, where there is one).

The "before" and "after" of a restructuring are two source trees. Measured alone, a run uses
whichever `jacsens` is importable (put a tree first with `PYTHONPATH=<tree>`). With
`--compare TREE_A TREE_B`, the script alternates worker processes on the two trees (a random
order in every round of workers), so that both see the same load on a busy machine; each
figure is then the median over workers (spread: min and max over workers; compile times pool
every first call).

    PYTHONPATH=/tmp/before python benchmarks/engine.py --label before
    python benchmarks/engine.py --label after
    python benchmarks/engine.py --label after-vs-before \
        --compare before=/tmp/before after=/tmp/after
    python benchmarks/engine.py --quick          # a short run

Results go to `benchmarks/results/cpu-<date>-engine-<label>.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

MODELS = ("seed", "mnist", "cnn", "resnorm", "scan")
BATCHES = (32, 256)
COMPILE_MODELS = ("seed", "mnist")
# sensitivity's compiled step has a fixed chunk shape; two chunks exercise the loop.
SENS_ROWS, SENS_CHUNK = 1024, 512


# ---------------------------------------------------------------------------------------
# Models (built lazily: importing this file must not import JAX)
# ---------------------------------------------------------------------------------------


def build_model(name: str, key: Any) -> tuple[Any, tuple[int, ...]]:
    """A model acting on one sample and that sample's shape.

    **Arguments:**

    - `name`: one of `MODELS`.
    - `key`: a JAX PRNG key for the weights.

    **Returns:**

    `(model, in_shape)`.
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import jacsens

    if name == "seed":
        return jacsens.MLP(52, (20, 10), "scalar", "tanh", key=key), (52,)
    if name == "mnist":
        return jacsens.MLP(784, (512, 512), 10, "tanh", key=key), (784,)

    if name == "cnn":

        class SmallCNN(eqx.Module):
            """1x28x28 -> conv 3x3/2 (8) -> relu -> conv 3x3/2 (16) -> relu -> linear 10."""

            conv1: eqx.nn.Conv2d
            conv2: eqx.nn.Conv2d
            head: eqx.nn.Linear

            def __init__(self, key):
                k1, k2, k3 = jax.random.split(key, 3)
                self.conv1 = eqx.nn.Conv2d(1, 8, 3, stride=2, key=k1)  # 28 -> 13
                self.conv2 = eqx.nn.Conv2d(8, 16, 3, stride=2, key=k2)  # 13 -> 6
                self.head = eqx.nn.Linear(16 * 6 * 6, 10, key=k3)

            def __call__(self, x):
                h = jax.nn.relu(self.conv1(x))
                h = jax.nn.relu(self.conv2(h))
                return self.head(h.reshape(-1))

        return SmallCNN(key), (1, 28, 28)

    if name == "resnorm":

        class Block(eqx.Module):
            norm: eqx.nn.LayerNorm
            up: eqx.nn.Linear
            down: eqx.nn.Linear

            def __init__(self, width, hidden, key):
                k1, k2 = jax.random.split(key)
                self.norm = eqx.nn.LayerNorm(width)
                self.up = eqx.nn.Linear(width, hidden, key=k1)
                self.down = eqx.nn.Linear(hidden, width, key=k2)

            def __call__(self, x):
                return x + self.down(jax.nn.gelu(self.up(self.norm(x))))

        class ResNorm(eqx.Module):
            """64 -> 3 x (x + Linear(gelu(Linear(LayerNorm(x))))) -> LayerNorm -> Linear 10."""

            blocks: tuple[Block, ...]
            norm: eqx.nn.LayerNorm
            head: eqx.nn.Linear

            def __init__(self, key):
                keys = jax.random.split(key, 4)
                self.blocks = tuple(Block(64, 128, k) for k in keys[:3])
                self.norm = eqx.nn.LayerNorm(64)
                self.head = eqx.nn.Linear(64, 10, key=keys[3])

            def __call__(self, x):
                for block in self.blocks:
                    x = block(x)
                return self.head(self.norm(x))

        return ResNorm(key), (64,)

    if name == "scan":

        class ScanEncoder(eqx.Module):
            """An Elman RNN (hidden 32) over a (16, 8) sequence by `lax.scan`; last state -> 4."""

            cell_in: eqx.nn.Linear
            cell_h: eqx.nn.Linear
            head: eqx.nn.Linear

            def __init__(self, key):
                k1, k2, k3 = jax.random.split(key, 3)
                self.cell_in = eqx.nn.Linear(8, 32, key=k1)
                self.cell_h = eqx.nn.Linear(32, 32, use_bias=False, key=k2)
                self.head = eqx.nn.Linear(32, 4, key=k3)

            def __call__(self, xs):
                def step(h, x):
                    h = jnp.tanh(self.cell_in(x) + self.cell_h(h))
                    return h, None

                h, _ = jax.lax.scan(step, jnp.zeros(32, xs.dtype), xs)
                return self.head(h)

        return ScanEncoder(key), (16, 8)

    raise ValueError(f"`name` must be one of {MODELS}, got {name!r}.")


def make_inputs(name: str, batch: int) -> tuple[Any, Any]:
    """`(model, X)` for a model name and batch size, float32, from fixed keys."""
    import jax

    model, in_shape = build_model(name, jax.random.key(0))
    X = jax.random.normal(jax.random.key(1), (batch, *in_shape))
    return model, X


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def _run(fn: Callable[[], Any], number: int) -> float:
    import jax

    t0 = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / number


def _quartiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    n = len(s)

    def q(p: float) -> float:
        # linear interpolation between order statistics (numpy's default)
        pos = p * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return {"median": q(0.5), "q1": q(0.25), "q3": q(0.75), "min": s[0], "max": s[-1]}


def time_pair(
    fns: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    rng: random.Random,
    min_sample_s: float,
) -> dict[str, Any]:
    """Time functions interleaved: per round one sample of each, in a fresh random order.

    The first call of each (trace + compile + run) is recorded as `first_s`. A sample is
    `number` back-to-back calls (enough to last `min_sample_s`), preceded by one untimed
    call so that each function's caches are its own and not those of the one before it.

    **Returns:**

    `{name: {"first_s", "number", "samples", "median", "q1", "q3", "min", "max"}}`, times
    in seconds per call.
    """
    out: dict[str, Any] = {}
    for name, fn in fns.items():
        first = _run(fn, 1)
        warm = min(_run(fn, 1) for _ in range(3))
        number = max(1, min(2000, math.ceil(min_sample_s / max(warm, 1e-7))))
        out[name] = {"first_s": first, "number": number, "samples": []}
    names = list(fns)
    for _ in range(rounds):
        rng.shuffle(names)
        for name in names:
            _run(fns[name], 1)
            out[name]["samples"].append(_run(fns[name], out[name]["number"]))
    for rec in out.values():
        rec.update(_quartiles(rec["samples"]))
    return out


def _paired_ratio(num: list[float], den: list[float]) -> dict[str, float]:
    return _quartiles([a / b for a, b in zip(num, den, strict=True)])


# ---------------------------------------------------------------------------------------
# Cache clearing
# ---------------------------------------------------------------------------------------

_CLEAR_NAMES = ("clear_cache", "clear_caches", "clear_plan_cache", "cache_clear")
# Module-level memo tables by name (a plan cache, structures already verified, ...); named
# tables only, so that registries such as the activation table are left alone.
_MEMO_HINTS = ("cache", "plans", "verified", "memo")


def clear_all_caches() -> list[str]:
    """Clear JAX's caches and every cache found in the imported jacsens modules.

    Found: functions wrapped by `functools.lru_cache`/`cache` (their `cache_clear`),
    module-level functions named like `clear_cache`, and module-level dicts and sets whose
    name says they memoise (`_MEMO_HINTS`). Classes defined in jacsens are searched the
    same way (a plan cache may be a class attribute).

    **Returns:**

    The names of what was cleared (recorded in the results, so a reader sees what "cold"
    meant in each tree).
    """
    import jax

    jax.clear_caches()
    cleared: list[str] = []
    seen: set[int] = set()

    def visit(owner: str, name: str, obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        clear = getattr(obj, "cache_clear", None)
        if callable(clear) and getattr(obj, "__module__", "").startswith("jacsens"):
            clear()
            cleared.append(f"{owner}.{name}")
        elif name in _CLEAR_NAMES and callable(obj):
            obj()
            cleared.append(f"{owner}.{name}()")
        elif isinstance(obj, dict | set) and any(h in name.lower() for h in _MEMO_HINTS):
            obj.clear()
            cleared.append(f"{owner}.{name}")

    for modname, mod in list(sys.modules.items()):
        if mod is None or not (modname == "jacsens" or modname.startswith("jacsens.")):
            continue
        for name, obj in list(vars(mod).items()):
            visit(modname, name, obj)
            if isinstance(obj, type) and obj.__module__ == modname:
                for cname, cobj in list(vars(obj).items()):
                    if isinstance(cobj, staticmethod | classmethod):
                        cobj = cobj.__func__
                    visit(f"{modname}.{name}", cname, cobj)
    return sorted(cleared)


# ---------------------------------------------------------------------------------------
# The three measures
# ---------------------------------------------------------------------------------------


def _plain_rev() -> Callable:
    import equinox as eqx
    import jax

    # The model is an argument (not closed over), as a user's own jitted function takes it.
    return eqx.filter_jit(lambda m, X: jax.vmap(jax.jacrev(m))(X))


def measure_ratios(rounds: int, rng: random.Random, models=MODELS, batches=BATCHES) -> list:
    """input_jacobian(mode="rev") vs the plain jitted vmap(jacrev), per model and batch."""
    import jax.numpy as jnp

    import jacsens

    plain = _plain_rev()
    cases = []
    for name in models:
        for batch in batches:
            model, X = make_inputs(name, batch)
            J = jacsens.input_jacobian(model, X, mode="rev")
            J0 = plain(model, X)
            err = float(jnp.max(jnp.abs(J - J0)))
            scale = float(jnp.max(jnp.abs(J0)))
            t = time_pair(
                {
                    "jacsens_rev": lambda m=model, X=X: jacsens.input_jacobian(m, X, mode="rev"),
                    "plain_rev": lambda m=model, X=X: plain(m, X),
                },
                rounds=rounds,
                rng=rng,
                min_sample_s=0.01,
            )
            ratio = _paired_ratio(t["jacsens_rev"]["samples"], t["plain_rev"]["samples"])
            cases.append(
                {
                    "model": name,
                    "batch": batch,
                    "max_abs_diff": err,
                    "max_abs_J": scale,
                    "agree": err <= 1e-5 * max(1.0, scale),
                    "timings": t,
                    "ratio": ratio,
                }
            )
            print(
                f"  ratio {name:>8} B={batch:<4} jacsens {t['jacsens_rev']['median'] * 1e3:8.3f} ms"
                f"  plain {t['plain_rev']['median'] * 1e3:8.3f} ms  ratio {ratio['median']:.2f}"
                f" [{ratio['q1']:.2f}, {ratio['q3']:.2f}]",
                flush=True,
            )
    return cases


def measure_overhead(rounds: int, rng: random.Random, models=MODELS) -> list:
    """Per-call cost at B = 1 (the program itself is tiny): jacsens minus plain, in µs."""
    import jacsens

    plain = _plain_rev()
    cases = []
    for name in models:
        model, X = make_inputs(name, 1)
        fns = {
            "jacsens_rev": lambda m=model, X=X: jacsens.input_jacobian(m, X, mode="rev"),
            "plain_rev": lambda m=model, X=X: plain(m, X),
        }
        if name == "seed":
            fns["jacsens_auto"] = lambda m=model, X=X: jacsens.input_jacobian(m, X)
        t = time_pair(fns, rounds=rounds, rng=rng, min_sample_s=0.02)
        diffs = {
            k: _quartiles(
                [
                    (a - b) * 1e6
                    for a, b in zip(t[k]["samples"], t["plain_rev"]["samples"], strict=True)
                ]
            )
            for k in fns
            if k != "plain_rev"
        }
        cases.append({"model": name, "batch": 1, "timings": t, "overhead_us": diffs})
        print(
            f"  overhead {name:>8} B=1  jacsens {t['jacsens_rev']['median'] * 1e6:8.1f} µs"
            f"  plain {t['plain_rev']['median'] * 1e6:8.1f} µs"
            f"  overhead {diffs['jacsens_rev']['median']:8.1f} µs",
            flush=True,
        )
    return cases


def measure_compile(reps: int, rng: random.Random, models=COMPILE_MODELS) -> list:
    """First-call time (trace + compile + one run) after clearing every cache; and a warm call."""
    import jax

    import jacsens

    cases = []
    for name in models:
        model_s, Xs = make_inputs(name, SENS_ROWS)
        model_j, Xj = make_inputs(name, 256)
        fns = {
            "sensitivity": lambda m=model_s, X=Xs: (
                jacsens.sensitivity(m, X, chunk_size=SENS_CHUNK, progress=False).dgsm
            ),
            "input_jacobian_auto": lambda m=model_j, X=Xj: jacsens.input_jacobian(m, X),
        }
        samples: dict[str, list[float]] = {k: [] for k in fns}
        cleared: list[str] = []
        order = list(fns)
        for _ in range(reps):
            rng.shuffle(order)
            for k in order:
                cleared = clear_all_caches()
                samples[k].append(_run(fns[k], 1))
        for k, fn in fns.items():
            warm = statistics.median(_run(fn, 1) for _ in range(3))
            rec = {"samples": samples[k], "warm_s": warm, **_quartiles(samples[k])}
            cases.append({"model": name, "fn": k, "cleared": cleared, **rec})
            print(
                f"  compile {name:>8} {k:<20} first {rec['median']:7.3f} s"
                f" [{rec['min']:.3f}, {rec['max']:.3f}]  warm {warm * 1e3:8.2f} ms",
                flush=True,
            )
        jax.clear_caches()
    return cases


# ---------------------------------------------------------------------------------------
# Runs: one tree in this process, or two trees alternated in worker processes
# ---------------------------------------------------------------------------------------


def _tree_info() -> dict[str, Any]:
    import jacsens

    tree = Path(jacsens.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # A tree measured between commits is recorded with the files that differ from HEAD.
        changed = subprocess.run(
            ["git", "-C", str(tree), "status", "--porcelain", "--", "jacsens"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        commit, changed = None, None
    return {
        "jacsens_path": str(tree),
        "commit": commit,
        "dirty": None if changed is None else bool(changed),
        "changed_files": changed,
    }


def metadata() -> dict[str, Any]:
    """Versions, device and date of a run."""
    import equinox
    import jax

    dev = jax.local_devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "equinox": equinox.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": getattr(dev, "device_kind", str(dev)),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
    }


def measure_all(sizes: dict[str, int], seed: int) -> dict[str, Any]:
    """The three measures in this process, on the importable jacsens."""
    import jax

    jax.config.update("jax_enable_x64", False)
    rng = random.Random(seed)
    tree = _tree_info()
    print(f"jacsens from {tree['jacsens_path']} @ {tree['commit']}", flush=True)
    return {
        "tree": tree,
        "ratios": measure_ratios(sizes["rounds"], rng),
        "overhead": measure_overhead(sizes["rounds"], rng),
        "compile": measure_compile(sizes["compile_reps"], rng),
    }


def _worker(tree: Path, sizes: dict[str, int], seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker.json"
        env = dict(os.environ, PYTHONPATH=str(tree))
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(out),
            "--rounds",
            str(sizes["rounds"]),
            "--compile-reps",
            str(sizes["compile_reps"]),
            "--seed",
            str(seed),
        ]
        subprocess.run(cmd, env=env, check=True, cwd=tempfile.gettempdir())
        data = json.loads(out.read_text())
    got = Path(data["tree"]["jacsens_path"]).resolve()
    if got != tree.resolve():
        raise RuntimeError(f"worker for {tree} imported jacsens from {got}")
    return data


def _pool_workers(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One tree's figures over its workers: medians of worker medians; compile pools."""
    ratios = []
    for i, case in enumerate(runs[0]["ratios"]):
        per = [r["ratios"][i] for r in runs]
        ratios.append(
            {
                "model": case["model"],
                "batch": case["batch"],
                "agree": all(c["agree"] for c in per),
                "ratio": _quartiles([c["ratio"]["median"] for c in per]),
                "jacsens_s": _quartiles([c["timings"]["jacsens_rev"]["median"] for c in per]),
                "plain_s": _quartiles([c["timings"]["plain_rev"]["median"] for c in per]),
            }
        )
    overhead = []
    for i, case in enumerate(runs[0]["overhead"]):
        per = [r["overhead"][i] for r in runs]
        overhead.append(
            {
                "model": case["model"],
                "batch": 1,
                "overhead_us": {
                    k: _quartiles([c["overhead_us"][k]["median"] for c in per])
                    for k in case["overhead_us"]
                },
                "plain_us": _quartiles([c["timings"]["plain_rev"]["median"] * 1e6 for c in per]),
            }
        )
    compile_ = []
    for i, case in enumerate(runs[0]["compile"]):
        per = [r["compile"][i] for r in runs]
        pooled = [s for c in per for s in c["samples"]]
        compile_.append(
            {
                "model": case["model"],
                "fn": case["fn"],
                "cleared": case["cleared"],
                "samples": pooled,
                "warm_s": statistics.median(c["warm_s"] for c in per),
                **_quartiles(pooled),
            }
        )
    return {"ratios": ratios, "overhead": overhead, "compile": compile_}


def compare(trees: dict[str, Path], workers: int, sizes: dict[str, int], seed: int) -> dict:
    """Alternate worker processes on the trees, a random order per round of workers."""
    rng = random.Random(seed)
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    order = list(trees)
    for w in range(workers):
        rng.shuffle(order)
        for name in order:
            print(f"worker {w + 1}/{workers}: {name} ({trees[name]})", flush=True)
            raw[name].append(_worker(trees[name], sizes, rng.randrange(2**31)))
    return {
        "trees": {name: raw[name][0]["tree"] for name in trees},
        "pooled": {name: _pool_workers(raw[name]) for name in trees},
        "workers": raw,
    }


# ---------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------


def summary_single(res: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a one-tree run."""
    by = {(c["model"], c["batch"]): c for c in res["ratios"]}
    seed256 = by.get(("seed", 256))
    out: dict[str, Any] = {
        "ratio": {f"{m}@{b}": c["ratio"]["median"] for (m, b), c in by.items()},
        "overhead_us_B1": {
            c["model"]: c["overhead_us"]["jacsens_rev"]["median"] for c in res["overhead"]
        },
        "compile_s": {f"{c['model']}/{c['fn']}": c["median"] for c in res["compile"]},
    }
    seed1 = next((c for c in res["overhead"] if c["model"] == "seed"), None)
    if seed1 is not None and "jacsens_auto" in seed1["overhead_us"]:
        out["overhead_us_B1"]["seed(auto)"] = seed1["overhead_us"]["jacsens_auto"]["median"]
    if seed256 is not None:
        t = seed256["timings"]
        out["overhead_us_seed_B256"] = (t["jacsens_rev"]["median"] - t["plain_rev"]["median"]) * 1e6
    return out


def table_single(res: dict[str, Any]) -> str:
    lines = [f"{'model':>8} {'B':>4} {'jacsens ms':>11} {'plain ms':>9} {'ratio':>6} {'IQR':>13}"]
    for c in res["ratios"]:
        t, r = c["timings"], c["ratio"]
        lines.append(
            f"{c['model']:>8} {c['batch']:>4} {t['jacsens_rev']['median'] * 1e3:11.3f}"
            f" {t['plain_rev']['median'] * 1e3:9.3f} {r['median']:6.2f}"
            f"  [{r['q1']:.2f}, {r['q3']:.2f}]" + ("" if c["agree"] else "  (DISAGREE)")
        )
    lines.append("")
    lines.append(f"{'model':>8}  per-call overhead at B=1, µs (jacsens - plain) [IQR]")
    for c in res["overhead"]:
        for k, q in c["overhead_us"].items():
            lines.append(
                f"{c['model']:>8}  {k:<13} {q['median']:9.1f}  [{q['q1']:.1f}, {q['q3']:.1f}]"
            )
    lines.append("")
    lines.append(f"{'model':>8}  {'function':<20} first call s [min, max]   warm ms")
    for c in res["compile"]:
        lines.append(
            f"{c['model']:>8}  {c['fn']:<20} {c['median']:7.3f} [{c['min']:.3f}, {c['max']:.3f}]"
            f"  {c['warm_s'] * 1e3:8.2f}"
        )
    return "\n".join(lines)


def table_compare(res: dict[str, Any]) -> str:
    names = list(res["pooled"])
    a, b = names
    pa, pb = res["pooled"][a], res["pooled"][b]
    lines = [f"ratio input_jacobian(rev) / plain (median over workers [min, max]): {a} | {b}"]
    for ca, cb in zip(pa["ratios"], pb["ratios"], strict=True):
        ra, rb = ca["ratio"], cb["ratio"]
        lines.append(
            f"{ca['model']:>8} B={ca['batch']:<4} {ra['median']:6.2f} [{ra['min']:.2f}, "
            f"{ra['max']:.2f}] | {rb['median']:6.2f} [{rb['min']:.2f}, {rb['max']:.2f}]"
        )
    lines.append("")
    lines.append(f"per-call overhead at B=1, µs: {a} | {b}")
    for ca, cb in zip(pa["overhead"], pb["overhead"], strict=True):
        for k in ca["overhead_us"]:
            qa, qb = ca["overhead_us"][k], cb["overhead_us"].get(k)
            right = f"{qb['median']:9.1f} [{qb['min']:.1f}, {qb['max']:.1f}]" if qb else "-"
            lines.append(
                f"{ca['model']:>8} {k:<13} {qa['median']:9.1f} [{qa['min']:.1f}, "
                f"{qa['max']:.1f}] | {right}"
            )
    lines.append("")
    lines.append(f"first call after clearing caches, s (median [min, max]): {a} | {b}  ({b}/{a})")
    for ca, cb in zip(pa["compile"], pb["compile"], strict=True):
        lines.append(
            f"{ca['model']:>8} {ca['fn']:<20} {ca['median']:6.3f} [{ca['min']:.3f}, "
            f"{ca['max']:.3f}] | {cb['median']:6.3f} [{cb['min']:.3f}, {cb['max']:.3f}]"
            f"  ({cb['median'] / ca['median']:.2f})"
        )
    return "\n".join(lines)


def write_json(obj: Any, path: Path) -> Path:
    """Write atomically with jacsens' helper when importable, else tmp file + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        from jacsens._atomic import atomic_write_json
    except ImportError:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, path)
    else:
        atomic_write_json(path, obj, indent=1)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="run", help="suffix of the results file")
    parser.add_argument("--quick", action="store_true", help="few rounds (noisier)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per pair")
    parser.add_argument("--compile-reps", type=int, default=None, help="cold first calls")
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar="NAME=TREE",
        default=None,
        help="alternate worker processes on two source trees, e.g. before=/tmp/before after=.",
    )
    parser.add_argument("--workers", type=int, default=None, help="workers per tree (--compare)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    sizes = {
        "rounds": args.rounds or (5 if args.quick else 15),
        "compile_reps": args.compile_reps or (2 if args.quick else 5),
    }
    if args.worker is not None:
        res = measure_all(sizes, args.seed)
        args.worker.write_text(json.dumps(res))
        return res

    date = datetime.date.today().isoformat()
    path = args.out or ROOT / "benchmarks" / "results" / f"cpu-{date}-engine-{args.label}.json"
    if args.compare:
        trees = {}
        for spec in args.compare:
            name, sep, tree = spec.partition("=")
            if not sep:
                parser.error(f"--compare takes NAME=TREE, got {spec!r}")
            trees[name] = Path(tree).resolve()
        workers = args.workers or (2 if args.quick else 4)
        res = compare(trees, workers, sizes, args.seed)
        text = table_compare(res)
        results = {
            "meta": metadata(),
            "args": {**sizes, "workers": workers, "trees": {k: str(v) for k, v in trees.items()}},
            **res,
        }
    else:
        res = measure_all(sizes, args.seed)
        text = table_single(res)
        results = {
            "meta": metadata(),
            "args": sizes,
            **res,
            "summary": summary_single(res),
        }
    print()
    print(text)
    write_json(results, path)
    print(f"\nresults written to {path}")
    return results


if __name__ == "__main__":
    main()
