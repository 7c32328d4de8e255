"""The README's Python examples run, in order, as written."""

import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    if not README.exists():
        pytest.skip("README.md not found (installed package without sources)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    # as a user runs them: JAX's defaults (float32, standard promotion), not the suite's
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    # The tour's claims, checked on the objects it built.
    assert namespace["J"].shape == (1000, 52)
    assert namespace["report"].passed
    assert namespace["norms"].shape == (1000,)
    assert namespace["res"].n == 100_000
    assert (tmp_path / "friedman.jsns").exists()
    assert namespace["Jb"].shape == (32, 128, 128)
    js = namespace["jacsens"]
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
        assert js.jacobian_cost(namespace["bneck"], namespace["Xb"]).best == "segments"
