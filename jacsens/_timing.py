"""The small timing loop behind `jacsens bench`.

The full benchmark harness (suites, cost-model comparison, JSON and plots) lives outside the
package, in `benchmarks/harness.py`; this module keeps what the command needs: compile
first, then time the contenders interleaved (one call of each per round, in a fresh random
order each round, so that a busy machine slows them all alike) and report medians.
"""

from __future__ import annotations

import datetime
import functools
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from . import _modes
from ._cost import format_seconds as format_seconds

PLAIN = ("plain_rev", "plain_fwd")
# every mode `auto` may choose from, and `auto` itself
MODES = (*(name for name, cls in _modes.MODES.items() if cls.auto_rank is not None), "auto")


def time_interleaved(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 5, min_sample_s: float = 0.01
) -> dict[str, list[float] | str]:
    """Seconds per call of each function, sampled interleaved.

    Each function is called once first, untimed (tracing and compilation); one that raises
    there or later is reported by its error message instead of samples. Then for each of
    `repeats` rounds every function runs, in a fresh random order (seeded), `number` times
    back to back, where `number` makes a sample last at least `min_sample_s`.

    **Arguments:**

    - `fns`: name -> a function of no arguments returning arrays (a pytree).
    - `repeats`: rounds, at least 1.
    - `min_sample_s`: shortest sample in seconds; faster functions are looped.

    **Returns:**

    name -> a list of `repeats` seconds per call, or the error message (`"Type: text"`).
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be a positive int, got {repeats!r}.")
    out: dict[str, list[float] | str] = {}
    number: dict[str, int] = {}
    for name, fn in fns.items():
        try:
            jax.block_until_ready(fn())  # compile
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            once = time.perf_counter() - t0
        except Exception as e:  # recorded, the others still run
            out[name] = f"{type(e).__name__}: {e}"[:300]
            continue
        number[name] = max(1, min(1000, int(min_sample_s / max(once, 1e-7)) + 1))
        out[name] = []
    rng = random.Random(0)
    for _ in range(repeats):
        live = [n for n in fns if isinstance(out[n], list)]
        for name in rng.sample(live, len(live)):
            try:
                t0 = time.perf_counter()
                for _ in range(number[name]):
                    jax.block_until_ready(fns[name]())
                out[name].append((time.perf_counter() - t0) / number[name])  # type: ignore[union-attr]
            except Exception as e:
                out[name] = f"{type(e).__name__}: {e}"[:300]
    return out


def _nets(quick: bool) -> list[tuple[str, int, tuple[int, ...], int | str, int]]:
    """(name, in, widths, out, batch): shapes where each mode wins somewhere."""
    scale = 1 if quick else 4
    return [
        ("seed", 52, (20, 10), "scalar", 1024 * scale),
        ("bottleneck", 784, (1024, 16, 1024), 784, 8 * scale),
        ("tall", 1024, (256, 256), 4, 64 * scale),
        ("wide", 4, (256, 256), 1024, 64 * scale),
    ]


def _contenders(model: Any, X: jax.Array) -> dict[str, Callable[[], Any]]:
    import jacsens

    fns: dict[str, Callable[[], Any]] = {
        m: functools.partial(jacsens.input_jacobian, model, X, mode=m) for m in MODES
    }
    fns["plain_rev"] = functools.partial(jax.jit(jax.vmap(jax.jacrev(model))), X)
    fns["plain_fwd"] = functools.partial(jax.jit(jax.vmap(jax.jacfwd(model))), X)
    return fns


def bench_jacobian(quick: bool = True) -> dict[str, Any]:
    """Time `input_jacobian` in every mode `auto` chooses from, and auto, against plain
    `jax.jit(jax.vmap(jax.jacrev(model)))` and `jax.jacfwd` on four float32 MLPs.

    **Arguments:**

    - `quick`: small batches and 3 rounds (seconds); otherwise 4× the batches, 7 rounds.

    **Returns:**

    `{"meta": {...}, "cases": [...]}`: per network its shape, batch, the mode `auto` picks
    (`jacobian_cost(model, batch).best`), the median seconds per call of each contender
    (`None` where it failed, with the message under `errors`) and the fastest mode.
    """
    import jacsens

    cases = []
    for name, n_in, widths, n_out, batch in _nets(quick):
        model = jacsens.MLP(n_in, widths, n_out, key=jax.random.key(0), dtype=jnp.float32)
        X = jax.random.normal(jax.random.key(1), (batch, n_in), jnp.float32)
        fns = _contenders(model, X)
        samples = time_interleaved(fns, repeats=3 if quick else 7)
        medians = {
            k: statistics.median(v) if isinstance(v, list) else None for k, v in samples.items()
        }
        timed = {m: medians[m] for m in MODES if m != "auto" and medians[m] is not None}
        out = 1 if n_out == "scalar" else n_out
        cases.append(
            {
                "net": "-".join(map(str, (n_in, *widths, out))),
                "name": name,
                "batch": batch,
                "auto_choice": jacsens.jacobian_cost(model, batch).best,
                "median_s": medians,
                "errors": {k: v for k, v in samples.items() if isinstance(v, str)},
                "fastest": min(timed, key=timed.__getitem__) if timed else None,
            }
        )
    return {"meta": metadata(quick), "cases": cases}


def metadata(quick: bool) -> dict[str, Any]:
    """The machine and versions a timing was taken on."""
    import jacsens

    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jacsens": jacsens.__version__,
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": getattr(jax.local_devices()[0], "device_kind", "?"),
        "quick": quick,
    }


def bench_table(results: dict[str, Any]) -> str:
    """The results of `bench_jacobian` as a plain-text table, one line per network."""
    names = [*MODES, *PLAIN]
    header = ["net", "B", *names, "auto→", "fastest"]
    rows = [header]
    for c in results["cases"]:
        times = [format_seconds(c["median_s"][m]) for m in names]
        rows.append([c["net"], str(c["batch"]), *times, c["auto_choice"], c["fastest"] or "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
