"""Checkpoints: a partial `SensitivityResult` plus the progress of the run and its identity.

A checkpoint is written in the result's own checksummed `.npz` format (see `_result`), its
header extended by `checkpoint`: the run's identity (what must match for a resume to be
valid), `rows_done` (rows consumed, used or omitted) and the `chunk_size` in use. So
`SensitivityResult.load(checkpoint_path)` shows the partial result of a run.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

import equinox as eqx
import jax
import numpy as np

from ._result import SensitivityResult, header_int, read_file, result_from, write_file
from ._sources import AbstractSource, to_host

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _describe(obj: Any) -> str:
    """A process-independent description of a non-array leaf of a model."""
    if obj is None or isinstance(obj, bool | int | float | complex | str | bytes):
        return repr(obj)
    if callable(obj):
        name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
        text = f"{getattr(obj, '__module__', None) or type(obj).__module__}.{name}"
        code = getattr(obj, "__code__", None)  # plain Python functions: their bytecode
        if code is not None:
            text += ":" + hashlib.sha256(code.co_code).hexdigest()[:16]
        return text
    return _ADDRESS.sub("", f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}")


def model_fingerprint(model: Any) -> str:
    """What identifies the model in a checkpoint: a SHA-256 over its pytree structure
    (with static fields, memory addresses stripped), the shape, dtype and bytes of every
    array leaf, and a description of every other leaf (for a plain Python function: its
    module, name and bytecode; values it reads from globals are not seen).
    """
    leaves, treedef = jax.tree.flatten(model)
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    h.update(_ADDRESS.sub("", str(treedef)).encode())
    for leaf in leaves:
        if eqx.is_array(leaf):
            a = np.ascontiguousarray(to_host(leaf))
            h.update(f"|{a.shape}:{a.dtype.str}|".encode())
            h.update(a.tobytes())
        else:
            h.update(f"|{_describe(leaf)}|".encode())
    return h.hexdigest()


def run_identity(
    model: Any,
    source: AbstractSource,
    in_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    interactions: bool,
    nan_policy: str,
) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoint.

    Neither the chunk size nor the mode is part of it: rows are resumed by index, and
    another chunk size or mode changes the result only by round-off. (`"auto"` adopts the
    saved ones; an explicit mode must match the saved one, see `sensitivity`.)
    """
    return {
        "in_shape": list(in_shape),
        "out_shape": list(out_shape),
        "n_total": source.n,
        "interactions": interactions,
        # rows omitted under "omit" must not reappear in a result asked for with "raise"
        "nan_policy": nan_policy,
        "model": model_fingerprint(model),
        "data": source.fingerprint(),
    }


def check_destination(path: str | os.PathLike, argname: str) -> str:
    """`path` as a string, or a `ValueError` naming `argname` if it cannot be written
    (missing folder, a folder in its place, not `.npz`): checked before any work."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"`{argname}` must end in '.npz', got {path!r}.")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"`{argname}` {path!r}: the folder {folder!r} does not exist.")
    if os.path.isdir(path):
        raise ValueError(f"`{argname}` {path!r} is a folder, not a file.")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"`{argname}` {path!r}: the folder {folder!r} is not writable.")
    return path


class Checkpoint(eqx.Module):
    """A partial result and the progress of the run that produced it.

    **Fields:**

    - `result`: the `SensitivityResult` of the rows done.
    - `rows_done`: rows consumed so far (used or omitted), from the start of the data.
    - `chunk_size`: the chunk size in use when it was saved.
    - `identity`: the run's identity (`run_identity`).
    """

    result: SensitivityResult
    rows_done: int = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True)
    identity: dict[str, Any] = eqx.field(static=True)

    def save(self, path: str) -> None:
        header = self.result._header()
        header["checkpoint"] = {
            "rows_done": self.rows_done,
            "chunk_size": self.chunk_size,
            "identity": self.identity,
        }
        write_file(path, header, self.result.jac, self.result.hess, self.result.replicates)


def load_checkpoint(path: str, identity: dict[str, Any]) -> Checkpoint:
    """Read the checkpoint at `path` and check it belongs to the run with `identity`.

    **Raises:**

    `ValueError` naming `checkpoint` and the file if it is not an intact checkpoint, its
    counters disagree with its statistics, or it belongs to a different run.
    """
    try:
        header, jac, hess = read_file(path)
        result = result_from(header, jac, hess, path)
        ck = header.get("checkpoint")
        if not isinstance(ck, dict) or not isinstance(ck.get("identity"), dict):
            raise ValueError(f"{path!r} is a saved result, not a checkpoint.")
        rows_done = header_int(ck, "rows_done", path)
        chunk_size = header_int(ck, "chunk_size", path, minimum=1)
    except ValueError as e:
        raise ValueError(f"`checkpoint` {e}") from e
    saved = ck["identity"]
    for k, v in identity.items():
        if saved.get(k) != v:
            raise ValueError(
                f"`checkpoint` {path!r} belongs to a different run: its {k} is "
                f"{saved.get(k)!r}, this run has {v!r}. Use another path or delete the file."
            )
    # the counters must account for every row the statistics saw (rows = used + omitted)
    if rows_done != result.n + result.n_omitted or (
        identity["n_total"] is not None and rows_done > identity["n_total"]
    ):
        raise ValueError(
            f"`checkpoint` {path!r} is not an intact checkpoint: rows_done={rows_done} but "
            f"its statistics hold {result.n} rows used and {result.n_omitted} omitted."
        )
    return Checkpoint(result, rows_done, chunk_size, saved)
