"""The layer-chain view of MLP-like models, and the one forward pass over a chain.

A feed-forward network with elementwise activations has the input Jacobian

    ∂y/∂x = diag(g_n) · W_n · diag(g_{n-1}) · W_{n-1} ··· diag(g_1) · W_1 · diag(g_0),

a product of *shared* dense factors (the weights) and *per-sample* diagonal factors
(`g_k`, the product of the derivatives of the activations between `W_k` and `W_{k+1}`;
`g_0` acts on the input). This module reads that chain from a model, checks that it
computes what the model computes, and runs the forward pass that every chain-based
computation shares (`chain_forward`: the chain Jacobian mode, the hand-written kernel,
ghost norms).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._models import ACTIVATIONS, MLP, Activation, identify_activation
from ._numpy_eval import Unsupported, evaluate


class ChainError(ValueError):
    """Raised when a model's layer chain cannot be read."""


@dataclasses.dataclass(frozen=True)
class LinearStep:
    """An affine layer `z = W a + b`, with `W` as a 2-D `(out, in)` matrix."""

    weight: Array
    bias: Array | None
    # Returns the `eqx.nn.Linear` inside the model: used to map gradients back.
    getter: Callable[[Any], eqx.nn.Linear]

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape


@dataclasses.dataclass(frozen=True)
class ActStep:
    """An elementwise activation: a diagonal Jacobian factor `diag(f'(z))`."""

    activation: Activation


Step = LinearStep | ActStep


