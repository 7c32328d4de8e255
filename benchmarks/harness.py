"""Benchmark harness of the scripts in `benchmarks/` (they import it as `harness`).

Timing rules (see `benchmarks/README.md`): the first call of every function (tracing and
compilation) is timed on its own and excluded; every timed call ends with
`jax.block_until_ready`; functions compared with each other are timed *interleaved*, one call
of each per repeat in a fresh random order, so that a noisy machine slows all of them alike
and none always follows the same neighbour (fast ones are re-warmed, untimed, before each
sample); reported are the median and the spread (interquartile range, min, max) of the
repeats. A function that fails (out of
memory, an unsupported model, any exception) is recorded as a failure with its message and
the suite goes on.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import random
import statistics
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from jacsens import MLP, input_jacobian, jacobian_cost
from jacsens._atomic import atomic_write_json

JACSENS_MODES = ("rev", "fwd", "chain", "auto", "backprop")
PLAIN_MODES = ("plain_rev", "plain_fwd")
# `input_jacobian(mode="rev")` called inside the user's own `jax.jit`: no per-call Python
# validation or dispatch, so its ratio to plain_rev isolates the compiled program.
EXTRA_MODES = ("rev_jit",)
ALL_MODES = JACSENS_MODES + PLAIN_MODES
KNOWN_MODES = ALL_MODES + EXTRA_MODES
COST_MODES = ("rev", "fwd", "chain")


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Timing:
    """Wall-clock statistics of one function, in seconds per call.

    **Fields:**

    - `ok`: whether the function ran; if not, `error` holds the message.
    - `skipped`: not run on purpose (predicted too slow); then `ok` is false too.
    - `first_s`: the first call (tracing + compilation + one run), excluded from the rest.
    - `median_s`, `q1_s`, `q3_s`, `min_s`, `max_s`: statistics over `repeats` samples.
    - `number`: calls averaged inside each sample (more than 1 for very fast functions).
    - `peak_bytes`: the device's `peak_bytes_in_use` after the runs, where the backend
        reports memory statistics (`None` on CPU). It is the process's high-water mark and
        cannot be reset, so it is per function only when functions run in increasing
        order of memory; `temp_bytes` + `out_bytes` is the per-function figure.
    - `temp_bytes`, `out_bytes`: temporary and output buffer sizes of the compiled
        program (`compiled.memory_analysis()`), where available.
    """

    ok: bool = True
    error: str | None = None
    skipped: bool = False
    first_s: float | None = None
    median_s: float | None = None
    q1_s: float | None = None
    q3_s: float | None = None
    min_s: float | None = None
    max_s: float | None = None
    repeats: int = 0
    number: int = 1
    samples: list[float] = dataclasses.field(default_factory=list)
    peak_bytes: int | None = None
    temp_bytes: int | None = None
    out_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _failure(exc: BaseException) -> Timing:
    msg = f"{type(exc).__name__}: {exc}".strip()
    return Timing(ok=False, error=msg[:500])


def _stats(t: Timing, samples: list[float]) -> Timing:
    t.samples = samples
    t.repeats = len(samples)
    t.median_s = statistics.median(samples)
    t.min_s, t.max_s = min(samples), max(samples)
    if len(samples) >= 2:
        q = np.quantile(np.asarray(samples), [0.25, 0.75])
        t.q1_s, t.q3_s = float(q[0]), float(q[1])
    else:
        t.q1_s = t.q3_s = samples[0]
    return t


def _peak_bytes() -> int | None:
    try:
        stats = jax.local_devices()[0].memory_stats()
    except Exception:  # backends without memory statistics
        return None
    if not stats:
        return None
    value = stats.get("peak_bytes_in_use")
    return None if value is None else int(value)


def _call(fn: Callable, args: tuple, number: int) -> float:
    out = None
    t0 = time.perf_counter()
    for _ in range(number):
        out = jax.block_until_ready(fn(*args))
    elapsed = time.perf_counter() - t0
    # The last result is freed here, untimed, not inside the next function's sample.
    del out
    return elapsed / number


def time_fns(
    fns: dict[str, tuple[Callable, tuple]],
    *,
    repeats: int = 5,
    warmup: int = 1,
    min_sample_s: float = 0.02,
    rewarm_s: float = 0.05,
    memory: bool = False,
) -> dict[str, Timing]:
    """Time several functions side by side, interleaved.

    Each function is first called once (tracing, compilation: `first_s`) and `warmup` more
    times, untimed. Then for each of `repeats` rounds every function runs once (or `number`
    times back to back when one call is shorter than `min_sample_s`), in a random order
    drawn afresh each round (seeded, reproducible). A function faster than `rewarm_s` is
    called once more, untimed, right before its sample, so that its caches are its own and
    not those of the function timed before it. A function whose first call raises is
    recorded as failed and left out.

    **Arguments:**

    - `fns`: name -> `(fn, args)`; `fn(*args)` must return arrays (a pytree).
    - `repeats`: timed rounds, at least 1.
    - `warmup`: untimed calls after the first.
    - `min_sample_s`: shortest sample; faster functions are looped inside a sample.
    - `rewarm_s`: functions faster than this get an untimed call before each sample.
    - `memory`: also compile each function under `jax.jit` once more to read the sizes of
        its temporary and output buffers (`temp_bytes`, `out_bytes`).

    **Returns:**

    name -> `Timing`, in the order of `fns`.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be at least 1, got {repeats}.")
    if warmup < 0:
        raise ValueError(f"`warmup` must be non-negative, got {warmup}.")
    results: dict[str, Timing] = {}
    live: list[str] = []
    numbers: dict[str, int] = {}
    rewarm: dict[str, bool] = {}
    for name, (fn, args) in fns.items():
        try:
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            first = time.perf_counter() - t0
            once = first
            for _ in range(warmup):
                once = _call(fn, args, 1)
        except Exception as exc:
            results[name] = _failure(exc)
            continue
        temp, out = _compiled_bytes(fn, args) if memory else (None, None)
        results[name] = Timing(first_s=first, temp_bytes=temp, out_bytes=out)
        numbers[name] = max(1, min(1000, math.ceil(min_sample_s / max(once, 1e-7))))
        rewarm[name] = once < rewarm_s
        live.append(name)
    samples: dict[str, list[float]] = {name: [] for name in live}
    rng = random.Random(0)
    for _ in range(repeats):
        # A fresh order each round: a function is not always timed right after the same
        # (say, a long-running) one, whose after-effects would then bias it alone.
        order = rng.sample(live, len(live))
        for name in order:
            if not results[name].ok:
                continue
            fn, args = fns[name]
            try:
                if rewarm[name]:
                    _call(fn, args, 1)
                samples[name].append(_call(fn, args, numbers[name]))
            except Exception as exc:
                results[name] = _failure(exc)
    for name in live:
        if results[name].ok:
            results[name].number = numbers[name]
            _stats(results[name], samples[name])
            results[name].peak_bytes = _peak_bytes()
    return {name: results[name] for name in fns}


