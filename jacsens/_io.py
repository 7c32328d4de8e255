"""Saving and loading models (no pickle), and the record of a fit.

Model file layout, format version 2 (all in one file):

1. the magic line `JACSENS-MODEL\\n`;
2. the checksum line `sha256 <64 hex digits>\\n`: the SHA-256 of everything after it;
3. one line of JSON (the header): format version, jacsens version, model class, the
   shape and dtype of every array leaf, the size of the payload, and either
   - for a `jacsens.MLP`/`eqx.nn.MLP`: the constructor arguments that rebuild it, or
   - for any other Equinox module or pytree of arrays: its `structure`, one entry per node
     and leaf in flattening order (node classes, field names, static fields, leaf shapes
     and dtypes, callables by qualified name), and optionally the `input` shape;
4. the payload: `eqx.tree_serialise_leaves` of the model.

The checksum covers the header as well as the parameters, so no edit or damage anywhere in
the file goes unnoticed: `load` verifies it before it parses anything, then builds the
skeleton (from the constructor arguments of an MLP, or from the caller's `like` for any
other model; never by unpickling or importing anything named in the file), checks every
leaf's shape and dtype against it, and deserialises into it. Every way a file can be wrong
is a `ValueError` naming the file.

`FitRecord` is what `jacsens fit`/`jacsens analyze` record about a fit in `summary.json`
(data, standardisation, split, seed, hyper-parameters, metrics), with a JSON round trip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._atomic import atomic_write, to_json_compatible
from ._ensemble import Ensemble
from ._models import ACTIVATIONS, MLP, activation_callable, identify_activation

MAGIC = b"JACSENS-MODEL\n"
FORMAT_VERSION = 2
_MAX_HEADER_BYTES = 1 << 20
_CHECKSUM_LINE = re.compile(rb"sha256 ([0-9a-f]{64})\n")
_CLASSES = ("jacsens.MLP", "equinox.nn.MLP", "jacsens.Ensemble")

PathLike = str | os.PathLike


def _storable_activations() -> list[str]:
    """Activation names an `eqx.nn.MLP` can be saved with: those with a JAX callable."""
    names = []
    for name in ACTIVATIONS:
        try:
            activation_callable(name)
        except ValueError:
            continue
        names.append(name)
    return sorted(names)


def _activation_name(fn: Any, field: str) -> str:
    act = identify_activation(fn)
    if act is None or act.name not in _storable_activations():
        raise TypeError(
            f"Cannot save an eqx.nn.MLP whose `{field}` is {fn!r}: only "
            f"{_storable_activations()} can be stored by name."
        )
    return act.name


def describe_model(model: Any) -> tuple[str, dict[str, Any]]:
    """The class tag and constructor arguments of a model `save` can store.

    **Arguments:**

    - `model`: a `jacsens.MLP` or an `equinox.nn.MLP` (exact classes: `load` rebuilds the
        base class, which would silently drop a subclass's own behaviour).

    **Returns:**

    `(class_tag, hyperparameters)`: `"jacsens.MLP"` or `"equinox.nn.MLP"` and a
    JSON-serialisable dict of constructor arguments (with `in_size` and `out_size`).

    **Raises:**

    `TypeError` if the model cannot be saved.
    """
    if type(model) is MLP:
        return "jacsens.MLP", model.hyperparameters()
    if type(model) is Ensemble:
        # an ensemble of MLPs: its members' constructor arguments and the member count
        member_cls, member = describe_model(model.member(0))
        return "jacsens.Ensemble", {
            "size": model.size,
            "member_class": member_cls,
            "member": member,
            "in_size": member["in_size"],
            "out_size": member["out_size"],
        }
    if type(model) is eqx.nn.MLP:
        return "equinox.nn.MLP", {
            "in_size": model.in_size,
            "out_size": model.out_size,
            "width_size": model.width_size,
            "depth": model.depth,
            "activation": _activation_name(model.activation, "activation"),
            "final_activation": _activation_name(model.final_activation, "final_activation"),
            "use_bias": model.use_bias,
            "use_final_bias": model.use_final_bias,
            "scan": bool(getattr(model, "scan", False)),
            "dtype": str(jax.tree.leaves(eqx.filter(model, eqx.is_array))[0].dtype),
        }
    raise TypeError(
        "`model` must be a jacsens.MLP or an equinox.nn.MLP to be saved, got "
        f"{type(model).__name__}."
    )


def _skeleton(cls: str, hp: dict[str, Any]) -> Any:
    return build_model(cls, hp, jax.random.key(0))


def build_model(cls: str, hp: dict[str, Any], key: Any) -> Any:
    """A freshly initialised model (from `key`) of the class tag and hyperparameters that
    `describe_model` gives."""
    if cls == "jacsens.Ensemble":
        expected = {"size", "member_class", "member", "in_size", "out_size"}
        if set(hp) != expected or hp["member_class"] not in _CLASSES[:2]:
            raise ValueError(f"expected the fields {sorted(expected)} of MLP members, got {hp}")
        member_cls, member = hp["member_class"], hp["member"]
        return Ensemble.init(lambda k: build_model(member_cls, member, k), hp["size"], key=key)
    if cls == "jacsens.MLP":
        expected = {
            "in_size",
            "widths",
            "out_size",
            "activation",
            "final_activation",
            "use_bias",
            "dtype",
        }
        if set(hp) != expected:
            raise ValueError(f"expected the fields {sorted(expected)}, got {sorted(hp)}")
        return MLP(
            hp["in_size"],
            hp["widths"],
            hp["out_size"],
            hp["activation"],
            key=key,
            final_activation=hp["final_activation"],
            use_bias=hp["use_bias"],
            dtype=jnp.dtype(hp["dtype"]),
        )
    kwargs = dict(
        in_size=hp["in_size"],
        out_size=hp["out_size"],
        width_size=hp["width_size"],
        depth=hp["depth"],
        activation=activation_callable(hp["activation"]),
        final_activation=activation_callable(hp["final_activation"]),
        use_bias=hp["use_bias"],
        use_final_bias=hp["use_final_bias"],
        dtype=jnp.dtype(hp["dtype"]),
        key=key,
    )
    if hp.get("scan"):
        kwargs["scan"] = True
    return eqx.nn.MLP(**kwargs)


def _is_leaf_array(x: Any) -> bool:
    return eqx.is_array(x) or isinstance(x, jax.ShapeDtypeStruct)


def _leaf_specs(model: Any) -> list[dict[str, Any]]:
    """Shape and dtype of every array leaf (or `jax.ShapeDtypeStruct` of an abstract model)."""
    return [
        {"shape": list(leaf.shape), "dtype": str(leaf.dtype)}
        for leaf in jax.tree.leaves(eqx.filter(model, _is_leaf_array))
    ]


def _qualname(obj: Any) -> tuple[str, str]:
    """`(module, qualified name)` of a class or function (`"?"` where it has none)."""
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(name, str):  # an instance: name its class
        return _qualname(type(obj))
    return (module if isinstance(module, str) else "?"), name


def _static_value(value: Any) -> Any:
    """A static field's value as JSON: numbers, strings and containers as they are,
    dtypes by name, callables and classes by qualified name, other objects by class."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, list | tuple):
        return [_static_value(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _static_value(v) for k, v in value.items()}}
    if isinstance(value, np.dtype):
        return {"dtype": str(value)}
    module, name = _qualname(value)
    if callable(value):
        return {"callable": name, "module": module}
    text = repr(value)
    # A repr with a memory address would differ between the saving and loading process.
    return {"object": name, "module": module, **({} if "0x" in text else {"repr": text})}


def _leaf_entry(leaf: Any) -> dict[str, Any]:
    if _is_leaf_array(leaf):
        return {"shape": list(leaf.shape), "dtype": str(leaf.dtype)}
    if isinstance(leaf, bool | int | float | complex):
        # Stored in the payload by `tree_serialise_leaves`: the type is the structure.
        return {"scalar": type(leaf).__name__}
    if isinstance(leaf, str):
        return {"value": leaf}
    module, name = _qualname(leaf)
    if callable(leaf):
        return {"callable": name, "module": module}
    return {"object": name, "module": module}


def structure(model: Any) -> list[dict[str, Any]]:
    """The structural description `save` records of a pytree (for files of any model
    other than an MLP), and `load` compares a skeleton against.

    One entry per node and leaf, in depth-first flattening order, each with its `path`
    (`jax.tree_util.keystr`): a node has its class (`node`, `module`), the keys of its
    children (`children`) and, for an Equinox module, its static fields (`static`, as
    JSON); an array leaf (or `jax.ShapeDtypeStruct`) has `shape` and `dtype`; a Python
    number leaf its type (`scalar`: its value is in the payload); a function leaf its
    qualified name (`callable`, `module`); `None` is `{"none": true}`.

    **Arguments:**

    - `model`: an Equinox module or any pytree (arrays may be `jax.ShapeDtypeStruct`s).

    **Returns:**

    The list of entries (JSON-serialisable).
    """
    entries: list[dict[str, Any]] = []

    def visit(node: Any, path: tuple) -> None:
        where = jax.tree_util.keystr(path)
        if node is None:
            entries.append({"path": where, "none": True})
            return
        children, treedef = jax.tree_util.tree_flatten_with_path(
            node, is_leaf=lambda x: x is not node
        )
        if _is_leaf_array(node) or jax.tree_util.treedef_is_leaf(treedef):
            entries.append({"path": where, **_leaf_entry(node)})
            return
        module, name = _qualname(type(node))
        entry: dict[str, Any] = {
            "path": where,
            "node": name,
            "module": module,
            "children": [jax.tree_util.keystr(k) for k, _ in children],
        }
        if isinstance(node, eqx.Module):
            entry["static"] = {
                f.name: _static_value(getattr(node, f.name, None))
                for f in dataclasses.fields(node)
                if f.metadata.get("static", False)
            }
        entries.append(entry)
        for key, child in children:
            visit(child, (*path, *key))

    visit(model, ())
    return entries


def _comparable(x: Any) -> Any:
    """`x` without module paths: one file can be imported under two names (as
    `tests._skeletons` and by its path), and its classes are the same classes."""
    if isinstance(x, dict):
        return {k: _comparable(v) for k, v in x.items() if k != "module"}
    if isinstance(x, list):
        return [_comparable(v) for v in x]
    return x


def _describe_entry(entry: dict[str, Any]) -> str:
    if "shape" in entry:
        return f"an array {entry['dtype']}{entry['shape']}"
    if "node" in entry:
        static = f", static {entry['static']}" if entry.get("static") else ""
        return f"a {entry['node']} with children {entry['children']}{static}"
    return ", ".join(f"{k} {v!r}" for k, v in entry.items() if k not in ("path", "module"))


def _first_mismatch(saved: list[dict[str, Any]], like: list[dict[str, Any]]) -> str | None:
    """Where the skeleton's structure first departs from the file's, in words."""
    for i in range(max(len(saved), len(like))):
        if i >= len(saved):
            where = like[i]["path"] or "the root"
            return f"`like` has more: at {where}, {_describe_entry(like[i])}"
        if i >= len(like):
            where = saved[i]["path"] or "the root"
            return f"`like` has nothing at {where}, where the file has {_describe_entry(saved[i])}"
        a, b = _comparable(saved[i]), _comparable(like[i])
        if a != b:
            where = saved[i].get("path") or "the root"
            return (
                f"at {where} the file has {_describe_entry(saved[i])}, `like` has "
                f"{_describe_entry(like[i])}"
            )
    return None


def save(path: PathLike, model: Any, *, input_shape: Sequence[int] | None = None) -> None:
    """Save a model to `path`: a header describing it, the parameters, and a checksum of both.

    A `jacsens.MLP` or `equinox.nn.MLP` (with an activation from `jacsens.ACTIVATIONS`
    that has a `jax.nn`/`jnp` counterpart) is stored with its constructor arguments, and
    `load(path)` rebuilds it. Any other Equinox module or pytree of arrays is stored with
    its structure (see `structure`): `load(path, like=...)` restores it into a skeleton
    of the same structure.

    The file is written to a temporary file in the same folder and moved into place with
    `os.replace`, so an interrupted or failed save never leaves a half-written file, and an
    existing file at `path` stays intact unless the save succeeds.

    **Arguments:**

    - `path`: destination file (conventionally `*.jsns`); its folder must exist.
    - `model`: an Equinox module or pytree whose leaves are arrays, Python numbers,
        functions or `None`.
    - `input_shape`: the shape of one input sample, recorded in the header (the command
        line's `explain`/`check`/`bench` read it); an MLP's is recorded from its
        `in_size`, and must agree if given.

    **Raises:**

    `TypeError` if the model is a bare array, has no array leaves or has a PRNG-key leaf,
    or `path` is not a path; `ValueError` for a bad `input_shape`, or naming `path` if its
    folder does not exist or it is a folder; `OSError` from the file system.
    """
    from . import __version__

    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    shape = None
    if input_shape is not None:
        if not isinstance(input_shape, Sequence) or not all(
            _is_int(d) and d >= 0 for d in input_shape
        ):
            raise ValueError(
                f"`input_shape` must be a sequence of non-negative ints, got {input_shape!r}."
            )
        shape = [int(d) for d in input_shape]
    header: dict[str, Any] = {
        "format": "jacsens-model",
        "format_version": FORMAT_VERSION,
        "jacsens_version": __version__,
    }
    try:
        cls, hp = describe_model(model)
    except TypeError:
        cls = None
    if cls is not None:
        in_size = hp["in_size"]
        mlp_shape = [] if in_size == "scalar" else [int(in_size)]
        if shape is not None and shape != mlp_shape:
            raise ValueError(
                f"`input_shape` must be the MLP's input shape {tuple(mlp_shape)}, got "
                f"{tuple(shape)}."
            )
        header.update({"class": cls, "hyperparameters": hp})
        shape = mlp_shape
    else:
        if eqx.is_array(model):
            # A bare array is no model; refusing it keeps `save(path, X)` (arguments
            # swapped or confused) from writing data as if it were a model.
            raise TypeError(
                f"`model` must be an Equinox module or a pytree of arrays, got a bare "
                f"{type(model).__name__}; wrap it in a container, e.g. {{'w': array}}."
            )
        leaves = jax.tree_util.tree_leaves_with_path(eqx.filter(model, eqx.is_array))
        if not leaves:
            raise TypeError(
                f"`model` ({type(model).__name__}) has no array leaves: nothing to save."
            )
        for where, leaf in leaves:
            if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                raise TypeError(
                    f"`model` has a PRNG key at {jax.tree_util.keystr(where)}: keys cannot "
                    "be stored; store jax.random.key_data(key) instead."
                )
        module, name = _qualname(type(model))
        header.update({"class": f"{module}.{name}", "structure": structure(model)})
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, model)
    payload = buf.getvalue()
    header["leaves"] = _leaf_specs(model)
    header["payload_bytes"] = len(payload)
    if shape is not None:
        header["input_shape"] = shape
    body = json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n" + payload
    checksum = b"sha256 " + hashlib.sha256(body).hexdigest().encode("ascii") + b"\n"

    def write(f):
        f.write(MAGIC)
        f.write(checksum)
        f.write(body)

    atomic_write(path, write)


