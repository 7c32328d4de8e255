import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens import _atomic, _io

import _skeletons


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


def _split_file(data):
    """(checksum line, header dict, payload) of a saved model file."""
    start = len(_io.MAGIC)
    line_end = data.index(b"\n", start) + 1
    header_end = data.index(b"\n", line_end)
    return data[start:line_end], json.loads(data[line_end:header_end]), data[header_end + 1 :]


def _rewrite_header(path, change, *, rechecksum=False):
    """Edit the header; with `rechecksum`, also forge a matching checksum (a crafted file)."""
    checksum, header, payload = _split_file(path.read_bytes())
    change(header)
    body = json.dumps(header).encode() + b"\n" + payload
    if rechecksum:
        checksum = b"sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"
    path.write_bytes(_io.MAGIC + checksum + body)


def test_refuses_truncated(saved):
    data = saved.read_bytes()
    for cut in (10, len(data) // 2, len(data) - len(_io.MAGIC) - 20):
        saved.write_bytes(data[:-cut])
        with pytest.raises(ValueError, match=r"m\.jsns.*(truncated|checksum)"):
            jacsens.load(saved)


def test_refuses_wrong_magic(saved, tmp_path):
    saved.write_bytes(b"PK\x03\x04" + saved.read_bytes())
    with pytest.raises(ValueError, match=r"m\.jsns.*not a jacsens model file"):
        jacsens.load(saved)
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    with pytest.raises(ValueError, match="not a jacsens model file"):
        jacsens.load(other)
    with pytest.raises(ValueError, match="is a folder"):
        jacsens.load(tmp_path)


def test_checksum_covers_the_header(saved):
    """Editing the activation (which would load a different model) or removing the checksum
    is refused; so is a damaged parameter byte."""
    original = saved.read_bytes()
    _rewrite_header(saved, lambda h: h["hyperparameters"].update(activation="relu"))
    with pytest.raises(ValueError, match=r"m\.jsns.*checksum does not match"):
        jacsens.load(saved)
    checksum, _, _ = _split_file(original)
    saved.write_bytes(original.replace(checksum, b"", 1))
    with pytest.raises(ValueError, match=r"m\.jsns.*checksum line is missing or damaged"):
        jacsens.load(saved)
    data = bytearray(original)
    data[-3] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum does not match"):
        jacsens.load(saved)


def _load_outcome(path, reference, x):
    """'same' if `path` loads to a model with reference's outputs, else the error raised."""
    try:
        model = jacsens.load(path)
    except ValueError as e:
        assert str(path) in str(e), e
        return "ValueError"
    assert _same_outputs(model, reference, x), "a damaged file loaded as a different model"
    return "same"


def test_every_header_byte_flipped_is_a_value_error(saved, getkey):
    reference = jacsens.load(saved)
    x = jax.random.normal(getkey(), (3, 4), jnp.float32)
    data = saved.read_bytes()
    checksum, header, _ = _split_file(data)
    header_end = (
        len(_io.MAGIC) + len(checksum) + data[len(_io.MAGIC) + len(checksum) :].index(b"\n")
    )
    outcomes = set()
    for i in range(header_end + 1):  # magic, checksum line and header, newline included
        damaged = bytearray(data)
        damaged[i] ^= 0xFF
        saved.write_bytes(bytes(damaged))
        outcomes.add(_load_outcome(saved, reference, x))
    assert outcomes == {"ValueError"}
    assert header_end > 200


def test_random_bit_flips_anywhere_are_value_errors(saved, getkey):
    reference = jacsens.load(saved)
    x = jax.random.normal(getkey(), (3, 4), jnp.float32)
    data = saved.read_bytes()
    rng = np.random.default_rng(0)
    positions = rng.choice(len(data), size=min(300, len(data)), replace=False)
    counts = {"ValueError": 0, "same": 0}
    for pos in positions:
        damaged = bytearray(data)
        damaged[pos] ^= 1 << int(rng.integers(8))
        saved.write_bytes(bytes(damaged))
        counts[_load_outcome(saved, reference, x)] += 1
    assert counts == {"ValueError": len(positions), "same": 0}
    assert len(positions) >= 200


def test_old_format_is_refused_with_advice(saved):
    _, header, payload = _split_file(saved.read_bytes())
    header.update(format_version=1, payload_sha256=hashlib.sha256(payload).hexdigest())
    saved.write_bytes(_io.MAGIC + json.dumps(header).encode() + b"\n" + payload)
    with pytest.raises(ValueError, match=r"m\.jsns.*version 1.*save it again"):
        jacsens.load(saved)


def test_refuses_unknown_format_version(saved):
    _rewrite_header(saved, lambda h: h.update(format_version=99), rechecksum=True)
    with pytest.raises(ValueError, match="format version 99"):
        jacsens.load(saved)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda h: h["hyperparameters"].update(widths=[5]), "do not match"),
        (lambda h: h["hyperparameters"].update(widths=[3], dtype="float16"), "do not match"),
        (lambda h: h["hyperparameters"].update(activation="nope"), "invalid constructor"),
        (lambda h: h["hyperparameters"].pop("use_bias"), "invalid constructor"),
        (lambda h: h["hyperparameters"].update(widths=[10**6, 10**6]), "do not match"),
        (lambda h: h.update({"class": "os.system"}), "unknown class"),
        (lambda h: h.pop("leaves"), "field 'leaves'"),
        (lambda h: h.update(leaves=[{"dtype": "float32"}] * 4), "leaf 0"),
        (lambda h: h["leaves"][1].update(shape=[-3]), "leaf 1"),
        (lambda h: h["leaves"][2].update(dtype="nonsense"), "leaf 2"),
        (lambda h: h.update(payload_bytes="many"), "payload_bytes"),
        (lambda h: h.update(payload_bytes=h["payload_bytes"] - 1), "has trailing data"),
        (lambda h: h.update(payload_bytes=h["payload_bytes"] + 1), "is truncated"),
        (lambda h: h.update(hyperparameters=[]), "hyperparameters"),
        (lambda h: h.clear(), "format version None"),
    ],
)
def test_crafted_headers_are_value_errors(saved, change, match):
    """Files with a valid checksum but a wrong header (written by hand, not by `save`)."""
    _rewrite_header(saved, change, rechecksum=True)
    with pytest.raises(ValueError, match=match) as info:
        jacsens.load(saved)
    assert "m.jsns" in str(info.value) and "is has" not in str(info.value)


