"""Atomic file writes: a crash or an exception never leaves a half-written file."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from typing import IO, Any


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(f)` on a temporary binary file next to `path`, then rename it to `path`.

    The data are flushed and fsync'ed before `os.replace`, so `path` holds either its old
    contents or the complete new ones. On any exception the temporary file is removed and
    an existing `path` is left untouched. The new file gets the usual umask permissions
    (not `mkstemp`'s 0600).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write `obj` as strict JSON (non-finite floats become `null`), atomically."""
    text = json.dumps(_nan_to_none(obj), indent=indent, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
