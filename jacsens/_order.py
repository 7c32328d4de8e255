"""Optimal bracketing of a Jacobian chain product: the matrix-chain dynamic programme.

For dense factors `W_1 .. W_n` (`W_k: p_{k-1} -> p_k`) with per-sample diagonal factors
between them, the cheapest parenthesisation is found by the classic `O(n³)` dynamic
programme; a diagonal is applied as a scaling of whichever neighbouring product is smaller.
Reverse mode is the left-to-right order (from an identity the size of the output), forward
mode the right-to-left order; on networks with a narrow middle layer the optimal order
splits there and is far cheaper than both.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array


@dataclasses.dataclass(frozen=True)
class ChainOrder:
    """Optimal parenthesisation of the dense factors `W_1 .. W_n` (1-based).

    - `dims`: the widths `p_0 .. p_n`.
    - `split`: `split[(i, j)] = k` means `W_j..W_i` is computed as `(W_j..W_{k+1})·(W_k..W_i)`.
    - `cost`: multiply-adds per sample, products and scalings.
    """

    dims: tuple[int, ...]
    split: dict[tuple[int, int], int] = dataclasses.field(hash=False, compare=False)
    cost: int

    def describe(self, i: int | None = None, j: int | None = None) -> str:
        i = 1 if i is None else i
        j = len(self.dims) - 1 if j is None else j
        if i == j:
            return f"W{i}"
        k = self.split[(i, j)]
        left, right = self.describe(k + 1, j), self.describe(i, k)
        left = left if k + 1 == j else f"({left})"
        right = right if i == k else f"({right})"
        return f"{left} · {right}"


@functools.lru_cache(maxsize=512)
def optimal_order(dims: tuple[int, ...], has_diag: tuple[bool, ...]) -> ChainOrder:
    """Matrix-chain dynamic programme over dense factors `W_k: p_{k-1} -> p_k`.

    `has_diag[k]` says whether a per-sample diagonal sits between `W_k` and `W_{k+1}`; it is
    applied as a scaling of whichever neighbouring product is smaller. Costs are per sample.
    """
    n = len(dims) - 1
    best: dict[tuple[int, int], int] = {(i, i): 0 for i in range(1, n + 1)}
    split: dict[tuple[int, int], int] = {}
    for length in range(2, n + 1):
        for i in range(1, n - length + 2):
            j = i + length - 1
            options = []
            for k in range(i, j):
                c = best[(i, k)] + best[(k + 1, j)] + dims[j] * dims[k] * dims[i - 1]
                if has_diag[k]:
                    c += min(dims[j], dims[i - 1]) * dims[k]
                options.append((c, k))
            best[(i, j)], split[(i, j)] = min(options)
    return ChainOrder(tuple(dims), split, best[(1, n)] if n else 0)


def chain_product(
    order: ChainOrder, weights: list[Array], diags: list[Array | None], batch: int
) -> Array:
    """The per-sample product `diag(d_n) W_n ··· W_1 diag(d_0)` in the order `order`.

    **Arguments:**

    - `order`: the bracketing (from `optimal_order`).
    - `weights`: the shared dense factors `W_1 .. W_n`, `(p_k, p_{k-1})`.
    - `diags`: per boundary `k = 0..n` a per-sample diagonal `(B, p_k)` or `None`.
    - `batch`: `B`.

    **Returns:**

    `(B, p_n, p_0)`. Shared weights stay unbatched until they meet a per-sample factor, so
    products of a weight with a batch of matrices are single large matrix multiplications.
    """
    n = len(weights)
    if n == 0:
        d = diags[0]
        return jax.vmap(jnp.diag)(d)

    def product(i: int, j: int) -> tuple[Array, bool]:
        """Product W_j D_{j-1} ... D_i W_i; returns (array, is_batched)."""
        if i == j:
            return weights[i - 1], False
        k = order.split[(i, j)]
        left, lb = product(k + 1, j)
        right, rb = product(i, k)
        d = diags[k]
        ls = "bjk" if lb else "jk"
        rs = "bki" if rb else "ki"
        if d is None:
            if not (lb or rb):
                return jnp.einsum(f"{ls},{rs}->ji", left, right), False
            return jnp.einsum(f"{ls},{rs}->bji", left, right), True
        # Scale the smaller neighbour by the diagonal, then multiply.
        if left.shape[-2] <= right.shape[-1]:
            left = left * d[:, None, :]
            ls = "bjk"
        else:
            right = d[:, :, None] * right
            rs = "bki"
        return jnp.einsum(f"{ls},{rs}->bji", left, right), True

    J, batched = product(1, n)
    if not batched:
        J = jnp.broadcast_to(J, (batch, *J.shape))
    if diags[n] is not None:
        J = diags[n][:, :, None] * J
    if diags[0] is not None:
        J = J * diags[0][:, None, :]
    return J