def test_save_into_a_missing_folder_or_onto_a_folder(tmp_path, getkey):
    model = jacsens.MLP(2, (), 2, key=getkey())
    target = tmp_path / "absent" / "m.jsns"
    with pytest.raises(ValueError, match=r"absent.*does not exist"):
        jacsens.save(target, model)
    with pytest.raises(ValueError, match="is a folder"):
        jacsens.save(tmp_path, model)
    assert os.listdir(tmp_path) == []


def test_save_removes_temporaries_of_killed_saves(tmp_path, getkey):
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(done.stdout)  # a process that has exited
    stale = tmp_path / f".m.jsns.{dead}.0a1b2c3d.tmp"
    stale.write_bytes(b"\0" * 1000)
    live = tmp_path / f".m.jsns.{os.getpid()}.deadbeef.tmp"  # a save still running here
    live.write_bytes(b"")
    other = tmp_path / f".other.jsns.{dead}.0a1b2c3d.tmp"  # another file's: not ours
    other.write_bytes(b"")
    jacsens.save(tmp_path / "m.jsns", jacsens.MLP(2, (), 2, key=getkey()))
    assert sorted(os.listdir(tmp_path)) == sorted(["m.jsns", live.name, other.name])


def test_atomic_folder_swaps_whole_folders(tmp_path):
    out = tmp_path / "rep"
    with _atomic.atomic_folder(out) as tmp:
        (Path(tmp) / "a.txt").write_text("one")
    assert os.listdir(out) == ["a.txt"]
    with pytest.raises(RuntimeError, match="boom"), _atomic.atomic_folder(out) as tmp:
        (Path(tmp) / "b.txt").write_text("two")
        raise RuntimeError("boom")
    assert os.listdir(out) == ["a.txt"] and os.listdir(tmp_path) == ["rep"]
    with _atomic.atomic_folder(out) as tmp:
        (Path(tmp) / "b.txt").write_text("two")
    assert os.listdir(out) == ["b.txt"] and os.listdir(tmp_path) == ["rep"]
    with pytest.raises(ValueError, match="Refusing to replace"):
        with _atomic.atomic_folder(out, replace=lambda p: False):
            pass
    with pytest.raises(RuntimeError), _atomic.atomic_folder(tmp_path / "new"):
        raise RuntimeError
    assert os.listdir(tmp_path) == ["rep"]  # no empty folder left behind
    with (
        pytest.raises(ValueError, match="does not exist"),
        _atomic.atomic_folder(tmp_path / "x" / "y"),
    ):
        pass


