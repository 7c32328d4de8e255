"""Atomic file and folder writes: a crash or an exception never leaves a half-written result.

Temporary files and folders are hidden siblings of their destination whose names carry the
writer's process id, `.{name}.{pid}.{random}.tmp`. A writer that is killed (SIGKILL, power
loss) cannot remove its own; the next write to the same destination removes those whose
process is gone, so a killed save leaves at most one stale file, never an accumulation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from typing import IO, Any

import numpy as np

_TMP_SUFFIX = ".tmp"


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:  # platforms without signal 0: assume alive, never delete
        return True
    return True


def _temp_name(path: str) -> str:
    """A fresh hidden sibling of `path` tagged with this process's id."""
    head, name = os.path.split(path)
    return os.path.join(head, f".{name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Remove the temporary siblings of `path` left by writers that no longer run.

    Only names of the form `.{name}.{pid}.{hex}.tmp` whose `pid` is not a live process are
    removed (files or folders); a concurrent writer's temporaries are kept.

    **Returns:** the paths removed.
    """
    path = os.path.abspath(os.fspath(path))
    head, name = os.path.split(path)
    prefix = f".{name}."
    removed = []
    try:
        entries = os.listdir(head)
    except OSError:
        return removed
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(_TMP_SUFFIX)):
            continue
        parts = entry[len(prefix) : -len(_TMP_SUFFIX)].split(".")
        if len(parts) != 2 or not parts[0].isdigit() or _pid_alive(int(parts[0])):
            continue
        stale = os.path.join(head, entry)
        try:
            if os.path.isdir(stale) and not os.path.islink(stale):
                shutil.rmtree(stale)
            else:
                os.unlink(stale)
        except OSError:  # removed meanwhile, or not ours to remove: leave it
            continue
        removed.append(stale)
    return removed


def _check_destination(path: str, *, folder: bool) -> str:
    """Fail early, naming `path`, where the final rename could not succeed."""
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ValueError(f"Cannot write {path!r}: the folder {directory!r} does not exist.")
    if not folder and os.path.isdir(path):
        raise ValueError(f"Cannot write {path!r}: it is a folder, not a file.")
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"Cannot write the folder {path!r}: a file of that name exists.")
    return path


def _fsync_dir(directory: str) -> None:
    # Makes the rename itself durable; not every platform lets a folder be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(f)` on a temporary binary file next to `path`, then rename it to `path`.

    The data are flushed and fsync'ed before `os.replace`, so `path` holds either its old
    contents or the complete new ones. On any exception the temporary file is removed and
    an existing `path` is left untouched; temporaries of earlier writers to `path` that were
    killed are removed first. The new file gets the usual umask permissions.

    **Raises:** `ValueError` naming `path` if its folder does not exist or `path` is a
    folder; `OSError` from the file system; whatever `write` raises.
    """
    path = _check_destination(os.fspath(path), folder=False)
    remove_stale_temporaries(path)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _file_mode())
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike, *, replace: Callable[[str], bool] | None = None
) -> Iterator[str]:
    """Build a folder under a temporary name next to `path`, then swap it in as a whole.

    Use as `with atomic_folder(out) as tmp: write files into tmp`. When the block ends
    without an exception, an existing `path` is renamed aside, the new folder renamed to
    `path`, and the old one removed: at every moment `path` is either the old complete folder
    or the new complete one (between the two renames it is briefly absent). On an exception
    the temporary folder is removed and `path` is left as it was, or absent if it was.

    **Arguments:**

    - `path`: the folder to create or replace.
    - `replace`: called with `path` when it exists; it must return true for `path` to be
        replaced (a guard against replacing a folder of the user's own files).

    **Raises:** `ValueError` naming `path` if its parent folder does not exist, a file of
    that name exists, or `replace` refuses it.
    """
    path = _check_destination(os.fspath(path), folder=True)
    if os.path.isdir(path) and replace is not None and not replace(path):
        raise ValueError(f"Refusing to replace the folder {path!r}.")
    remove_stale_temporaries(path)
    tmp = _temp_name(path)
    os.mkdir(tmp)
    try:
        yield tmp
        old = None
        if os.path.isdir(path):
            old = _temp_name(path)
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(os.path.dirname(path))


def to_json_compatible(obj: Any) -> Any:
    """`obj` with dataclasses, tuples and NumPy scalars/arrays turned into JSON types and
    non-finite floats into `None` (strict JSON has no NaN or infinity)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_json_compatible(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_json_compatible(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json_compatible(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json_compatible(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write `obj` as strict JSON (see `to_json_compatible`), atomically."""
    text = json.dumps(to_json_compatible(obj), indent=indent, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
