import json
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens import _io


def _leaves(model):
    return jax.tree.leaves(eqx.filter(model, eqx.is_array))


def _same_outputs(a, b, x):
    ya, yb = jax.vmap(a)(x), jax.vmap(b)(x)
    return ya.dtype == yb.dtype and np.array_equal(ya, yb)


@pytest.mark.parametrize(
    "make",
    [
        lambda k: jacsens.MLP(5, (7, 3), "scalar", "sigmoid", key=k, dtype=jnp.float64),
        lambda k: jacsens.MLP(5, (4,), 2, "gelu", key=k, dtype=jnp.float32, use_bias=False),
        lambda k: jacsens.MLP(5, (), 3, key=k, final_activation="softplus", dtype=jnp.float32),
        lambda k: eqx.nn.MLP(5, 2, 6, 2, activation=jnp.tanh, key=k),
        lambda k: eqx.nn.MLP(5, "scalar", 6, 1, key=k, dtype=jnp.float64),
    ],
    ids=["mlp-f64", "mlp-nobias", "mlp-final", "eqx-tanh", "eqx-relu-scalar"],
)
def test_round_trip_bit_identical(tmp_path, getkey, make):
    model = make(getkey())
    path = tmp_path / "model.jsns"
    jacsens.save(path, model)
    loaded = jacsens.load(path)
    assert type(loaded) is type(model)
    x = jax.random.normal(getkey(), (9, 5), dtype=_leaves(model)[0].dtype)
    assert _same_outputs(model, loaded, x)
    for a, b in zip(_leaves(model), _leaves(loaded), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    header = _io.read_header(path)
    assert header["format_version"] == _io.FORMAT_VERSION
    assert header["jacsens_version"] == jacsens.__version__
    assert len(header["leaves"]) == len(_leaves(model))
    # Also through a str path, and no temporary files are left behind.
    jacsens.save(str(path), loaded)
    assert os.listdir(tmp_path) == ["model.jsns"]


def test_header_records_hyperparameters(tmp_path, getkey):
    model = jacsens.MLP(52, (20, 10), "scalar", "tanh", key=getkey(), dtype=jnp.float32)
    jacsens.save(tmp_path / "m.jsns", model)
    header = _io.read_header(tmp_path / "m.jsns")
    assert header["class"] == "jacsens.MLP"
    assert header["hyperparameters"] == model.hyperparameters()
    assert [tuple(s["shape"]) for s in header["leaves"]] == [
        (20, 52),
        (20,),
        (10, 20),
        (10,),
        (1, 10),
        (1,),
    ]


@pytest.fixture
def saved(tmp_path, getkey):
    path = tmp_path / "m.jsns"
    jacsens.save(path, jacsens.MLP(4, (3,), 2, key=getkey(), dtype=jnp.float32))
    return path


def _rewrite_header(path, change):
    data = path.read_bytes()
    end = data.index(b"\n", len(_io.MAGIC))
    header = json.loads(data[len(_io.MAGIC) : end])
    change(header)
    path.write_bytes(_io.MAGIC + json.dumps(header).encode() + data[end:])


def test_refuses_truncated(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[:-10])
    with pytest.raises(ValueError, match=r"m\.jsns.*truncated"):
        jacsens.load(saved)
    saved.write_bytes(data[: len(_io.MAGIC) + 20])
    with pytest.raises(ValueError, match=r"m\.jsns.*truncated"):
        jacsens.load(saved)


def test_refuses_wrong_magic(saved, tmp_path):
    saved.write_bytes(b"PK\x03\x04" + saved.read_bytes())
    with pytest.raises(ValueError, match=r"m\.jsns.*not a jacsens model file"):
        jacsens.load(saved)
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    with pytest.raises(ValueError, match="not a jacsens model file"):
        jacsens.load(other)


def test_refuses_corrupt_payload_and_header(saved):
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        jacsens.load(saved)
    saved.write_bytes(_io.MAGIC + b"{not json\n" + b"rest")
    with pytest.raises(ValueError, match="corrupt header"):
        jacsens.load(saved)


def test_refuses_unknown_format_version(saved):
    _rewrite_header(saved, lambda h: h.update(format_version=99))
    with pytest.raises(ValueError, match="format version 99"):
        jacsens.load(saved)


def test_refuses_mismatched_leaf_shapes(saved):
    _rewrite_header(saved, lambda h: h["hyperparameters"].update(widths=[5]))
    with pytest.raises(ValueError, match=r"m\.jsns.*do not match"):
        jacsens.load(saved)
    _rewrite_header(saved, lambda h: h["hyperparameters"].update(widths=[3], dtype="float16"))
    with pytest.raises(ValueError, match="do not match"):
        jacsens.load(saved)


def test_refuses_bad_hyperparameters_and_class(saved):
    _rewrite_header(saved, lambda h: h["hyperparameters"].update(activation="nope"))
    with pytest.raises(ValueError, match="invalid constructor arguments"):
        jacsens.load(saved)
    _rewrite_header(saved, lambda h: h.update({"class": "os.system"}))
    with pytest.raises(ValueError, match="unknown class"):
        jacsens.load(saved)


def test_failed_save_leaves_existing_file_intact(tmp_path, getkey, monkeypatch):
    path = tmp_path / "m.jsns"
    old = jacsens.MLP(4, (3,), 2, key=getkey(), dtype=jnp.float32)
    jacsens.save(path, old)
    before = path.read_bytes()
    new = jacsens.MLP(4, (3,), 2, key=getkey(), dtype=jnp.float32)

    def failing_serialise(f, tree):
        f.write(b"\x93NUMPY partial")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_io.eqx, "tree_serialise_leaves", failing_serialise)
    with pytest.raises(RuntimeError, match="disk on fire"):
        jacsens.save(path, new)
    monkeypatch.undo()

    # A failure while the temporary file is being written (after part of it is on disk).
    def failing_fsync(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(_io.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        jacsens.save(path, new)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.jsns"]
    x = jnp.ones((2, 4), jnp.float32)
    assert _same_outputs(jacsens.load(path), old, x)


def test_save_refuses_unsupported_models(tmp_path, getkey):
    with pytest.raises(TypeError, match="model"):
        jacsens.save(tmp_path / "f.jsns", eqx.nn.Linear(2, 2, key=getkey()))
    odd = eqx.nn.MLP(2, 2, 3, 1, activation=lambda z: z**3, key=getkey())
    with pytest.raises(TypeError, match="activation"):
        jacsens.save(tmp_path / "f.jsns", odd)
    with pytest.raises(TypeError, match="path"):
        jacsens.save(3, jacsens.MLP(2, (), 2, key=getkey()))
    assert os.listdir(tmp_path) == []


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        jacsens.load(tmp_path / "absent.jsns")


def test_save_refuses_subclass(tmp_path):
    """load() would rebuild the base class and silently drop the subclass's behaviour."""

    class Sub(jacsens.MLP):
        def __call__(self, x, *, key=None):
            return -super().__call__(x)

    model = Sub(3, (4,), 2, key=jax.random.key(0))
    with pytest.raises(TypeError, match="Sub"):
        jacsens.save(tmp_path / "m.jsns", model)
    assert not (tmp_path / "m.jsns").exists()
