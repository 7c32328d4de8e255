"""Saving and loading models: a JSON header plus Equinox-serialised leaves, no pickle.

File layout (all in one file):

1. the magic line `JACSENS-MODEL\\n`;
2. one line of JSON (the header): format version, jacsens version, model class, the
   constructor arguments needed to rebuild a skeleton, the shape and dtype of every array
   leaf, and the size and SHA-256 of the payload;
3. the payload: `eqx.tree_serialise_leaves` of the model.

`load` rebuilds the skeleton from the header (never unpickling anything), checks it
against the recorded leaves and the payload checksum, then deserialises into it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from ._atomic import atomic_write
from ._chain import _identify
from ._models import MLP

MAGIC = b"JACSENS-MODEL\n"
FORMAT_VERSION = 1
_MAX_HEADER_BYTES = 1 << 20

PathLike = str | os.PathLike


def _eqx_activations() -> dict[str, Any]:
    """Callables an `eqx.nn.MLP` activation name is rebuilt with."""
    from equinox.nn import _mlp

    return {
        "identity": _mlp._identity,
        "relu": jax.nn.relu,
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "softplus": jax.nn.softplus,
        "gelu": jax.nn.gelu,
        "silu": jax.nn.silu,
        "elu": jax.nn.elu,
        "leaky_relu": jax.nn.leaky_relu,
        "sin": jnp.sin,
    }


def _activation_name(fn: Any, field: str) -> str:
    act = _identify(fn)
    if act is None or act.name not in _eqx_activations():
        raise TypeError(
            f"Cannot save an eqx.nn.MLP whose `{field}` is {fn!r}: only "
            f"{sorted(_eqx_activations())} can be stored by name."
        )
    return act.name


def _describe(model: Any) -> tuple[str, dict[str, Any]]:
    """The class tag and constructor arguments of a saveable model."""
    # Exact classes only: `load` rebuilds the base class, which would silently drop a
    # subclass's own behaviour.
    if type(model) is MLP:
        return "jacsens.MLP", model.hyperparameters()
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
    key = jax.random.key(0)
    if cls == "jacsens.MLP":
        hp = dict(hp)
        return MLP(
            hp.pop("in_size"),
            hp.pop("widths"),
            hp.pop("out_size"),
            hp.pop("activation"),
            key=key,
            final_activation=hp.pop("final_activation"),
            use_bias=hp.pop("use_bias"),
            dtype=jnp.dtype(hp.pop("dtype")),
        )
    if cls == "equinox.nn.MLP":
        acts = _eqx_activations()
        kwargs = dict(
            in_size=hp["in_size"],
            out_size=hp["out_size"],
            width_size=hp["width_size"],
            depth=hp["depth"],
            activation=acts[hp["activation"]],
            final_activation=acts[hp["final_activation"]],
            use_bias=hp["use_bias"],
            use_final_bias=hp["use_final_bias"],
            dtype=jnp.dtype(hp["dtype"]),
            key=key,
        )
        if hp.get("scan"):
            kwargs["scan"] = True
        return eqx.nn.MLP(**kwargs)
    raise ValueError(f"unknown model class {cls!r}")


def _leaf_specs(model: Any) -> list[dict[str, Any]]:
    return [
        {"shape": list(leaf.shape), "dtype": str(leaf.dtype)}
        for leaf in jax.tree.leaves(eqx.filter(model, eqx.is_array))
    ]


def save(path: PathLike, model: Any) -> None:
    """Save a model to `path` (a JSON header plus the serialised parameters).

    The file is written to a temporary file in the same directory and moved into place
    with `os.replace`, so an interrupted or failed save never leaves a half-written file,
    and an existing file at `path` stays intact unless the save succeeds.

    **Arguments:**

    - `path`: destination file (conventionally `*.jsns`).
    - `model`: a `jacsens.MLP` or an `equinox.nn.MLP` (with an activation from the
        table of `jacsens.ACTIVATIONS` that has a `jax.nn`/`jnp` counterpart).

    **Raises:**

    `TypeError` if the model type cannot be saved; `OSError` from the file system.
    """
    from . import __version__

    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    cls, hp = _describe(model)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, model)
    payload = buf.getvalue()
    header = {
        "format": "jacsens-model",
        "format_version": FORMAT_VERSION,
        "jacsens_version": __version__,
        "class": cls,
        "hyperparameters": hp,
        "leaves": _leaf_specs(model),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    header_line = json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\n"

    def write(f):
        f.write(MAGIC)
        f.write(header_line)
        f.write(payload)

    atomic_write(path, write)


def read_header(path: PathLike) -> dict[str, Any]:
    """Read and check the header of a model file without loading the parameters.

    **Returns:** the header as a dict (see the module docstring).

    **Raises:** `ValueError` naming `path` if the file is not a jacsens model file.
    """
    header, _ = _read(path)
    return header


def _read(path: PathLike) -> tuple[dict[str, Any], bytes]:
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise ValueError(
            f"{path!r} is not a jacsens model file (it does not start with {MAGIC!r})."
        )
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER_BYTES)
    if end < 0:
        raise ValueError(f"{path!r} is truncated or corrupt: the header line is incomplete.")
    try:
        header = json.loads(data[len(MAGIC) : end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path!r} has a corrupt header: {e}") from None
    required = ("format_version", "class", "hyperparameters", "leaves", "payload_bytes")
    if not isinstance(header, dict) or any(k not in header for k in required):
        raise ValueError(f"{path!r} has an incomplete header (expected fields {required}).")
    version = header["format_version"]
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path!r} uses model file format version {version!r}; this jacsens reads "
            f"version {FORMAT_VERSION} (the file was written by jacsens "
            f"{header.get('jacsens_version', '?')})."
        )
    payload = data[end + 1 :]
    expected = header["payload_bytes"]
    if len(payload) != expected:
        what = "truncated" if len(payload) < expected else "has trailing data"
        raise ValueError(
            f"{path!r} is {what}: the header announces {expected} bytes of parameters, "
            f"the file holds {len(payload)}."
        )
    digest = header.get("payload_sha256")
    if digest is not None and hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError(f"{path!r} is corrupt: the parameter checksum does not match.")
    return header, payload


def load(path: PathLike) -> Any:
    """Load a model written by `jacsens.save`.

    The model is rebuilt from the saved constructor arguments (with a dummy key) and its
    parameters are read into it; nothing is unpickled. The loaded model gives
    bit-identical outputs to the saved one.

    **Arguments:**

    - `path`: a file written by `jacsens.save`.

    **Returns:**

    The model (`jacsens.MLP` or `equinox.nn.MLP`).

    **Raises:**

    `ValueError` naming `path` if the file is not a jacsens model file, is truncated or
    corrupt, was written in an unreadable format version, or its parameters do not
    match the shapes and dtypes the header describes; `FileNotFoundError` if it does
    not exist.
    """
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    header, payload = _read(path)
    path = os.fspath(path)
    cls, hp = header["class"], header["hyperparameters"]
    if cls not in ("jacsens.MLP", "equinox.nn.MLP"):
        raise ValueError(f"{path!r} holds a model of unknown class {cls!r}.")
    try:
        skeleton = _skeleton(cls, hp)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path!r} has invalid constructor arguments for {cls}: {type(e).__name__}: {e}"
        ) from None
    expected = _leaf_specs(skeleton)
    if expected != header["leaves"]:
        raise ValueError(
            f"{path!r}: the saved parameters (shapes/dtypes {_fmt(header['leaves'])}) do not "
            f"match the model its header describes ({_fmt(expected)})."
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
