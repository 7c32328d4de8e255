"""Data handling details that a realistic slip would break without any other test noticing
(found by the mutation campaign, `benchmarks/mutants.py`): the rounding of the test-set
size and the byte count a model file's header must account for."""

import hashlib
import json

import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens import _io, datasets


@pytest.mark.parametrize(
    "n_rows, fraction, n_test",
    [(9, 0.3, 3), (7, 0.5, 4), (5, 0.5, 2), (11, 0.25, 3), (30, 0.2, 6)],
)
def test_test_size_is_rounded_to_nearest_with_ties_to_even(n_rows, fraction, n_test, getkey):
    # 9·0.3 = 2.7 -> 3 (not 2, as truncation gives); 3.5 -> 4 and 2.5 -> 2 (ties to even)
    assert datasets.split_sizes(n_rows, fraction) == (n_rows - n_test, n_test)
    X = np.arange(2.0 * n_rows).reshape(n_rows, 2)
    (train,), (test,) = datasets.train_test_split((X,), fraction, key=getkey())
    assert len(test) == n_test and len(train) == n_rows - n_test
    # the parts are disjoint and together hold every row exactly once
    rows = np.sort(np.concatenate([train[:, 0], test[:, 0]]))
    np.testing.assert_array_equal(rows, X[:, 0])


def _forge(path, change):
    """Rewrite a saved model's header with `change` and a matching checksum."""
    data = path.read_bytes()
    rest = data[len(_io.MAGIC) :]
    _, body = rest.split(b"\n", 1)
    header_text, payload = body.split(b"\n", 1)
    header = json.loads(header_text)
    change(header)
    body = json.dumps(header).encode() + b"\n" + payload
    checksum = b"sha256 " + hashlib.sha256(body).hexdigest().encode() + b"\n"
    path.write_bytes(_io.MAGIC + checksum + body)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_header_leaves_are_counted_in_bytes_not_elements(tmp_path, getkey, dtype):
    # a float32/float64 leaf takes 4/8 bytes per element: a header whose leaves need more
    # bytes than the parameters hold is refused before anything is allocated, even when
    # their element count would fit
    model = jacsens.MLP(3, (4,), 2, key=getkey(), dtype=dtype)
    path = tmp_path / "m.jsns"
    jacsens.save(path, model)
    payload = _io.read_header(path)["payload_bytes"]
    item = jnp.dtype(dtype).itemsize
    elems = payload // item + 1  # one element too many in bytes, far too few as elements
    assert elems <= payload

    def grow(h):
        h["leaves"] = [{"shape": [elems], "dtype": jnp.dtype(dtype).name}]

    _forge(path, grow)
    with pytest.raises(ValueError, match=rf"m\.jsns.*leaves need {elems * item} bytes"):
        jacsens.load(path)
