"""Memory budgets, chunk sizes that fit them, and backing off when they do not.

- `memory_budget(device, fraction)`: the bytes a computation may use on a device: a
  fraction of the free memory where the backend reports it (`device.memory_stats()`: GPU,
  TPU), else (CPU) a fraction of the available RAM, capped at `CPU_CAP_BYTES`.
- `auto_chunk_size(bytes_per_row, n_rows, budget)`: the largest power-of-two number of
  rows whose estimated peak fits the budget, capped at the data size.
- `run_with_backoff(step, chunk_size)`: runs `step(chunk_size)`; when the device runs out
  of memory (an XLA `RESOURCE_EXHAUSTED` error) it halves the chunk and runs it again,
  down to `minimum` rows, warning once per call. `step` must be restartable (it resumes
  from its own last finished work), which is what keeps the results those of a run with
  the smaller chunk from the start.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import jax

T = TypeVar("T")

logger = logging.getLogger("jacsens")

CPU_CAP_BYTES = 2 * 2**30
"""At most this many bytes on a device that reports no memory statistics (CPU): chunks
beyond a few hundred MiB no longer run faster there, and RAM is shared with the process."""

_CPU_FALLBACK_BYTES = 1 * 2**30  # if not even the available RAM can be read


def _available_ram() -> int | None:
    """Available physical memory in bytes: `MemAvailable` on Linux (counts reclaimable
    caches, unlike free pages), else free pages from `os.sysconf`."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def memory_budget(device: Any = None, fraction: float = 0.5) -> int:
    """Bytes of memory a computation on `device` may plan to use.

    **Arguments:**

    - `device`: a `jax.Device` (default: the first local device).
    - `fraction`: the share of the free memory to use, in `(0, 1]`.

    **Returns:**

    `fraction · (bytes_limit - bytes_in_use)` from `device.memory_stats()` where the
    backend reports them (GPU, TPU); otherwise (CPU) `fraction` of the available RAM,
    at most `CPU_CAP_BYTES` (1 GiB if the RAM cannot be read). At least 1 MiB.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"`fraction` must be a number in (0, 1], got {fraction!r}.")
    if not 0 < fraction <= 1:
        raise ValueError(f"`fraction` must be in (0, 1], got {fraction!r}.")
    if device is None:
        device = jax.local_devices()[0]
    elif not hasattr(device, "memory_stats"):
        raise TypeError(f"`device` must be a jax.Device or None, got {type(device).__name__}.")
    try:
        stats = device.memory_stats()
    except Exception:  # backends without the call raise (or return None)
        stats = None
    if stats and stats.get("bytes_limit"):
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        budget = int(fraction * max(free, 0))
    else:
        ram = _available_ram()
        budget = _CPU_FALLBACK_BYTES if ram is None else min(int(fraction * ram), CPU_CAP_BYTES)
    return max(budget, 2**20)


def auto_chunk_size(
    bytes_per_row: float, n_rows: int | None, budget: int, *, multiple: int = 1
) -> int:
    """The number of rows per chunk for a memory budget.

    **Arguments:**

    - `bytes_per_row`: estimated peak bytes per row (> 0).
    - `n_rows`: rows in the data, or `None` if unknown (a stream).
    - `budget`: bytes available (see `memory_budget`).
    - `multiple`: the chunk must be a multiple of this (the number of devices).

    **Returns:**

    The largest power of two `≤ budget / bytes_per_row` (at least 1), then capped at
    `n_rows` (one chunk for small data, with no padding beyond it), then rounded up to a
    multiple of `multiple`. Powers of two keep the set of compiled shapes small.
    """
    if not bytes_per_row > 0:
        raise ValueError(f"`bytes_per_row` must be > 0, got {bytes_per_row!r}.")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"`multiple` must be a positive int, got {multiple!r}.")
    rows = max(1, int(budget // bytes_per_row))
    rows = 1 << (rows.bit_length() - 1)
    if n_rows is not None:
        rows = max(1, min(rows, int(n_rows)))
    return -(-rows // multiple) * multiple


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is XLA running out of device memory."""
    names = {c.__name__ for c in type(error).__mro__}
    if not names & {"XlaRuntimeError", "JaxRuntimeError"}:
        return False
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def run_with_backoff(
    step: Callable[[int], T], chunk_size: int, *, minimum: int = 1, what: str = "chunk"
) -> T:
    """Run `step(chunk_size)`, halving `chunk_size` after every out-of-memory error.

    **Arguments:**

    - `step`: the work for one chunk size; called again with half the size after an
        out-of-memory error, so it must resume from its own last finished work.
    - `chunk_size`: the first size to try.
    - `minimum`: the smallest size (and the granularity: sizes stay multiples of it).
    - `what`: the name of the size in the warning.

    **Returns:**

    What `step` returns.

    **Raises:**

    The out-of-memory error itself once `chunk_size` is already `minimum`; any other
    error at once.
    """
    warned = False
    while True:
        try:
            return step(chunk_size)
        except Exception as e:
            if not is_out_of_memory(e) or chunk_size <= minimum:
                raise
            smaller = max(minimum, (chunk_size // 2) // minimum * minimum)
            if not warned:
                warnings.warn(
                    f"Out of device memory with {what}={chunk_size}; retrying with smaller "
                    f"{what}s (first {smaller}). Pass a smaller {what} to avoid the retries.",
                    RuntimeWarning,
                    stacklevel=2,
                )
                warned = True
            logger.info("out of memory at %s=%d, retrying with %d", what, chunk_size, smaller)
            chunk_size = smaller