@dataclasses.dataclass(frozen=True)
class ChainSpec:
    """The structure of a chain without its weights: what plans and cost models need.

    - `dims`: widths `p_0, ..., p_n` around the `n` dense factors.
    - `flags`: `flags[k]` is true if a per-sample diagonal sits after dense factor `k`
        (`k = 0`: on the input).
    - `activations`: the activation names at each boundary `k` (several in a row are
        applied in turn).
    - `has_bias`: whether each dense factor has a bias.
    """

    dims: tuple[int, ...]
    flags: tuple[bool, ...]
    activations: tuple[tuple[str, ...], ...]
    has_bias: tuple[bool, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Chain:
    """The layers of a model, from input to output."""

    steps: tuple[Step, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def in_width(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_width(self) -> int:
        return math.prod(self.out_shape)

    @property
    def linears(self) -> list[LinearStep]:
        return [s for s in self.steps if isinstance(s, LinearStep)]

    @property
    def dims(self) -> list[int]:
        """Widths `p_0, ..., p_n` around the `n` dense factors."""
        lin = self.linears
        if not lin:
            return [self.in_width]
        return [lin[0].shape[1]] + [s.shape[0] for s in lin]

    @property
    def boundaries(self) -> list[list[Activation]]:
        """The activations at each boundary `k = 0..n` (after dense factor `k`)."""
        acts: list[list[Activation]] = [[]]
        for step in self.steps:
            if isinstance(step, LinearStep):
                acts.append([])
            else:
                acts[-1].append(step.activation)
        return acts

    @property
    def spec(self) -> ChainSpec:
        acts = self.boundaries
        return ChainSpec(
            dims=tuple(self.dims),
            flags=tuple(bool(a) for a in acts),
            activations=tuple(tuple(a.name for a in b) for b in acts),
            has_bias=tuple(s.bias is not None for s in self.linears),
            in_shape=self.in_shape,
            out_shape=self.out_shape,
        )


# ---------------------------------------------------------------------------------------
# Reading the chain
# ---------------------------------------------------------------------------------------


def _compose(outer, inner):
    return lambda m: inner(outer(m))


def _plain(model: Any, cls: type) -> bool:
    """`model` is a `cls` whose forward pass is `cls`'s own.

    A subclass that overrides `__call__` (a scaled output, a residual connection, ...)
    computes something the layer chain does not describe: it is not read as a chain.
    """
    return isinstance(model, cls) and type(model).__call__ is cls.__call__


_READABLE = (MLP, eqx.nn.MLP, eqx.nn.Sequential, eqx.nn.Linear, eqx.nn.Identity)


def _layer_steps(layers, acts: list[Activation], final: Activation | None, getter) -> list[Step]:
    steps: list[Step] = []
    for i, layer in enumerate(layers):
        if i > 0:
            steps.extend(ActStep(a) for a in acts)
        steps.append(
            LinearStep(layer.weight, layer.bias, _compose(getter, lambda m, i=i: m.layers[i]))
        )
    if final is not None and final.name != "identity":
        steps.append(ActStep(final))
    return steps


def _read(model: Any, getter, where: str) -> list[Step]:
    base = next((c for c in _READABLE if isinstance(model, c)), None)
    if base is not None and not _plain(model, base):
        raise ChainError(
            f"{where}: {type(model).__name__} overrides {base.__name__}.__call__, so its "
            "layer chain cannot be read; use an autodiff mode (rev/fwd)."
        )
    if isinstance(model, eqx.nn.Linear):
        # eqx.nn.Linear stores a 2-D (out, in) weight also for "scalar" sizes (width 1).
        return [LinearStep(model.weight, model.bias, getter)]
    if isinstance(model, MLP):
        final = None if model.final_activation is None else ACTIVATIONS[model.final_activation]
        return _layer_steps(model.layers, [ACTIVATIONS[model.activation]], final, getter)
    if isinstance(model, eqx.nn.MLP):
        if getattr(model, "scan", False):
            raise ChainError(f"{where}: eqx.nn.MLP(scan=True) has no readable layer chain.")
        act = identify_activation(model.activation)
        fin = identify_activation(model.final_activation)
        if act is None or fin is None:
            raise ChainError(
                f"{where}: eqx.nn.MLP activation {model.activation!r} / final_activation "
                f"{model.final_activation!r} is not a known elementwise activation."
            )
        return _layer_steps(model.layers, [act], fin, getter)
    if isinstance(model, eqx.nn.Sequential):
        steps: list[Step] = []
        for i, layer in enumerate(model.layers):
            sub = _compose(getter, lambda m, i=i: m.layers[i])
            steps.extend(_read(layer, sub, f"{where}.layers[{i}]"))
        return steps
    if isinstance(model, eqx.nn.Identity):
        return []
    act = identify_activation(model)
    if act is not None:
        return [ActStep(act)]
    raise ChainError(
        f"{where}: cannot read a layer chain from {type(model).__name__}; supported are "
        "jacsens.MLP, eqx.nn.MLP, eqx.nn.Linear and eqx.nn.Sequential of those with "
        "known elementwise activations."
    )


def _io_shape(model: Any, which: str) -> tuple[int, ...] | None:
    """Per-sample input/output shape of a chain model; `()` for "scalar" sizes."""
    if isinstance(model, MLP | eqx.nn.MLP):
        size = model.in_size if which == "in" else model.out_size
        return () if size == "scalar" else (size,)
    if isinstance(model, eqx.nn.Linear):
        size = model.in_features if which == "in" else model.out_features
        return () if size == "scalar" else (size,)
    if isinstance(model, eqx.nn.Sequential):
        layers = list(model.layers) if which == "in" else list(reversed(model.layers))
        for layer in layers:
            shape = _io_shape(layer, which)
            if shape is not None:
                return shape
    return None


def _read_unchecked(model: Any) -> Chain:
    steps = tuple(_read(model, lambda m: m, "model"))
    lin = [s for s in steps if isinstance(s, LinearStep)]
    for a, b in zip(lin[:-1], lin[1:], strict=True):
        if a.shape[0] != b.shape[1]:
            raise ChainError(f"model: layer widths do not match: {a.shape} then {b.shape}.")
    in_shape = _io_shape(model, "in")
    out_shape = _io_shape(model, "out")
    if lin:
        if math.prod(in_shape) != lin[0].shape[1] or math.prod(out_shape) != lin[-1].shape[0]:
            raise ChainError("model: input/output sizes do not match the layer chain.")
    elif in_shape is None:
        raise ChainError("model: a chain without linear layers has no known input size.")
    return Chain(steps, in_shape, out_shape)


def read_chain(model: Any) -> Chain:
    """Read the layer chain of `model`.

    The chain is trusted only after it has been checked against the model's own forward
    pass: once per model structure, the chain and the model are evaluated on one random
    sample with random weights of the model's shapes and must agree (a configuration the
    model's own `__call__` treats differently from the chain, such as an `eqx.nn.MLP` of
    depth 0 ignoring its `final_activation`, is refused here rather than differentiated
    wrongly).

    **Raises:** `ChainError` (a `ValueError`) if the model is not a chain of affine layers
    and known elementwise activations, or if the chain read does not compute what the
    model computes.
    """
    chain = _read_unchecked(model)
    key = structure_key(model)
    if key is None:
        _verify(model, chain)
    else:
        _verified(key, model, chain)
    return chain


def try_read_chain(model: Any) -> Chain | None:
    """`read_chain`, or `None` if the model has no readable chain."""
    try:
        return read_chain(model)
    except ChainError:
        return None


def structure_key(model: Any) -> Hashable | None:
    """A hashable key of everything about `model` except the values of its arrays: the
    pytree structure (classes and static fields), the shape and dtype of each array leaf,
    and every non-array leaf. `None` if some part is unhashable (no caching then)."""
    leaves, treedef = jax.tree.flatten(model)
    sig = tuple((x.shape, x.dtype) if eqx.is_array(x) else ("leaf", x) for x in leaves)
    key = (treedef, sig)
    try:
        hash(key)
    except TypeError:
        return None
    return key


_verified_keys: set[Hashable] = set()


def _verified(key: Hashable, model: Any, chain: Chain) -> None:
    if key not in _verified_keys:
        _verify(model, chain)
        _verified_keys.add(key)


def _random_like(model: Any, rng: np.random.Generator) -> Any:
    def draw(x):
        if not eqx.is_array(x):
            return x
        dtype = jnp.dtype(x.dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            return np.zeros(x.shape, dtype)
        scale = 1.0 / math.sqrt(x.shape[-1]) if len(x.shape) >= 2 else 0.5
        return np.asarray(rng.normal(size=x.shape) * scale, dtype)

    return jax.tree.map(draw, model)


def _verify(model: Any, chain: Chain) -> None:
    """Evaluate `model` and `chain` on one random sample with random weights; refuse the
    chain unless they agree (to the round-off of the weights' dtype).

    Both are traced once and evaluated with NumPy (`_numpy_eval`): milliseconds, where
    compiling them with XLA costs most of a second on a cold start and eager evaluation
    compiles every operation on its own. Programs with primitives the NumPy evaluator does
    not cover run as one compiled call instead.
    """
    rng = np.random.default_rng(0)
    probe = _random_like(model, rng)
    leaves, static = eqx.partition(probe, eqx.is_array)
    weights = [s.weight for s in _read_unchecked(probe).linears]
    dtype = jnp.dtype(weights[0].dtype) if weights else jnp.dtype(jnp.float32)
    x = np.asarray(rng.normal(size=chain.in_shape), dtype)

    def both(leaves, x):
        m = eqx.combine(leaves, static)
        return m(x), chain_forward(_read_unchecked(m), x[None], with_derivs=False)[0][0]

    try:
        with jax.ensure_compile_time_eval():
            try:
                outs = evaluate(both, leaves, x)
            except Unsupported:
                outs = jax.jit(both)(leaves, x)
            want, got = (np.asarray(a, np.float64) for a in outs)
    except Exception as e:  # the model's own error: not a chain we can vouch for
        raise ChainError(
            f"model: the layer chain could not be checked against the model's forward "
            f"pass ({type(e).__name__}: {e})."
        ) from e
    tol = 1e-4 if dtype.itemsize <= 4 else 1e-10
    if want.shape != got.shape or not np.allclose(got, want, rtol=tol, atol=tol):
        raise ChainError(
            f"model: the layer chain read from {type(model).__name__} does not compute what "
            "the model computes (checked on a random sample), so it cannot be used for the "
            "chain or backprop modes; use an autodiff mode (rev/fwd)."
        )


# ---------------------------------------------------------------------------------------
# The one forward pass
# ---------------------------------------------------------------------------------------


class Cache(NamedTuple):
    """What the forward pass keeps for backward recursions, one entry per dense layer.

    - `inputs[l]`: `a_{l-1}`, the layer's input, `(B, p_{l-1})`.
    - `pre[l]`: `z_l = W_l a_{l-1} + b_l`, `(B, p_l)`.
    - `derivs[l]`: `g_l`, the product of the derivatives of the activations after layer
      `l`, `(B, p_l)` (ones where no activation follows).
    - `input_deriv`: the derivatives of activations applied to the input itself, `(B, p_0)`.
    """

    inputs: list[Array]
    pre: list[Array]
    derivs: list[Array]
    input_deriv: Array


def _apply(
    acts: list[Activation], z: Array, with_derivs: bool = True
) -> tuple[Array, Array | None]:
    """Apply activations in turn; return the output and the product of their derivatives,
    each evaluated at its own input (chain rule for consecutive elementwise functions)."""
    g = jnp.ones_like(z) if with_derivs else None
    for act in acts:
        if with_derivs:
            g = g * act.deriv(z)
        z = act.fn(z)
    return z, g


def chain_forward(
    chain: Chain, X: Array, *, perturb: list[Array] | None = None, with_derivs: bool = True
) -> tuple[Array, Cache]:
    """Batched forward pass through `chain`.

    **Arguments:**

    - `chain`: the layer chain.
    - `X`: inputs `(B, *in_shape)`.
    - `perturb`: optional per-layer additions to the pre-activations, `(B, p_l)` each (the
        hook ghost norms differentiate against: `∂ℓ/∂perturb[l] = δ_l`).
    - `with_derivs`: compute the activation derivatives (`False`: the cache's `derivs` and
        `input_deriv` are `None`; for checks that need only the output).

    **Returns:**

    `(y, cache)`: the output `(B, *out_shape)` and the `Cache`.
    """
    boundaries = chain.boundaries
    a = X.reshape(X.shape[0], chain.in_width)  # not -1: B may be 0
    a, g0 = _apply(boundaries[0], a, with_derivs)
    inputs, pre, derivs = [], [], []
    for k, (lin, acts) in enumerate(zip(chain.linears, boundaries[1:], strict=True)):
        inputs.append(a)
        z = a @ lin.weight.T
        if lin.bias is not None:
            z = z + lin.bias
        if perturb is not None:
            z = z + perturb[k]
        pre.append(z)
        a, g = _apply(acts, z, with_derivs)
        derivs.append(g)
    return a.reshape(X.shape[0], *chain.out_shape), Cache(inputs, pre, derivs, g0)
