"""Chunking over the batch axis to bound memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._memory import auto_chunk_size, memory_budget, run_with_backoff


def map_chunks(fn: Callable[..., Any], *arrays: jax.Array, chunk_size: int | None) -> Any:
    """Apply a batched function `fn` to `arrays` in chunks of `chunk_size` rows.

    `fn` maps arrays with a leading batch axis to a pytree of arrays with the same leading
    axis. The full chunks run under `jax.lax.map` (one compiled body, bounded memory); a
    final partial chunk, if any, runs once more on its own. No padding rows are computed,
    so results equal `fn(*arrays)` up to floating-point round-off (XLA may fuse or block
    the smaller problem differently; in float64 the difference is ~1e-16 relative).
    """
    B = arrays[0].shape[0]
    if chunk_size is None or chunk_size >= B:
        return fn(*arrays)
    n_full = B // chunk_size
    split = n_full * chunk_size
    main = tuple(a[:split].reshape(n_full, chunk_size, *a.shape[1:]) for a in arrays)
    out = jax.lax.map(lambda xs: fn(*xs), main)
    out = jax.tree.map(lambda o: o.reshape(split, *o.shape[2:]), out)
    if split == B:
        return out
    rest = fn(*(a[split:] for a in arrays))
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), out, rest)


def run_chunked(
    call: Callable[[int | None], Any],
    chunk_size: int | str | None,
    n_rows: int,
    bytes_per_row: float,
    *,
    traced: bool,
) -> Any:
    """Run `call(chunk)` with `chunk_size`, or with `chunk_size="auto"` the largest chunk
    whose estimated memory (`bytes_per_row` per row) fits the device's budget
    (`jacsens._memory.memory_budget`), halving it after an out-of-memory error.

    Under an outer `jit` (`traced`), the chunk is chosen but out-of-memory errors surface
    when the caller's program runs, where they cannot be retried here.
    """
    if chunk_size != "auto":
        return call(chunk_size)
    chunk = auto_chunk_size(max(bytes_per_row, 1.0), n_rows, memory_budget())

    def step(c: int) -> Any:
        out = call(None if c >= n_rows else c)
        # block, so that an allocation failure is raised here, where it can be retried
        return out if traced else jax.block_until_ready(out)

    if traced:
        return step(chunk)
    return run_with_backoff(step, chunk, what="chunk_size")
