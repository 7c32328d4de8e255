"""`chunk_size="auto"` everywhere chunking is offered: a chunk that fits the memory budget,
halved and retried after an out-of-memory error, with results equal to unchunked ones."""

import warnings

import jax
import jax.numpy as jnp
import pytest

import jacsens
from jacsens import _batching, _jacobian

from helpers import assert_close, random_inputs, random_mlp


class XlaRuntimeError(RuntimeError):
    """Stands in for JAX's own error type, recognised by its name."""


def _model_and_data(getkey, dtype):
    m = random_mlp(getkey(), 5, (7,), 3, "tanh", dtype=dtype)
    X = random_inputs(getkey(), 11, (5,), dtype=dtype)
    Y = random_inputs(getkey(), 11, (3,), dtype=dtype)
    return m, X, Y


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_auto_equals_unchunked(getkey, monkeypatch, dtype):
    m, X, Y = _model_and_data(getkey, dtype)
    # a budget of a few rows forces several chunks and a remainder
    monkeypatch.setattr(_batching, "memory_budget", lambda *a, **k: 3000)
    tol = 1e-5 if dtype == jnp.float32 else 1e-12
    V = random_inputs(getkey(), 11, (5,), dtype=dtype)
    U = random_inputs(getkey(), 11, (3,), dtype=dtype)
    pairs = [
        (jacsens.input_jacobian, (m, X)),
        (jacsens.jvp, (m, X, V)),
        (jacsens.vjp, (m, X, U)),
        (jacsens.input_hessian, (m, X)),
        (jacsens.per_sample_grad_norms, (m, "mse", X, Y)),
    ]
    for fn, args in pairs:
        assert_close(fn(*args, chunk_size="auto"), fn(*args), tol)
    g_auto = jacsens.per_sample_grads(m, "mse", X, Y, chunk_size="auto")
    g = jacsens.per_sample_grads(m, "mse", X, Y)
    for a, b in zip(jax.tree.leaves(g_auto), jax.tree.leaves(g), strict=True):
        assert_close(a, b, tol)


def test_out_of_memory_halves_and_retries(getkey, monkeypatch):
    m, X, _ = _model_and_data(getkey, jnp.float64)
    want = jacsens.input_jacobian(m, X)
    original = _jacobian._jacobian_impl
    seen = []

    def flaky(model, X, plan, chunk):
        seen.append(chunk)
        if chunk is None or chunk > 2:
            raise XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory while allocating")
        return original(model, X, plan, chunk)

    monkeypatch.setattr(_jacobian, "_jacobian_impl", flaky)
    monkeypatch.setattr(_batching, "memory_budget", lambda *a, **k: 10**9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = jacsens.input_jacobian(m, X, chunk_size="auto")
    assert_close(got, want, 1e-12)
    # whole batch first, then halving: 11 (None) -> 5 -> 2
    assert seen == [None, 5, 2]
    assert sum("Out of device memory" in str(w.message) for w in caught) == 1


def test_other_errors_are_not_retried(getkey, monkeypatch):
    m, X, _ = _model_and_data(getkey, jnp.float64)

    def broken(model, X, plan, chunk):
        raise XlaRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(_jacobian, "_jacobian_impl", broken)
    with pytest.raises(XlaRuntimeError, match="INTERNAL"):
        jacsens.input_jacobian(m, X, chunk_size="auto")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "big", True])
def test_bad_chunk_size(getkey, bad):
    m, X, _ = _model_and_data(getkey, jnp.float64)
    with pytest.raises(ValueError, match='`chunk_size` must be a positive int, "auto" or None'):
        jacsens.input_jacobian(m, X, chunk_size=bad)


def test_attribution_auto_chunks_and_huge_point_counts(getkey, monkeypatch):
    from jacsens import attribution

    m, X, _ = _model_and_data(getkey, jnp.float64)
    for fn, kw in (
        (attribution.saliency, {"target": 1}),
        (attribution.gradient_x_input, {"target": "all"}),
        (attribution.integrated_gradients, {"target": 2, "n_steps": 8, "return_delta": False}),
        (attribution.smoothgrad, {"target": 0, "n_samples": 4, "key": jax.random.key(0)}),
    ):
        assert_close(fn(m, X, chunk_size="auto", **kw), fn(m, X, chunk_size=None, **kw), 1e-12)
    monkeypatch.setattr(jacsens.attribution, "memory_budget", lambda *a, **k: 10**6)
    with pytest.raises(ValueError, match="`n_steps`=100000 needs about .* GiB for a single row"):
        attribution.integrated_gradients(m, X, target=0, n_steps=100_000)
    with pytest.raises(ValueError, match="`n_samples`=100000 needs"):
        attribution.smoothgrad(m, X, target=0, n_samples=100_000, key=jax.random.key(0))
