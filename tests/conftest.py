"""Shared fixtures.

The suite runs in strict dtype promotion (as Equinox's does): any silent float32/float64
mixing in the package fails loudly instead of quietly computing in the wrong precision.
float64 is enabled so that reference computations can run in double precision; every
float32 path is asked for explicitly (dtype parameters), and `test_float32.py` runs the
public entry points with x64 switched off, as most users run them.
"""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import itertools

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def getkey():
    """Return a function that yields a fresh PRNG key on every call (deterministic per test)."""
    counter = itertools.count()
    base = jax.random.key(1234)
    return lambda: jax.random.fold_in(base, next(counter))