def time_fn(fn: Callable, *args: Any, repeats: int = 5, warmup: int = 1) -> Timing:
    """Time one function: `time_fns({"fn": (fn, args)})["fn"]`; failures are recorded."""
    return time_fns({"fn": (fn, args)}, repeats=repeats, warmup=warmup)["fn"]


def _compiled_bytes(fn: Callable, args: tuple) -> tuple[int | None, int | None]:
    lower = getattr(fn, "lower", None) or jax.jit(fn).lower
    try:
        analysis = lower(*args).compile().memory_analysis()
    except Exception:  # not every backend or wrapper supports the analysis
        return None, None
    if analysis is None:
        return None, None
    return int(analysis.temp_size_in_bytes), int(analysis.output_size_in_bytes)


# ---------------------------------------------------------------------------------------
# Metadata and output
# ---------------------------------------------------------------------------------------


def metadata() -> dict[str, Any]:
    """Versions, device and date of a benchmark run."""
    import equinox

    from jacsens import __version__

    dev = jax.local_devices()[0]
    backend = jax.default_backend()
    kind = getattr(dev, "device_kind", str(dev))
    if backend == "cpu":
        kind = f"{kind} ({platform.processor() or platform.machine()})"
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jacsens": __version__,
        "jax": jax.__version__,
        "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        "equinox": equinox.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "backend": backend,
        "device_kind": kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "x64": bool(jax.config.jax_enable_x64),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
    }


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return None


