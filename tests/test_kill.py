"""SIGKILL in the middle of a write: the previous file survives, nothing stale remains.

A subprocess (`tests/_worker.py`) saves a model, or runs a checkpointed `sensitivity`, and
is killed with SIGKILL (no cleanup handler runs) while its temporary file is on disk. The
file it was replacing must still load, a resumed `sensitivity` must equal an uninterrupted
run bit for bit, and the next save must leave no temporary file behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens

from _worker import _model_and_sampler, _stats

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

WORKER = str(Path(__file__).with_name("_worker.py"))


def _start(task: str, **args) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen(
        [sys.executable, WORKER, task, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_ready(proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    # the worker prints READY before its long part; anything else on stdout is noise
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == "READY":
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"worker not ready: rc={proc.poll()}, stderr={proc.stderr.read()[-2000:]}")


def _temporaries(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.suffix == ".tmp"]


def _kill_while(proc: subprocess.Popen, condition, timeout: float) -> bool:
    """Poll `condition()` every 0.5 ms; SIGKILL `proc` the moment it holds (or at the
    deadline). Returns whether it held when the signal was sent."""
    deadline = time.monotonic() + timeout
    held = False
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            held = True
            break
        time.sleep(0.0005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)  # reaped: its pid no longer counts as a live writer
    return held


def test_sigkill_mid_save_keeps_the_previous_file(tmp_path):
    width = 1500  # a 18 MB file: each save spends ~0.1 s writing and fsyncing its temporary
    path = tmp_path / "model.jsns"
    model = jacsens.MLP(width, (width,), width, key=jax.random.key(2), dtype=jnp.float32)
    for _attempt in range(5):  # a kill can land just after a rename: try again
        proc = _start("save", path=str(path), width=width)
        _wait_ready(proc, timeout=60)
        killed_mid_write = _kill_while(
            proc, lambda: path.exists() and _temporaries(tmp_path, path.name), timeout=30
        )
        if killed_mid_write and _temporaries(tmp_path, path.name):
            break
    else:
        pytest.fail("never caught the worker with a temporary file on disk")
    assert proc.returncode == -signal.SIGKILL
    # the killed writer left its temporary; the file it was replacing is whole
    loaded = jacsens.load(path)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(model), strict=True):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    # the next save to the same path removes the dead writer's temporary
    jacsens.save(path, model)
    assert _temporaries(tmp_path, path.name) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.jsns"]
    again = jacsens.load(path)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(model), strict=True)
    )


def test_sigkill_mid_checkpointed_sensitivity_resumes_bit_for_bit(tmp_path):
    n, chunk = 40_000, 256  # ~12 ms per chunk with a checkpoint after each: ~2 s to kill in
    ckpt = tmp_path / "run.npz"
    out = tmp_path / "finished.npz"
    proc = _start(
        "sensitivity", n=n, chunk_size=chunk, checkpoint=str(ckpt), checkpoint_every=1, out=str(out)
    )

    def kill_mid_checkpoint() -> None:
        _wait_ready(proc, timeout=90)
        # wait for a first checkpoint, then kill while the next one is being written
        deadline = time.monotonic() + 90
        while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.001)
        _kill_while(proc, lambda: bool(_temporaries(tmp_path, ckpt.name)), timeout=10)

    # the uninterrupted reference is computed (and compiled) while the worker starts up
    killer = threading.Thread(target=kill_mid_checkpoint)
    killer.start()
    model, sampler = _model_and_sampler(n, "float64")
    kwargs = dict(chunk_size=chunk, mode="rev", progress=False)
    reference = jacsens.sensitivity(model, sampler, **kwargs)
    killer.join(timeout=120)
    assert not killer.is_alive()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert not out.exists(), "the run finished before it was killed: raise n"
    # the checkpoint on disk is an intact partial run
    partial = jacsens.SensitivityResult.load(ckpt)
    assert 0 < partial.n < n and partial.n % chunk == 0

    resumed = jacsens.sensitivity(model, sampler, checkpoint=ckpt, checkpoint_every=10**6, **kwargs)
    got, want = _stats(resumed), _stats(reference)
    assert int(got["n"]) == n
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
    # the final save of the resumed run left no temporary next to the checkpoint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]
