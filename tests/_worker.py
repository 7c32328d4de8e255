"""Subprocess entry points for the kill and multi-process tests (not collected by pytest).

`python tests/_worker.py <task> <json arguments>`; each task prints `READY` (flushed) when
it reaches the part the parent may interrupt, and writes its results where told.

- `save`: save a large model to `path` in a loop (the parent kills it mid-write).
- `sensitivity`: a checkpointed `sensitivity` run, results to `out` (`.npz`).
- `distributed`: one process of a `jax.distributed` run of `sensitivity` on a global mesh.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def _model_and_sampler(n: int, dtype: str):
    import jax
    import jax.numpy as jnp

    import jacsens

    dt = jnp.dtype(dtype)
    model = jacsens.MLP(6, (16, 8), 2, activation="tanh", key=jax.random.key(0), dtype=dt)
    sampler = jacsens.uniform([(-1.0, 1.0)] * 6, n, jax.random.key(1), dtype=dt)
    return model, sampler


def _stats(res) -> dict[str, np.ndarray]:
    names = ("mean", "mean_se", "mean_abs", "dgsm", "std", "max_abs")
    out = {k: np.asarray(getattr(res, k)) for k in names}
    out["n"] = np.asarray(res.n)
    return out


def _save(args: dict) -> None:
    import jax
    import jax.numpy as jnp

    import jacsens

    width = int(args["width"])
    model = jacsens.MLP(width, (width,), width, key=jax.random.key(2), dtype=jnp.float32)
    print("READY", flush=True)
    while True:  # until killed: every save rewrites the file through a temporary one
        jacsens.save(args["path"], model)


def _sensitivity(args: dict) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jacsens

    model, sampler = _model_and_sampler(int(args["n"]), args.get("dtype", "float64"))
    print("READY", flush=True)
    res = jacsens.sensitivity(
        model,
        sampler,
        chunk_size=int(args["chunk_size"]),
        mode="rev",
        progress=False,
        checkpoint=args.get("checkpoint"),
        checkpoint_every=int(args.get("checkpoint_every", 1)),
    )
    np.savez(args["out"], **_stats(res))


def _distributed(args: dict) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_num_cpu_devices", int(args["local_devices"]))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args['port']}",
        num_processes=int(args["num_processes"]),
        process_id=int(args["process_id"]),
        initialization_timeout=int(args.get("init_timeout", 60)),
        heartbeat_timeout_seconds=int(args.get("heartbeat_timeout", 10)),
    )
    import jacsens

    assert jax.process_count() == int(args["num_processes"])
    assert jax.device_count() == jax.process_count() * int(args["local_devices"])
    model, sampler = _model_and_sampler(int(args["n"]), args.get("dtype", "float64"))
    kwargs = dict(chunk_size=int(args["chunk_size"]), mode="rev", progress=False)
    t0 = time.perf_counter()
    res = jacsens.sensitivity(model, sampler, devices=jax.devices(), **kwargs)
    seconds = time.perf_counter() - t0
    if jax.process_index() == 0:
        np.savez(args["out"], seconds=seconds, **_stats(res))
    if args.get("long_n"):
        # a long second run for the kill test: the parent kills one process during it
        _, long_sampler = _model_and_sampler(int(args["long_n"]), args.get("dtype", "float64"))
        print("READY", flush=True)
        jacsens.sensitivity(model, long_sampler, devices=jax.devices(), **kwargs)
        print("FINISHED", flush=True)
    jax.distributed.shutdown()


TASKS = {"save": _save, "sensitivity": _sensitivity, "distributed": _distributed}

if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    TASKS[sys.argv[1]](json.loads(sys.argv[2]))
