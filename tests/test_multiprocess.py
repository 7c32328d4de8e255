"""A real multi-controller run: two processes joined by `jax.distributed` on this machine.

Each process (`tests/_worker.py distributed`) owns two CPU devices (gloo collectives) and
runs `jacsens.sensitivity(..., devices=jax.devices())` over the global 4-device mesh. The
pair runs once per module: first a short run whose result is compared here with the
single-process one, then a long run during which process 1 is SIGKILLed; process 0 must
fail with a clear error within a bounded time instead of hanging in a collective.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jacsens

from _worker import _model_and_sampler, _stats

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]

WORKER = str(Path(__file__).with_name("_worker.py"))
N, CHUNK = 4096, 512
HEARTBEAT = 10  # seconds without a heartbeat before the coordinator declares a task dead


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == "READY":
            return True
        if not line:
            return False
    return False


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Run the two processes; kill process 1 during the long run. Returns what happened."""
    out = tmp_path_factory.mktemp("dist") / "result.npz"
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = []
    for i in range(2):
        args = dict(
            port=port,
            num_processes=2,
            process_id=i,
            local_devices=2,
            n=N,
            chunk_size=CHUNK,
            out=str(out),
            long_n=10**9,  # never finishes: it is killed
            heartbeat_timeout=HEARTBEAT,
            init_timeout=60,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, WORKER, "distributed", json.dumps(args)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    try:
        # the single-process reference compiles while the two workers start up
        model, sampler = _model_and_sampler(N, "float64")
        single = _stats(jacsens.sensitivity(model, sampler, chunk_size=CHUNK, progress=False))
        deadline = time.monotonic() + 180
        ready = [_wait_ready(p, deadline) for p in procs]
        time.sleep(1.0)  # both are inside the long run's collectives now
        procs[1].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        try:
            stdout, stderr = procs[0].communicate(timeout=6 * HEARTBEAT)
            hung = False
        except subprocess.TimeoutExpired:
            procs[0].kill()
            stdout, stderr = procs[0].communicate()
            hung = True
        survivor_seconds = time.monotonic() - killed_at
        procs[1].communicate(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return dict(
        single=single,
        ready=ready,
        out=out,
        rc=procs[0].returncode,
        stdout=stdout,
        stderr=stderr,
        hung=hung,
        survivor_seconds=survivor_seconds,
    )


def test_two_processes_agree_with_one(pair):
    assert all(pair["ready"]), pair["stderr"][-3000:]
    dist, single = np.load(pair["out"]), pair["single"]
    worst = 0.0
    assert int(dist["n"]) == int(single["n"]) == N
    for k, want in single.items():
        got = dist[k]
        assert got.shape == want.shape and got.dtype == want.dtype, k
        # per-device partial sums merged in another order: float64 round-off only
        scale = np.max(np.abs(want))
        err = float(np.max(np.abs(got - want)) / scale)
        assert err <= 1e-13, (k, err)
        worst = max(worst, err)
    np.testing.assert_array_equal(dist["max_abs"], single["max_abs"])  # a max has no round-off
    print(f"two-process run: {float(dist['seconds']):.2f} s, max relative difference {worst:.1e}")


def test_a_killed_process_fails_the_survivor_instead_of_hanging(pair):
    assert all(pair["ready"]), pair["stderr"][-3000:]
    assert not pair["hung"], "the survivor hung after its peer was killed"
    assert "FINISHED" not in pair["stdout"]
    assert pair["rc"] != 0
    # the error names the cause: the peer's collective connection or its heartbeat
    clear = (
        "Connection closed by peer",
        "heartbeat timeout",
        "another task died",
        "stopped sending heartbeats",
    )
    assert any(c in pair["stderr"] for c in clear), pair["stderr"][-3000:]
    assert pair["survivor_seconds"] < 6 * HEARTBEAT
    print(f"survivor stopped {pair['survivor_seconds']:.1f} s after the kill")