def device_tag(meta: dict[str, Any] | None = None) -> str:
    """A file-name friendly device name: `cpu`, `nvidia-h100-80gb-hbm3`, ..."""
    meta = meta or metadata()
    if meta["backend"] == "cpu":
        return "cpu"
    kind = str(meta["device_kind"]).lower()
    return "".join(c if c.isalnum() else "-" for c in kind).strip("-") or meta["backend"]


def default_path(suite: str, meta: dict[str, Any] | None = None, root: str | Path = ".") -> Path:
    """`benchmarks/results/<device>-<date>-<suite>.json` under `root`."""
    meta = meta or metadata()
    date = meta["date"][:10]
    return Path(root) / "benchmarks" / "results" / f"{device_tag(meta)}-{date}-{suite}.json"


def write_json(data: dict[str, Any], path: str | Path) -> Path:
    """Write `data` as strict JSON atomically (non-finite floats become `null`), creating
    the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data, indent=1)
    return path


def format_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of `rows` (dicts) with the given `columns`."""
    cells = [[str(c) for c in columns]]
    for row in rows:
        cells.append(["-" if row.get(c) is None else str(row.get(c)) for c in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = []
    for n, r in enumerate(cells):
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The input-Jacobian suite
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """A benchmark network: `MLP(in_size, widths, out_size)` run at `batch` rows."""

    name: str
    in_size: int
    widths: tuple[int, ...]
    out_size: int | str
    batch: int
    activation: str = "tanh"

    @property
    def label(self) -> str:
        out = 1 if self.out_size == "scalar" else self.out_size
        return "-".join(str(w) for w in (self.in_size, *self.widths, out))


def make_model(spec: NetSpec, seed: int = 0, dtype=jnp.float32) -> MLP:
    return MLP(
        spec.in_size,
        list(spec.widths),
        spec.out_size,
        spec.activation,
        key=jax.random.key(seed),
        dtype=dtype,
    )


def jacobian_fns(model: MLP, X: jax.Array, modes: Iterable[str] = ALL_MODES) -> dict:
    """name -> `(fn, args)` for each input-Jacobian mode (`plain_*`: plain `jax.jit`)."""
    fns: dict[str, tuple[Callable, tuple]] = {}
    for mode in modes:
        if mode == "plain_rev":
            fns[mode] = (jax.jit(jax.vmap(jax.jacrev(model))), (X,))
        elif mode == "plain_fwd":
            fns[mode] = (jax.jit(jax.vmap(jax.jacfwd(model))), (X,))
        elif mode == "rev_jit":
            fns[mode] = (jax.jit(lambda X: input_jacobian(model, X, mode="rev")), (X,))
        elif mode in JACSENS_MODES:
            fns[mode] = (lambda X, mode=mode: input_jacobian(model, X, mode=mode), (X,))
        else:
            raise ValueError(f"Unknown mode {mode!r}; expected one of {KNOWN_MODES}.")
    return fns


def _median(t: Timing | None) -> float | None:
    return t.median_s if t is not None and t.ok else None


def _stat(t: Timing | None, stat: str) -> float | None:
    if t is None or not t.ok:
        return None
    return t.median_s if stat == "median" else t.min_s


def paired_ratio(a: Timing | None, b: Timing | None) -> float | None:
    """Median over repeats of `a`'s time / `b`'s time in the same round (interleaved runs
    share the machine's load of that moment, so the per-round ratio is the steadier one)."""
    if a is None or b is None or not (a.ok and b.ok) or len(a.samples) != len(b.samples):
        return None
    return statistics.median(x / y for x, y in zip(a.samples, b.samples, strict=True))


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _cost_mode(mode: str, best: str) -> str:
    if mode == "auto":
        return best
    return mode.removeprefix("plain_").removesuffix("_jit")


def run_jacobian_case(
    spec: NetSpec,
    *,
    repeats: int = 5,
    modes: Sequence[str] = ALL_MODES,
    max_flops: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time every mode on one network and compare with the cost model.

    Modes whose cost-model FLOPs exceed `max_flops` are recorded as skipped, not run.

    **Returns:** a dict with the network, the batch, per-mode `Timing`s, the cost model's
    FLOPs/bytes and choice (`auto_choice`), the measured fastest of rev/fwd/chain, and
    whether auto's choice is within 10% of that fastest.
    """
    case: dict[str, Any] = {
        "name": spec.name,
        "net": spec.label,
        "in": spec.in_size,
        "out": 1 if spec.out_size == "scalar" else spec.out_size,
        "widths": list(spec.widths),
        "batch": spec.batch,
    }
    try:
        model = make_model(spec, seed)
        X = jax.random.normal(jax.random.key(seed + 1), (spec.batch, spec.in_size), jnp.float32)
        cost = jacobian_cost(model, spec.batch)
        case["cost"] = {
            "flops": cost.flops,
            "bytes": cost.bytes,
            "best": cost.best,
            "order": cost.order,
        }
        case["auto_choice"] = cost.best
        skipped = {
            m: Timing(
                ok=False,
                skipped=True,
                error=f"skipped: predicted {cost.flops[_cost_mode(m, cost.best)] / 1e9:.3g} "
                f"GFLOP > budget {max_flops / 1e9:.3g}",
            )
            for m in modes
            if max_flops is not None and cost.flops[_cost_mode(m, cost.best)] > max_flops
        }
        run = [m for m in modes if m not in skipped]
        timings = {**time_fns(jacobian_fns(model, X, run), repeats=repeats), **skipped}
        timings = {m: timings[m] for m in modes}
    except Exception as exc:
        case["error"] = f"{type(exc).__name__}: {exc}"[:500]
        case["traceback"] = traceback.format_exc(limit=3)
        case["timings"] = {}
        return case
    case["timings"] = {m: t.to_dict() for m, t in timings.items()}
    for stat in ("median", "min"):
        measured = {m: _stat(timings.get(m), stat) for m in COST_MODES}
        measured = {m: v for m, v in measured.items() if v is not None}
        if not measured:
            continue
        fastest = min(measured, key=measured.__getitem__)
        choice = measured.get(case["auto_choice"])
        suffix = "" if stat == "median" else "_min"
        case["fastest" + suffix] = fastest
        case["auto_within_10pct" + suffix] = (
            None if choice is None else bool(choice <= 1.10 * measured[fastest])
        )
    plain = [_median(timings.get(m)) for m in PLAIN_MODES]
    plain = [p for p in plain if p is not None]
    best_plain = min(plain) if plain else None
    case["rev_over_plain_rev"] = paired_ratio(timings.get("rev"), timings.get("plain_rev"))
    case["rev_jit_over_plain_rev"] = paired_ratio(timings.get("rev_jit"), timings.get("plain_rev"))
    case["best_plain_over_chain"] = _ratio(best_plain, _median(timings.get("chain")))
    case["best_plain_over_auto"] = _ratio(best_plain, _median(timings.get("auto")))
    return case


def summarise_jacobian(cases: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Headline figures of the Jacobian suite (medians over cases where defined)."""

    def collect(key, where=lambda c: True):
        return [c[key] for c in cases if c.get(key) is not None and where(c)]

    rev = collect("rev_over_plain_rev")
    rev_jit = collect("rev_jit_over_plain_rev")
    picks = collect("auto_within_10pct")
    picks_min = collect("auto_within_10pct_min")
    bottleneck = [c for c in cases if c["name"].startswith("bottleneck")]
    return {
        "rev_over_plain_rev_median": statistics.median(rev) if rev else None,
        "rev_over_plain_rev_max": max(rev) if rev else None,
        "rev_jit_over_plain_rev_median": statistics.median(rev_jit) if rev_jit else None,
        "auto_within_10pct_fraction": (sum(picks) / len(picks)) if picks else None,
        "auto_cases": len(picks),
        "auto_within_10pct_fraction_min": (sum(picks_min) / len(picks_min)) if picks_min else None,
        "bottleneck_best_plain_over_chain": [c.get("best_plain_over_chain") for c in bottleneck],
        "bottleneck_best_plain_over_auto": [c.get("best_plain_over_auto") for c in bottleneck],
    }


def _fail_tag(t: dict[str, Any]) -> str:
    return "skip" if t.get("skipped") else "FAIL"


def jacobian_table(cases: Sequence[dict[str, Any]], modes: Sequence[str] = ALL_MODES) -> str:
    rows = []
    for c in cases:
        row: dict[str, Any] = {"net": c["net"], "B": c["batch"]}
        for m in modes:
            t = c.get("timings", {}).get(m)
            if t is None:
                row[m] = None
            else:
                row[m] = format_seconds(t["median_s"]) if t["ok"] else _fail_tag(t)
        row["auto→"] = c.get("auto_choice")
        row["fastest"] = c.get("fastest")
        r = c.get("rev_over_plain_rev")
        row["rev/plain"] = None if r is None else f"{r:.2f}"
        rows.append(row)
    return format_table(rows, ["net", "B", *modes, "auto→", "fastest", "rev/plain"])


def run_jacobian_suite(
    specs: Sequence[NetSpec],
    *,
    repeats: int = 5,
    modes: Sequence[str] = ALL_MODES,
    max_flops: float | None = None,
    file: TextIO | None = None,
) -> dict[str, Any]:
    """Run `run_jacobian_case` on each spec; print one line per case to `file`."""
    cases = []
    for spec in specs:
        case = run_jacobian_case(spec, repeats=repeats, modes=modes, max_flops=max_flops)
        cases.append(case)
        if file is not None:
            ms = {
                m: format_seconds(t["median_s"]) if t["ok"] else _fail_tag(t)
                for m, t in case["timings"].items()
            }
            print(f"  {spec.name:<11}{spec.label:<24}B={spec.batch:<8}{ms}", file=file, flush=True)
    return {"suite": "jacobian_modes", "cases": cases, "summary": summarise_jacobian(cases)}


def summary_text(summary: dict[str, Any]) -> str:
    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    lines = [
        f"rev / plain vmap(jacrev), median over nets: {f(summary['rev_over_plain_rev_median'])}"
        f" (max {f(summary['rev_over_plain_rev_max'])})",
        "bottleneck AE, best of plain fwd/rev ÷ chain: "
        + ", ".join(f(x) + "x" for x in summary["bottleneck_best_plain_over_chain"]),
        "bottleneck AE, best of plain fwd/rev ÷ auto: "
        + ", ".join(f(x) + "x" for x in summary["bottleneck_best_plain_over_auto"]),
        f"auto within 10% of the fastest of rev/fwd/chain: "
        f"{f(summary['auto_within_10pct_fraction'], '{:.0%}')} of {summary['auto_cases']} cases",
    ]
    if summary.get("rev_jit_over_plain_rev_median") is not None:
        lines.insert(
            1,
            "rev inside the caller's jax.jit / plain vmap(jacrev): "
            + f(summary["rev_jit_over_plain_rev_median"]),
        )
    return "\n".join(lines)
