"""Shared fixtures. float64 is enabled for the whole suite so that reference
computations can run in double precision; float32 tests ask for float32 explicitly."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import itertools

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    """Return a function that yields a fresh PRNG key on every call (deterministic per test)."""
    counter = itertools.count()
    base = jax.random.key(1234)
    return lambda: jax.random.fold_in(base, next(counter))
