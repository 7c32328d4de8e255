import warnings

import jax
import numpy as np
import pytest

import jacsens
from jacsens import _memory
from jacsens._memory import auto_chunk_size, is_out_of_memory, memory_budget, run_with_backoff


class FakeDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def oom(size):
    return jax.errors.JaxRuntimeError(
        f"RESOURCE_EXHAUSTED: Out of memory while trying to allocate {size} bytes."
    )


def test_memory_budget_from_device_stats_and_cpu_default(monkeypatch):
    dev = FakeDevice({"bytes_limit": 1000 * 2**20, "bytes_in_use": 200 * 2**20})
    assert memory_budget(dev) == 400 * 2**20
    assert memory_budget(dev, fraction=0.25) == 200 * 2**20
    # no statistics (CPU): a fraction of the available RAM, capped
    monkeypatch.setattr(_memory, "_available_ram", lambda: 3 * 2**30)
    assert memory_budget(FakeDevice(None)) == int(1.5 * 2**30)
    monkeypatch.setattr(_memory, "_available_ram", lambda: 64 * 2**30)
    assert memory_budget(FakeDevice(None)) == _memory.CPU_CAP_BYTES
    monkeypatch.setattr(_memory, "_available_ram", lambda: None)
    assert memory_budget(FakeDevice({})) == 2**30
    assert 2**20 <= memory_budget() <= max(_memory.CPU_CAP_BYTES, memory_budget())
    with pytest.raises(ValueError, match="fraction"):
        memory_budget(dev, fraction=0.0)
    with pytest.raises(TypeError, match="device"):
        memory_budget("gpu")


def test_auto_chunk_size():
    assert auto_chunk_size(1000, None, 1_000_000) == 512  # 1000 rows fit: a power of two
    assert auto_chunk_size(1000, 300, 1_000_000) == 300  # capped at the data
    assert auto_chunk_size(10**9, 300, 1_000_000) == 1  # at least one row
    assert auto_chunk_size(1000, None, 1_000_000, multiple=3) == 513
    assert auto_chunk_size(1.5, 10**12, 2**20) == 2**19
    with pytest.raises(ValueError, match="bytes_per_row"):
        auto_chunk_size(0, 10, 100)


def test_out_of_memory_detection():
    assert is_out_of_memory(oom(10))
    assert is_out_of_memory(jax.errors.JaxRuntimeError("cuda: out of memory"))
    assert not is_out_of_memory(jax.errors.JaxRuntimeError("INVALID_ARGUMENT: shapes"))
    assert not is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED"))
    assert not is_out_of_memory(MemoryError())


def test_run_with_backoff_halves_until_it_fits():
    calls = []

    def step(size):
        calls.append(size)
        if size > 12:
            raise oom(size)
        return size

    with pytest.warns(RuntimeWarning, match="chunk_size=100") as record:
        assert run_with_backoff(step, 100, what="chunk_size") == 12
    assert calls == [100, 50, 25, 12] and len(record) == 1  # warned once
    calls.clear()
    with pytest.warns(RuntimeWarning):
        assert run_with_backoff(step, 64, minimum=8) == 8  # multiples of the minimum
    assert calls == [64, 32, 16, 8]
    with pytest.raises(jax.errors.JaxRuntimeError), pytest.warns(RuntimeWarning):
        run_with_backoff(lambda s: (_ for _ in ()).throw(oom(s)), 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="other"):  # other errors: at once, silently
            run_with_backoff(lambda s: (_ for _ in ()).throw(ValueError("other")), 64)


def _kernel_failing(monkeypatch, fails):
    """Make the sensitivity chunk kernel raise an out-of-memory error when `fails(rows,
    call)` is true (rows of the chunk, 0-based call number)."""
    from jacsens._sensitivity import _run

    real = _run._chunk_kernel
    calls = []

    def kernel(plan, model, X, *args):
        calls.append(X.shape[0])
        if fails(X.shape[0], len(calls) - 1):
            raise oom(X.shape[0])
        return real(plan, model, X, *args)

    monkeypatch.setattr(_run, "_chunk_kernel", kernel)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sensitivity_backs_off_to_identical_results(monkeypatch, dtype):
    m = jacsens.MLP(6, (8,), 2, "tanh", key=jax.random.key(0), dtype=dtype)
    X = np.random.default_rng(0).standard_normal((200, 6)).astype(dtype)
    kw = dict(progress=False, mode="rev")
    ref16 = jacsens.sensitivity(m, X, chunk_size=16, **kw)
    ref32 = jacsens.sensitivity(m, X, chunk_size=32, **kw)

    calls = _kernel_failing(monkeypatch, lambda rows, call: rows > 16)
    with pytest.warns(RuntimeWarning, match="chunk_size=64"):
        r = jacsens.sensitivity(m, X, chunk_size=64, **kw)
    assert calls[:3] == [64, 32, 16] and set(calls[3:]) == {16}
    assert r.n == 200
    for f in ("mean", "mean_abs", "dgsm", "std", "std_se", "max_abs"):
        np.testing.assert_array_equal(getattr(r, f), getattr(ref16, f))

    # an out-of-memory error on a later chunk, while an earlier one is still pending:
    # the run goes on from its last finished chunk, and every row is counted once
    monkeypatch.undo()
    calls = _kernel_failing(monkeypatch, lambda rows, call: rows == 64 and call == 1)
    with pytest.warns(RuntimeWarning):
        r = jacsens.sensitivity(m, X, chunk_size=64, **kw)
    assert calls[:3] == [64, 64, 32]
    assert r.n == 200
    for f in ("mean", "dgsm", "std", "max_abs"):
        np.testing.assert_array_equal(getattr(r, f), getattr(ref32, f))

    # at one row it gives up with the error itself
    monkeypatch.undo()
    _kernel_failing(monkeypatch, lambda rows, call: True)
    with pytest.raises(jax.errors.JaxRuntimeError), pytest.warns(RuntimeWarning):
        jacsens.sensitivity(m, X, chunk_size=8, **kw)