def read_header(path: PathLike) -> dict[str, Any]:
    """Read and check the header of a model file without building the model.

    **Returns:** the header as a dict (see the module docstring).

    **Raises:** `ValueError` naming `path` if the file is not an intact jacsens model file.
    """
    header, _ = _read(path)
    return header


def _read(path: PathLike) -> tuple[dict[str, Any], bytes]:
    """The verified header and payload of a model file."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a jacsens model file.")
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise ValueError(
            f"{path!r} is not a jacsens model file (it does not start with {MAGIC!r})."
        )
    match = _CHECKSUM_LINE.match(data, len(MAGIC))
    if match is None:
        if _old_format(data[len(MAGIC) :]):
            raise ValueError(
                f"{path!r} uses model file format version 1, whose header had no checksum; "
                f"this jacsens reads version {FORMAT_VERSION}. Load it with the jacsens that "
                "wrote it and save it again."
            )
        raise ValueError(f"{path!r} is corrupt: its checksum line is missing or damaged.")
    body = data[match.end() :]
    if hashlib.sha256(body).hexdigest().encode("ascii") != match.group(1):
        raise ValueError(
            f"{path!r} is corrupt: its checksum does not match its contents (the file was "
            "truncated, damaged or edited after it was saved)."
        )
    end = body.find(b"\n", 0, _MAX_HEADER_BYTES)
    if end < 0:
        raise ValueError(f"{path!r} has no complete header line.")
    try:
        header = json.loads(body[:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path!r} has a corrupt header: {e}") from None
    payload = body[end + 1 :]
    _check_header(header, len(payload), path)
    return header, payload


def _old_format(rest: bytes) -> bool:
    """Whether `rest` (the file after the magic line) starts with a version-1 header."""
    end = rest.find(b"\n", 0, _MAX_HEADER_BYTES)
    try:
        header = json.loads(rest[:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(header, dict) and header.get("format_version") == 1


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_header(header: Any, n_payload: int, path: str) -> None:
    """Every field `load` reads, with the type it needs; a `ValueError` naming `path`."""
    if not isinstance(header, dict):
        raise ValueError(f"{path!r} has a corrupt header: not a JSON object.")
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses model file format version {version!r}; this jacsens reads "
            f"version {FORMAT_VERSION} (the file was written by jacsens "
            f"{header.get('jacsens_version', '?')})."
        )
    required: dict[str, type] = {
        "format": str,
        "class": str,
        "leaves": list,
        "payload_bytes": int,
    }
    # A file of any model but an MLP has its structure; an MLP's its constructor arguments.
    generic = "structure" in header
    required["structure" if generic else "hyperparameters"] = list if generic else dict
    for name, kind in required.items():
        value = header.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(
                f"{path!r} has an invalid header: field {name!r} must be a "
                f"{kind.__name__}, got {value!r}."
            )
    if header["format"] != "jacsens-model":
        raise ValueError(f"{path!r} is not a jacsens model file (format {header['format']!r}).")
    if not generic and header["class"] not in _CLASSES:
        raise ValueError(f"{path!r} holds a model of unknown class {header['class']!r}.")
    shape = header.get("input_shape")
    if shape is not None and (
        not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape)
    ):
        raise ValueError(
            f"{path!r} has an invalid header: field 'input_shape' must be a list of "
            f"non-negative ints, got {shape!r}."
        )
    n_bytes = 0
    for i, spec in enumerate(header["leaves"]):
        shape = spec.get("shape") if isinstance(spec, dict) else None
        dtype = spec.get("dtype") if isinstance(spec, dict) else None
        if (
            not isinstance(shape, list)
            or not all(_is_int(d) and d >= 0 for d in shape)
            or not isinstance(dtype, str)
        ):
            raise ValueError(
                f"{path!r} has an invalid header: leaf {i} must be "
                f'{{"shape": [non-negative ints], "dtype": str}}, got {spec!r}.'
            )
        try:
            itemsize = jnp.dtype(dtype).itemsize
        except TypeError:
            raise ValueError(f"{path!r} has an invalid header: leaf {i} dtype {dtype!r}.") from None
        n_bytes += math.prod(shape) * itemsize
    if generic:
        _check_structure(header["structure"], header["leaves"], path)
    if header["payload_bytes"] != n_payload:
        what = "is truncated" if n_payload < header["payload_bytes"] else "has trailing data"
        raise ValueError(
            f"{path!r} {what}: the header announces {header['payload_bytes']} bytes of "
            f"parameters, the file holds {n_payload}."
        )
    if n_bytes > n_payload:
        raise ValueError(
            f"{path!r} has an invalid header: its leaves need {n_bytes} bytes, the "
            f"parameters hold {n_payload}."
        )


def _check_structure(entries: list[Any], leaves: list[Any], path: str) -> None:
    """The structure is a list of entries with a `path`, and its arrays are the leaves."""
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(
                f"{path!r} has an invalid header: structure entry {i} must be an object "
                f'with a "path", got {entry!r}.'
            )
    arrays = [{"shape": e["shape"], "dtype": e.get("dtype")} for e in entries if "shape" in e]
    if arrays != leaves:
        raise ValueError(
            f"{path!r} has an invalid header: the arrays of its structure ({_fmt(arrays)}) "
            f"are not its leaves ({_fmt(leaves)})."
        )
    if not entries:
        raise ValueError(f"{path!r} has an invalid header: its structure is empty.")


def _skeleton_of(like: Any, path: str) -> Any:
    """The skeleton `like` gives: itself, or for a function (not a module), `like(key)`
    evaluated abstractly (shapes and dtypes only, nothing allocated)."""
    if isinstance(like, eqx.Module) or not callable(like):
        return like
    try:
        return eqx.filter_eval_shape(like, jax.random.key(0))
    except Exception as e:
        raise ValueError(
            f"`like` is a function, so it is called as like(key) to build the skeleton for "
            f"{path!r}, and that failed: {type(e).__name__}: {e}"
        ) from None


def load(path: PathLike, like: Any = None) -> Any:
    """Load a model written by `jacsens.save`.

    The whole file is checked against its checksum first. An MLP is then rebuilt from the
    saved constructor arguments (with a dummy key); any other model is restored into the
    skeleton `like`, whose structure (node classes, fields, static fields, every leaf's
    shape and dtype: see `jacsens.save`) must be the one the file records. The parameters
    are read into it; nothing is unpickled or imported. The loaded model gives
    bit-identical outputs to the saved one.

    Module paths of classes and functions are recorded but not compared (one file can be
    imported under two module names); their qualified names are.

    **Arguments:**

    - `path`: a file written by `jacsens.save`.
    - `like`: for a file of any model but an MLP, required: a model of the same structure
        (a freshly built one, or `eqx.filter_eval_shape(MyModel, ..., key=key)`, whose
        leaves are `jax.ShapeDtypeStruct`s), or a function (not a module) that builds one
        from a PRNG key, `like(key)` (evaluated abstractly: nothing is allocated). For an
        MLP file, optional: the rebuilt MLP is checked against it.

    **Returns:**

    The model: a `jacsens.MLP` or `equinox.nn.MLP`, or `like`'s structure with the saved
    leaves.

    **Raises:**

    `ValueError` naming `path` if the file is not a jacsens model file, is truncated,
    damaged or edited (checksum), was written in another format version, or its header and
    parameters disagree; if the file needs a skeleton and `like` is missing; or naming
    `like` and the first mismatching node or leaf (its path) if `like` does not match the
    file; `FileNotFoundError` if it does not exist.
    """
    header, payload = _read(path)
    path = os.fspath(path)
    if "structure" in header:
        if like is None:
            raise ValueError(
                f"{path!r} holds a {header['class']}, not an MLP: loading it needs a "
                "skeleton of the same structure, `jacsens.load(path, like=...)` with a model "
                "built the same way, its eqx.filter_eval_shape, or a function of a key that "
                "builds it."
            )
        skeleton = _skeleton_of(like, path)
        mismatch = _first_mismatch(header["structure"], structure(skeleton))
        if mismatch is not None:
            raise ValueError(
                f"`like` does not match the model in {path!r}: {mismatch}."
                + _x64_hint(header["leaves"])
            )
        expected = header["leaves"]
    else:
        cls, hp = header["class"], header["hyperparameters"]
        try:
            # Shapes first, without allocating: a header may describe any size.
            expected = _leaf_specs(eqx.filter_eval_shape(_skeleton, cls, hp))
        except Exception as e:
            raise ValueError(
                f"{path!r} has invalid constructor arguments for {cls}: {type(e).__name__}: {e}"
            ) from None
        if expected != header["leaves"]:
            raise ValueError(
                f"{path!r}: the saved parameters (shapes/dtypes {_fmt(header['leaves'])}) do "
                f"not match the model its header describes ({_fmt(expected)})."
                + _x64_hint(header["leaves"])
            )
        skeleton = _skeleton(cls, hp)
        if like is not None:
            mismatch = _first_mismatch(structure(skeleton), structure(_skeleton_of(like, path)))
            if mismatch is not None:
                raise ValueError(
                    f"`like` does not match the {cls} in {path!r}: {mismatch}."
                    + _x64_hint(header["leaves"])
                )
    try:
        model = eqx.tree_deserialise_leaves(io.BytesIO(payload), skeleton)
    except Exception as e:
        raise ValueError(
            f"{path!r}: could not read the parameters: {type(e).__name__}: {e}"
        ) from None
    if _leaf_specs(model) != expected:
        raise ValueError(
            f"{path!r}: the stored parameters ({_fmt(_leaf_specs(model))}) do not match the "
            f"header ({_fmt(expected)})."
        )
    return model


def _fmt(specs: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['dtype']}{s['shape']}" for s in specs[:6]) + (
        ", ..." if len(specs) > 6 else ""
    )


def _x64_hint(specs: list[dict[str, Any]]) -> str:
    if any(s["dtype"] == "float64" for s in specs) and not jax.config.read("jax_enable_x64"):
        return " The file holds float64 parameters: enable them with " + (
            'jax.config.update("jax_enable_x64", True) before loading.'
        )
    return ""


# ---------------------------------------------------------------------------------------
# The record of a fit
# ---------------------------------------------------------------------------------------

_STANDARDISATION_KEYS = ("x_mean", "x_std", "y_mean", "y_std")


@dataclasses.dataclass(frozen=True)
class Split:
    """The train/test split of a fit: `datasets.train_test_split` of `n_rows` rows with
    `test_fraction`, keyed by the first of three keys split from `jax.random.key(seed)`;
    `model_file` is the name of the model file fitted on it (beside `summary.json`)."""

    seed: int
    test_fraction: float
    n_rows: int
    model_file: str


@dataclasses.dataclass(frozen=True)
class FitRecord:
    """What `summary.json` records about a fit (`jacsens fit`, `jacsens analyze`).

    **Fields:**

    - `source`: where the data came from (an absolute CSV path or the bundled data's name).
    - `features`, `target`: the column names, in the model's input order.
    - `n_rows`: rows of the data.
    - `standardisation`: `{"x_mean": [...], "x_std": [...], "y_mean": float, "y_std":
        float}`, the constants the data were standardised with before the fit (raw
        `= standardised * std + mean`), or `None` for raw data.
    - `model`: the model's class tag and constructor arguments (`describe_model`).
    - `split`: the train/test split (`Split`), or `None` where the rows the model was
        fitted on are unknown (an analysis of a model fitted elsewhere).
    - `training`: training hyper-parameters and outcome (epochs, batch size, learning
        rate, final losses, row counts; `fitted` is false for a loaded model).
    - `metrics`: R² values and what they were computed on.
    """

    source: str
    features: tuple[str, ...]
    target: str
    n_rows: int
    standardisation: dict[str, Any] | None
    model: dict[str, Any]
    split: Split | None
    training: dict[str, Any]
    metrics: dict[str, Any]

    def __post_init__(self):
        _check_standardisation(self.standardisation, len(self.features))

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON-compatible sections of `summary.json`: `data`, `model`,
        `split`, `training`, `metrics` (non-finite numbers become `null`)."""
        return to_json_compatible(
            {
                "data": {
                    "source": self.source,
                    "n_rows": self.n_rows,
                    "features": list(self.features),
                    "target": self.target,
                    "standardisation": self.standardisation,
                },
                "model": self.model,
                "split": self.split,
                "training": self.training,
                "metrics": self.metrics,
            }
        )

    @classmethod
    def from_json(cls, obj: Any) -> FitRecord:
        """Rebuild a record from `to_json()`'s output (other keys are ignored).

        **Raises:** `ValueError` naming the first missing or malformed field.
        """
        try:
            data = _field(obj, "", "data", dict)
            split = obj.get("split")
            if split is not None:
                _field(obj, "", "split", dict)
                split = Split(
                    seed=_field(split, "split.", "seed", int),
                    test_fraction=float(_field(split, "split.", "test_fraction", float | int)),
                    n_rows=_field(split, "split.", "n_rows", int),
                    model_file=_field(split, "split.", "model_file", str),
                )
            features = _field(data, "data.", "features", list)
            if not all(isinstance(f, str) for f in features):
                raise ValueError("`data.features` must be a list of column names")
            st = data.get("standardisation")
            return cls(
                source=_field(data, "data.", "source", str),
                features=tuple(features),
                target=_field(data, "data.", "target", str),
                n_rows=_field(data, "data.", "n_rows", int),
                standardisation=None if st is None else dict(st),
                model=_field(obj, "", "model", dict),
                split=split,
                training=_field(obj, "", "training", dict),
                metrics=_field(obj, "", "metrics", dict),
            )
        except (TypeError, AttributeError) as e:
            raise ValueError(f"not a fit record: {e}") from None

    @classmethod
    def read(cls, path: PathLike) -> FitRecord:
        """The record in the `summary.json` at `path`.

        **Raises:** `ValueError` naming `path` if it is not valid JSON or not a fit record;
        `OSError` if it cannot be read.
        """
        path = os.fspath(path)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            return cls.from_json(json.loads(text))
        except ValueError as e:
            raise ValueError(f"{path!r} is not a fit summary: {e}") from None


def _field(obj: Any, prefix: str, name: str, kind: Any) -> Any:
    if not isinstance(obj, dict):
        raise ValueError(f"`{prefix.rstrip('.') or 'record'}` must be an object")
    if name not in obj:
        raise ValueError(f"`{prefix}{name}` is missing")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"`{prefix}{name}` must be a {kind}, got {value!r}")
    return value


def _check_standardisation(st: Any, n_features: int) -> None:
    if st is None:
        return
    if not isinstance(st, Mapping) or set(st) != set(_STANDARDISATION_KEYS):
        raise ValueError(
            f"`standardisation` must be None or have the keys {_STANDARDISATION_KEYS}, got {st!r}"
        )
    for key in ("x_mean", "x_std"):
        v = st[key]
        if not isinstance(v, list | tuple) or len(v) != n_features:
            raise ValueError(f"`standardisation.{key}` must have {n_features} numbers, got {v!r}")
    # y: one number per target (a list for several), or None for class labels
    y_mean, y_std = st["y_mean"], st["y_std"]
    if (y_mean is None) != (y_std is None):
        raise ValueError("`standardisation.y_mean` and `y_std` must both be None or neither")
    ys = [] if y_mean is None else [y_mean, y_std]
    ys = [v for y in ys for v in (y if isinstance(y, list | tuple) else [y])]
    values = [*st["x_mean"], *st["x_std"], *ys]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise ValueError("`standardisation` must hold finite numbers")
    stds = list(st["x_std"]) + ys[len(ys) // 2 :]
    if stds and min(stds) <= 0:
        raise ValueError("`standardisation` standard deviations must be positive")