def test_json_helper_is_strict():
    @dataclasses.dataclass
    class Point:
        x: float
        y: tuple

    obj = {1: Point(float("nan"), (np.float32(1.5), np.arange(2))), "inf": -math.inf}
    assert _atomic.to_json_compatible(obj) == {"1": {"x": None, "y": [1.5, [0, 1]]}, "inf": None}


def _record(**change):
    base = dict(
        source="/data/a.csv",
        features=("a", "b"),
        target="y",
        n_rows=50,
        standardisation={"x_mean": [1.0, 2.0], "x_std": [0.5, 3.0], "y_mean": -1.0, "y_std": 2.0},
        model={"class": "jacsens.MLP", "in_size": 2, "widths": [4]},
        split=_io.Split(seed=3, test_fraction=0.3, n_rows=50, model_file="model.jsns"),
        training={"fitted": True, "epochs": 3, "final_train_loss": float("nan")},
        metrics={"test_r2": 0.75, "train_r2": 0.8},
    )
    return _io.FitRecord(**{**base, **change})


def test_fit_record_json_round_trip(tmp_path):
    for record in (_record(), _record(standardisation=None, split=None)):
        text = json.dumps(record.to_json(), allow_nan=False)
        again = _io.FitRecord.from_json(json.loads(text))
        # NaN is stored as null, the rest exactly
        assert again == dataclasses.replace(
            record, training={**record.training, "final_train_loss": None}
        )
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({**_record().to_json(), "timings": {}}))
    assert _io.FitRecord.read(path).split.seed == 3


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda j: j.pop("data"), "`data` is missing"),
        (lambda j: j["data"].update(features="ab"), "`data.features`"),
        (lambda j: j["data"].update(n_rows=True), "`data.n_rows`"),
        (lambda j: j["split"].pop("seed"), "`split.seed` is missing"),
        (lambda j: j["data"]["standardisation"].update(x_std=[1.0]), "x_std"),
        (lambda j: j["data"]["standardisation"].update(y_std=0.0), "positive"),
        (lambda j: j.update(metrics=None), "`metrics`"),
    ],
)
def test_fit_record_refuses_malformed_json(tmp_path, change, match):
    obj = _record().to_json()
    change(obj)
    with pytest.raises(ValueError, match=match):
        _io.FitRecord.from_json(obj)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match="summary.json"):
        _io.FitRecord.read(path)


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


def test_save_refuses_unsaveable_models(tmp_path, getkey):
    with pytest.raises(TypeError, match="`model` must be .* got a bare ArrayImpl"):
        jacsens.save(tmp_path / "f.jsns", jnp.ones(3))
    with pytest.raises(TypeError, match="no array leaves"):
        jacsens.save(tmp_path / "f.jsns", {"a": 1.0, "f": jnp.tanh})
    with pytest.raises(TypeError, match=r"PRNG key at \['key'\]"):
        jacsens.save(tmp_path / "f.jsns", {"w": jnp.ones(2), "key": getkey()})
    with pytest.raises(TypeError, match="path"):
        jacsens.save(3, jacsens.MLP(2, (), 2, key=getkey()))
    with pytest.raises(ValueError, match="`input_shape` must be the MLP's input shape"):
        jacsens.save(tmp_path / "f.jsns", jacsens.MLP(2, (), 2, key=getkey()), input_shape=(3,))
    with pytest.raises(ValueError, match="`input_shape` must be a sequence"):
        jacsens.save(tmp_path / "f.jsns", {"w": jnp.ones(2)}, input_shape=(-1,))
    assert os.listdir(tmp_path) == []


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        jacsens.load(tmp_path / "absent.jsns")


