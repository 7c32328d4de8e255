"""Names of the elements of multi-dimensional arrays (features of image inputs, ...)."""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

_INDEXED = re.compile(r"^(.*)\[(\d+(?:,\d+)+)\]$")


def index_names(shape: Sequence[int], prefix: str = "x") -> tuple[str, ...]:
    """Names of the elements of an array of `shape`, in C order.

    Vectors and scalars keep the short form (`x0`, `x1`, ...); arrays of two or more
    dimensions say where each element sits: `x[r,c]`, `x[ch,r,c]`. `shape_from_names`
    reads the shape back.

    **Arguments:**

    - `shape`: the array's shape (`()` for a scalar: one name).
    - `prefix`: the name before the index.

    **Returns:**

    A tuple of `prod(shape)` names.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        return tuple(f"{prefix}{i}" for i in range(math.prod(shape)))
    return tuple(f"{prefix}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape))


def shape_from_names(names: Sequence[str]) -> tuple[int, ...] | None:
    """The shape of an array whose elements are named as `index_names` names them.

    **Arguments:**

    - `names`: element names, flattened in C order.

    **Returns:**

    The shape (two or more dimensions) if `names` are exactly `index_names(shape,
    prefix)` for some shape and prefix, else `None`.
    """
    if not names:
        return None
    first = _INDEXED.match(names[0])
    last = _INDEXED.match(names[-1])
    if first is None or last is None or first.group(1) != last.group(1):
        return None
    shape = tuple(int(i) + 1 for i in last.group(2).split(","))
    if math.prod(shape) != len(names):
        return None
    return shape if tuple(names) == index_names(shape, first.group(1)) else None


def names_from_pandas(names: Any) -> Any:
    """Names given as the pandas object they come from, as a tuple of names.

    A `Series` (say, the targets a model was fitted on) names one element: its `.name`
    (`None` for an unnamed Series, so the default names apply); a `DataFrame` names one
    element per column. Anything else (a sequence of names, `None`) is returned unchanged
    for the caller to check.

    **Arguments:**

    - `names`: a pandas `Series` or `DataFrame`, or anything else.

    **Returns:**

    `(str(series.name),)`, `None`, a tuple of the column labels as strings, or `names`.
    """
    pd = sys.modules.get("pandas")  # if pandas was never imported, names are not pandas
    if pd is None:
        return names
    if isinstance(names, pd.Series):
        return None if names.name is None else (str(names.name),)
    if isinstance(names, pd.DataFrame):
        return tuple(str(c) for c in names.columns)
    return names
