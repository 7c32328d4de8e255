"""Models acting on one sample, and the table of elementwise activations.

Every activation carries its derivative in closed form. The hand-written kernel
(`jacsens.backprop`) and the `chain` Jacobian mode use these derivatives directly, so they
never call `jax.grad`; autodiff is an independent opinion on the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715


@dataclasses.dataclass(frozen=True)
class Activation:
    """An elementwise activation `f` with its derivative `f'` in closed form.

    Because `f` acts elementwise, its Jacobian is the diagonal matrix `diag(f'(z))`;
    jacsens keeps it as the vector `f'(z)` and applies it as a scaling.

    **Fields:**

    - `name`: the name used in `MLP(activation=...)`.
    - `fn`: `z -> f(z)`, elementwise.
    - `deriv`: `z -> f'(z)`, elementwise, written out by hand.
    """

    name: str
    fn: Callable[[Array], Array]
    deriv: Callable[[Array], Array]

    def __call__(self, z: Array, *, key: PRNGKeyArray | None = None) -> Array:
        # `key` is accepted (and ignored) so that an Activation can sit directly in an
        # `eqx.nn.Sequential`, which passes one to every layer.
        del key
        return self.fn(z)


def _sigmoid_deriv(z):
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


def _gelu_tanh(z):
    return 0.5 * z * (1 + jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3)))


def _gelu_tanh_deriv(z):
    t = jnp.tanh(_SQRT_2_OVER_PI * (z + _GELU_C * z**3))
    dt = (1 - t**2) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_C * z**2)
    return 0.5 * (1 + t) + 0.5 * z * dt


def _gelu_exact(z):
    return 0.5 * z * (1 + jax.lax.erf(z / math.sqrt(2.0)))


def _gelu_exact_deriv(z):
    cdf = 0.5 * (1 + jax.lax.erf(z / math.sqrt(2.0)))
    pdf = jnp.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return cdf + z * pdf


def _silu_deriv(z):
    s = jax.nn.sigmoid(z)
    return s * (1 + z * (1 - s))


def _elu(z):
    # jnp.where, not jnp.minimum: minimum's derivative at a tie is 1/2, and autodiff of
    # `fn` must agree with the closed-form `deriv` everywhere, kinks included.
    return jnp.where(z > 0, z, jnp.expm1(jnp.where(z > 0, jnp.zeros_like(z), z)))


def _elu_deriv(z):
    return jnp.where(z > 0, jnp.ones_like(z), jnp.exp(jnp.minimum(z, 0)))


def _leaky_relu(z):
    return jnp.where(z >= 0, z, 0.01 * z)


def _leaky_relu_deriv(z):
    return jnp.where(z >= 0, jnp.ones_like(z), jnp.full_like(z, 0.01))


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in [
        Activation("identity", lambda z: z, jnp.ones_like),
        Activation("tanh", jnp.tanh, lambda z: 1 - jnp.tanh(z) ** 2),
        Activation("sigmoid", jax.nn.sigmoid, _sigmoid_deriv),
        # f'(0) = 0 for relu: jax.nn.relu's convention, which its autodiff follows too.
        Activation("relu", jax.nn.relu, lambda z: (z > 0).astype(z.dtype)),
        Activation("softplus", jax.nn.softplus, jax.nn.sigmoid),
        # `gelu` is the tanh approximation, as jax.nn.gelu's default.
        Activation("gelu", _gelu_tanh, _gelu_tanh_deriv),
        Activation("gelu_exact", _gelu_exact, _gelu_exact_deriv),
        Activation("silu", jax.nn.silu, _silu_deriv),
        Activation("elu", _elu, _elu_deriv),
        Activation("leaky_relu", _leaky_relu, _leaky_relu_deriv),
        Activation("sin", jnp.sin, jnp.cos),
    ]
}


@functools.cache
def _callables_by_id() -> dict[int, tuple[str, Callable]]:
    """Callables of JAX and Equinox that compute one of `ACTIVATIONS`, by `id`.

    Equinox's own default activations are read from `eqx.nn.MLP`'s signature (its public
    surface), not from its private modules.
    """
    table: list[tuple[Callable, str]] = [
        (jnp.tanh, "tanh"),
        (jax.nn.sigmoid, "sigmoid"),
        (jax.nn.relu, "relu"),
        (jax.nn.softplus, "softplus"),
        (jax.nn.gelu, "gelu"),
        (jax.nn.silu, "silu"),
        (jax.nn.elu, "elu"),
        (jax.nn.leaky_relu, "leaky_relu"),
        (jnp.sin, "sin"),
    ]
    if hasattr(jax.nn, "swish"):
        table.append((jax.nn.swish, "silu"))
    params = inspect.signature(eqx.nn.MLP.__init__).parameters
    for field, name in (("activation", "relu"), ("final_activation", "identity")):
        default = params[field].default
        if default is not inspect.Parameter.empty:
            table.append((default, name))
    return {id(fn): (name, fn) for fn, name in table}


def identify_activation(fn: Any) -> Activation | None:
    """The `Activation` that the callable `fn` computes, or `None` if it is not a known
    elementwise function (`jacsens.Activation`, `eqx.nn.Lambda` of one, JAX's and
    Equinox's own activation functions, or functions wrapping them with `functools.wraps`).
    """
    if isinstance(fn, Activation):
        return fn
    if isinstance(fn, eqx.nn.Lambda):
        return identify_activation(fn.fn)
    found = _callables_by_id().get(id(fn))
    if found is None and getattr(fn, "__wrapped__", None) is not None:
        found = _callables_by_id().get(id(fn.__wrapped__))
    return None if found is None else ACTIVATIONS[found[0]]


def activation_callable(name: str) -> Callable:
    """A JAX/Equinox callable computing the activation `name` (used to rebuild an
    `eqx.nn.MLP` from its saved activation names)."""
    for known, fn in _callables_by_id().values():
        if known == name:
            return fn
    raise ValueError(f"No JAX/Equinox callable is known for activation {name!r}.")


def get_activation(name: str | Activation, argname: str = "activation") -> Activation:
    """Look up an activation by name (or pass an `Activation` through).

    **Raises:** `ValueError` naming `argname` and the known names if `name` is unknown;
    `TypeError` if it is neither a string nor an `Activation`.
    """
    if isinstance(name, Activation):
        return name
    if not isinstance(name, str):
        raise TypeError(
            f"`{argname}` must be an activation name (one of {sorted(ACTIVATIONS)}) or a "
            f"jacsens.Activation, got {type(name).__name__}."
        )
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"Unknown `{argname}` {name!r}; expected one of {sorted(ACTIVATIONS)}."
        ) from None


def _check_size(value, argname: str, allow_scalar: bool) -> int | Literal["scalar"]:
    if allow_scalar and value == "scalar":
        return "scalar"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = ' or "scalar"' if allow_scalar else ""
        raise ValueError(f"`{argname}` must be a positive int{extra}, got {value!r}.")
    return value


class MLP(eqx.Module):
    """A multilayer perceptron acting on one sample.

    `y = W_L f(... f(W_2 f(W_1 x + b_1) + b_2) ...) + b_L`, optionally followed by a final
    activation. The activation is stored by name, so its closed-form derivative is
    available to the hand-written kernel and to the `chain` Jacobian mode.

    **Arguments:**

    - `in_size`: input width, or `"scalar"` for inputs of shape `()`.
    - `widths`: hidden layer widths, e.g. `(20, 10)`; `()` gives an affine model.
    - `out_size`: output width, or `"scalar"` for outputs of shape `()`.
    - `activation`: name of the hidden activation (see `jacsens.ACTIVATIONS`).
    - `key`: a `jax.random` key for the initialisation (keyword only).
    - `final_activation`: optional activation name applied to the output.
    - `use_bias`: whether the layers have biases.
    - `dtype`: parameter dtype; defaults to JAX's default floating dtype.

    Calling the model on `x` of shape `(in_size,)` returns `(out_size,)` (or `()` for
    `out_size="scalar"`). Map over a batch with `jax.vmap`, or use the batched functions
    of jacsens directly.
    """

    layers: tuple[eqx.nn.Linear, ...]
    activation: str = eqx.field(static=True)
    final_activation: str | None = eqx.field(static=True)
    in_size: int | Literal["scalar"] = eqx.field(static=True)
    widths: tuple[int, ...] = eqx.field(static=True)
    out_size: int | Literal["scalar"] = eqx.field(static=True)
    use_bias: bool = eqx.field(static=True)

    def __init__(
        self,
        in_size: int | Literal["scalar"],
        widths: Sequence[int],
        out_size: int | Literal["scalar"],
        activation: str = "tanh",
        *,
        key: PRNGKeyArray,
        final_activation: str | None = None,
        use_bias: bool = True,
        dtype=None,
    ):
        in_size = _check_size(in_size, "in_size", allow_scalar=True)
        out_size = _check_size(out_size, "out_size", allow_scalar=True)
        if isinstance(widths, int | str) or not isinstance(widths, Sequence):
            raise TypeError(f"`widths` must be a sequence of ints, got {widths!r}.")
        widths = tuple(_check_size(w, "widths[i]", allow_scalar=False) for w in widths)
        for argname, value in (("activation", activation), ("final_activation", final_activation)):
            if value is None and argname == "final_activation":
                continue
            if isinstance(value, Activation):  # stored by name: only the table's entries
                raise TypeError(
                    f"`{argname}` of jacsens.MLP must be an activation name (one of "
                    f"{sorted(ACTIVATIONS)}), got the jacsens.Activation {value.name!r}; use "
                    "it in an eqx.nn.Sequential (wrapped in eqx.nn.Lambda) instead."
                )
            get_activation(value, argname)
        sizes = [in_size, *widths, out_size]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(a, b, use_bias=use_bias, dtype=dtype, key=k)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.activation = activation
        self.final_activation = final_activation
        self.in_size = in_size
        self.widths = widths
        self.out_size = out_size
        self.use_bias = use_bias

    def __call__(self, x: Array, *, key: PRNGKeyArray | None = None) -> Array:
        """Apply the network to one sample `x` of shape `(in_size,)` (or `()`)."""
        del key
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act.fn(layer(x))
        x = self.layers[-1](x)
        if self.final_activation is not None:
            x = ACTIVATIONS[self.final_activation].fn(x)
        return x

    @property
    def in_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""
        return () if self.in_size == "scalar" else (self.in_size,)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Shape of one output."""
        return () if self.out_size == "scalar" else (self.out_size,)

    def hyperparameters(self) -> dict:
        """Constructor arguments (less `key`), JSON-serialisable; used by `jacsens.save`."""
        dtype = self.layers[0].weight.dtype
        return {
            "in_size": self.in_size,
            "widths": list(self.widths),
            "out_size": self.out_size,
            "activation": self.activation,
            "final_activation": self.final_activation,
            "use_bias": self.use_bias,
            "dtype": str(dtype),
        }


class Probabilities(eqx.Module):
    """A classifier's class probabilities from its logits: `softmax(model(x))`.

    Sensitivity and attribution of `Probabilities(model)` describe how each class's
    probability moves with each input (the CLI's default for classifiers), rather than
    the logits. A model with one logit (output shape `()` or `(1,)`, a sigmoid binary
    classifier) gives the two probabilities `[1 - σ(z), σ(z)]`.

    **Fields:**

    - `model`: the logit model (one sample in, `(n_classes,)` or one logit out).
    """

    model: Any

    def __call__(self, x):
        z = self.model(x)
        if z.ndim == 0 or z.shape == (1,):
            p = jax.nn.sigmoid(jnp.reshape(z, ()))
            return jnp.stack([1 - p, p])
        return jax.nn.softmax(z, axis=-1)