def test_mlp_subclass_and_odd_activation_are_saved_by_structure(tmp_path, getkey):
    """`load` without `like` would rebuild the base class and silently drop a subclass's
    own behaviour, so a subclass (or an activation without a name) is saved as any other
    module: its structure is recorded and loading it needs a skeleton."""

    class Sub(jacsens.MLP):
        def __call__(self, x, *, key=None):
            return -super().__call__(x)

    model = Sub(3, (4,), 2, key=getkey(), dtype=jnp.float32)
    jacsens.save(tmp_path / "m.jsns", model)
    assert _io.read_header(tmp_path / "m.jsns")["class"].endswith("Sub")
    with pytest.raises(ValueError, match=r"m\.jsns.*holds a .*Sub, not an MLP.*like="):
        jacsens.load(tmp_path / "m.jsns")
    loaded = jacsens.load(
        tmp_path / "m.jsns", like=Sub(3, (4,), 2, key=getkey(), dtype=jnp.float32)
    )
    assert type(loaded) is Sub
    x = jax.random.normal(getkey(), (5, 3), jnp.float32)
    assert _same_outputs(model, loaded, x)
    # A plain MLP of the same shapes is another class: refused at the root.
    with pytest.raises(ValueError, match="`like` does not match.*at the root.*Sub.*MLP"):
        jacsens.load(
            tmp_path / "m.jsns", like=jacsens.MLP(3, (4,), 2, key=getkey(), dtype=jnp.float32)
        )

    odd = eqx.nn.MLP(2, 2, 3, 1, activation=lambda z: z**3, key=getkey(), dtype=jnp.float32)
    jacsens.save(tmp_path / "odd.jsns", odd)
    entries = _io.read_header(tmp_path / "odd.jsns")["structure"]
    assert {"path": ".activation", "callable": odd.activation.__qualname__} in [
        {k: e[k] for k in ("path", "callable") if k in e} for e in entries
    ]
    again = jacsens.load(tmp_path / "odd.jsns", like=odd)
    x = jax.random.normal(getkey(), (4, 2), jnp.float32)
    assert _same_outputs(odd, again, x)
    # The recorded function names must agree: a tanh MLP is not a cube MLP.
    tanh = eqx.nn.MLP(2, 2, 3, 1, activation=jnp.tanh, key=getkey(), dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"at \.activation the file has callable"):
        jacsens.load(tmp_path / "odd.jsns", like=tanh)


# --------------------------------------------------------------------------- any model


def _build(name, key, dtype):
    return {"conv": _skeletons.ConvNet, "residual": _skeletons.Residual}.get(
        name, _skeletons.Scanned
    )(key, dtype)


_INPUTS = {
    "conv": _skeletons.CONV_INPUT,
    "residual": _skeletons.RESIDUAL_INPUT,
    "scan": _skeletons.SCAN_INPUT,
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["conv", "residual", "scan"])
def test_any_model_round_trip_bit_identical(tmp_path, getkey, name, dtype):
    """Outputs, input Jacobians and leaves of the loaded model are the original's, bit
    for bit, whichever way the skeleton is given."""
    model = _build(name, getkey(), dtype)
    path = tmp_path / "net.jsns"
    jacsens.save(path, model, input_shape=_INPUTS[name])
    header = _io.read_header(path)
    assert header["input_shape"] == list(_INPUTS[name])
    assert header["class"].endswith(type(model).__name__) and "hyperparameters" not in header
    assert [s["dtype"] for s in header["leaves"]] == [jnp.dtype(dtype).name] * len(header["leaves"])
    x = jax.random.normal(getkey(), (3, *_INPUTS[name]), dtype)
    J = jacsens.input_jacobian(model, x)
    J_plain = jax.vmap(jax.jacrev(model))(x)
    skeletons = {
        "fresh": _build(name, getkey(), dtype),  # other values, same structure
        "eval_shape": eqx.filter_eval_shape(_build, name, getkey(), dtype),
        "factory": lambda key: _build(name, key, dtype),
    }
    for how, like in skeletons.items():
        loaded = jacsens.load(path, like=like)
        assert type(loaded) is type(model), how
        for a, b in zip(_leaves(model), _leaves(loaded), strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b), how
        assert _same_outputs(model, loaded, x), how
        J2 = jacsens.input_jacobian(loaded, x)
        assert J2.dtype == J.dtype and np.array_equal(J, J2), how
        assert np.array_equal(J_plain, jax.vmap(jax.jacrev(loaded))(x)), how
    # The skeleton's own values are untouched (a fresh model is not overwritten in place).
    fresh = zip(_leaves(skeletons["fresh"]), _leaves(model), strict=True)
    assert not all(np.array_equal(a, b) for a, b in fresh)


def test_plain_pytree_round_trip(tmp_path, getkey):
    tree = {"w": jax.random.normal(getkey(), (3, 2), jnp.float64), "b": [jnp.arange(4), None]}
    jacsens.save(tmp_path / "t.jsns", tree)
    loaded = jacsens.load(tmp_path / "t.jsns", like=jax.tree.map(jnp.zeros_like, tree))
    assert loaded["b"][1] is None and loaded["b"][0].dtype == tree["b"][0].dtype
    assert np.array_equal(loaded["w"], tree["w"]) and np.array_equal(loaded["b"][0], tree["b"][0])
    with pytest.raises(ValueError, match=r"at \['b'\]\[1\] the file has none"):
        jacsens.load(tmp_path / "t.jsns", like={"w": tree["w"], "b": [tree["b"][0], 1.0]})


@pytest.fixture
def conv_file(tmp_path, getkey):
    path = tmp_path / "conv.jsns"
    model = _skeletons.ConvNet(getkey(), jnp.float64)
    jacsens.save(path, model)
    return path, model


def test_wrong_skeleton_is_refused_naming_the_leaf(conv_file, getkey):
    path, model = conv_file
    f64 = jnp.float64
    cases = [
        # other shapes
        (
            eqx.tree_at(lambda m: m.head.weight, model, jnp.zeros((3, 31), f64)),
            r"at \.head\.weight the file has an array float64\[3, 32\], `like` has an "
            r"array float64\[3, 31\]",
        ),
        # other dtype
        (_skeletons.ConvNet(getkey(), jnp.float32), r"at \.conv\.weight .*float64.*float32"),
        # other structure: another class at the root, inside, or a static field
        (_skeletons.Residual(getkey(), f64), "at the root the file has a ConvNet"),
        (
            eqx.tree_at(lambda m: m.pool, model, eqx.nn.MaxPool2d(2, stride=2)),
            r"at \.pool the file has a AvgPool2d.*`like` has a MaxPool2d",
        ),
        (
            eqx.tree_at(lambda m: m.pool, model, eqx.nn.AvgPool2d(2, stride=1)),
            r"at \.pool .*'stride': \[2, 2\].*'stride': \[1, 1\]",
        ),
        (eqx.tree_at(lambda m: m.head.bias, model, None), r"at \.head\.bias"),
        ((model.conv, model.pool, model.head), "at the root the file has a ConvNet"),
    ]
    for like, match in cases:
        with pytest.raises(ValueError, match=r"`like` does not match the model in .*conv\.jsns"):
            jacsens.load(path, like=like)
        with pytest.raises(ValueError, match=match):
            jacsens.load(path, like=like)
    with pytest.raises(ValueError, match=r"conv\.jsns.*holds a .*ConvNet, not an MLP"):
        jacsens.load(path)
    with pytest.raises(ValueError, match=r"called as like\(key\).*conv\.jsns.*TypeError"):
        jacsens.load(path, like=_skeletons.no_arguments)
    # An MLP file checks `like` too.
    mlp = jacsens.MLP(4, (3,), 2, key=getkey(), dtype=jnp.float32)
    jacsens.save(path, mlp)
    assert _same_outputs(jacsens.load(path, like=mlp), mlp, jnp.ones((2, 4), jnp.float32))
    with pytest.raises(
        ValueError,
        match=r"`like` does not match the jacsens\.MLP.*at the root.*'widths': \[3\].*\[5\]",
    ):
        jacsens.load(path, like=jacsens.MLP(4, (5,), 2, key=getkey(), dtype=jnp.float32))


def test_any_model_file_corruption_is_refused(conv_file, getkey):
    path, model = conv_file
    x = jax.random.normal(getkey(), (2, *_skeletons.CONV_INPUT), jnp.float64)
    like = _skeletons.conv_factory64
    data = path.read_bytes()
    rng = np.random.default_rng(1)
    for pos in rng.choice(len(data), size=120, replace=False):
        damaged = bytearray(data)
        damaged[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(damaged))
        with pytest.raises(ValueError, match=r"conv\.jsns"):
            jacsens.load(path, like=like)
    path.write_bytes(data)
    assert _same_outputs(jacsens.load(path, like=like), model, x)
    crafted = [
        (lambda h: h.update(structure={}), "field 'structure' must be a list"),
        (lambda h: h["structure"].pop(), r"arrays of its structure .* are not its leaves"),
        (lambda h: h["structure"][2].update(shape=[2, 1, 3, 4]), "are not its leaves"),
        (lambda h: h["structure"].__setitem__(1, "conv"), "structure entry 1"),
        (lambda h: h.update(structure=[]), r"are not its leaves|structure is empty"),
        (lambda h: h.update(input_shape="1x8x8"), "'input_shape'"),
        (lambda h: h.update(input_shape=[1, -8]), "'input_shape'"),
        # a consistent but different structure: refused by the skeleton comparison
        (lambda h: h["structure"][0].update(node="Other"), "at the root the file has a Other"),
    ]
    for change, match in crafted:
        _rewrite_header(path, change, rechecksum=True)
        with pytest.raises(ValueError, match=match) as info:
            jacsens.load(path, like=like)
        assert "conv.jsns" in str(info.value)
        path.write_bytes(data)
    _rewrite_header(path, lambda h: h["structure"][0].update(node="Other"))  # no new checksum
    with pytest.raises(ValueError, match="checksum does not match"):
        jacsens.load(path, like=like)
