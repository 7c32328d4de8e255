"""`jacsens.plot`: what each figure draws, checked against closed forms.

The models are linear (plus one square), so every statistic is known exactly: for
`y = W x`, `∂y_o/∂x_i = W[o, i]` at every sample. Figures are inspected through their
artists (bar widths and colours, image arrays and colour limits, titles).
"""

import io
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

import jacsens
from jacsens import plot

mpl = pytest.importorskip("matplotlib")
from matplotlib.colors import to_rgba  # noqa: E402

DTYPES = [jnp.float32, jnp.float64]
W_BAR = np.array([3.0, -2.5, 2.0, -1.0, 0.5, 0.0])


def bar_result(dtype, n_half=100):
    """`y = w·x + x5²/2`: `∂y/∂x_i = w_i` (exact), `∂y/∂x5 = x5`, whose mean is 0 on
    data made of pairs `z, -z` (sign unclear) and whose mean |.| is `mean|z5|`."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((n_half, 6))
    X = np.concatenate([Z, -Z]).astype(dtype)
    w = jnp.asarray(W_BAR, dtype)
    half = jnp.asarray(0.5, dtype)
    r = jacsens.sensitivity(lambda x: w @ x + half * x[5] ** 2, X, progress=False)
    expected = np.abs(W_BAR)
    expected[5] = np.mean(np.abs(X[:, 5].astype(np.float64)))
    return r, expected


@pytest.mark.parametrize("dtype", DTYPES)
def test_bar_draws_the_top_features_and_says_so(dtype):
    r, expected = bar_result(dtype)
    order = np.argsort(-expected, kind="stable")
    fig = r.plot("bar", top=4, subtitle="MLP 6-1, test R² = 0.9", units="units of y per unit of x")
    ax = fig.axes[0]
    assert len(ax.patches) == 4
    widths = [p.get_width() for p in ax.patches]
    rtol = 1e-6 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(widths, expected[order[:4]], rtol=rtol)
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"x{i}" for i in order[:4]]
    assert ax.get_title().split("\n") == [
        "Sensitivity of y",
        "top 4 of 6 features by mean |∂y/∂x|, n = 200 samples",
        "MLP 6-1, test R² = 0.9",
    ]
    assert ax.get_xlabel() == "mean |∂y/∂x|  (± 1.96 SE)\nin units of y per unit of x"
    # colour: the sign of the mean effect w_i
    want = [to_rgba("tab:blue" if W_BAR[i] > 0 else "tab:orange") for i in order[:4]]
    assert [p.get_facecolor() for p in ax.patches] == want
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["mean effect > 0", "mean effect < 0"]


def test_bar_all_features_sign_unclear_and_plain():
    r, expected = bar_result(jnp.float64)
    fig = plot.sensitivity_bar(r, top=None)
    ax = fig.axes[0]
    assert "all 6 features by" in ax.get_title()
    by_name = dict(zip([t.get_text() for t in ax.get_yticklabels()], ax.patches, strict=True))
    assert by_name["x5"].get_facecolor() == to_rgba("tab:gray")  # mean exactly 0 ± SE
    np.testing.assert_allclose(by_name["x5"].get_width(), expected[5], rtol=1e-12)
    assert "sign unclear (|mean| ≤ 1.96 SE)" in [t.get_text() for t in ax.get_legend().get_texts()]
    plain = plot.sensitivity_bar(r, top=None, sign=False, title="Effects").axes[0]
    assert {p.get_facecolor() for p in plain.patches} == {to_rgba("tab:blue")}
    assert plain.get_legend() is None and plain.get_title().startswith("Effects\n")


def test_bar_argument_errors():
    r, _ = bar_result(jnp.float64, n_half=4)
    for top in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="`top` must be a positive int or None"):
            r.plot("bar", top=top)
    with pytest.raises(ValueError, match="`z` must be >= 0"):
        r.plot("bar", z=-1.0)
    with pytest.raises(ValueError, match=r"Unknown `kind` 'pie'"):
        r.plot("pie")


# --------------------------------------------------------------------------- image maps


def linear_result(in_shape, n_out, dtype, names=True):
    rng = np.random.default_rng(1)
    n_in = int(np.prod(in_shape))
    W = rng.standard_normal((n_out, n_in))
    Wj = jnp.asarray(W, dtype)
    X = rng.standard_normal((16, *in_shape)).astype(dtype)
    r = jacsens.sensitivity(
        lambda x: Wj @ x.reshape(-1),
        X,
        progress=False,
        # default names say where each element sits; flat names hide the shape
        feature_names=None if names else [f"x{i}" for i in range(n_in)],
        output_names=[f"class {o}" for o in range(n_out)],
    )
    return r, W.astype(dtype).astype(np.float64)


def images_of(fig):
    return [ax.images[0] for ax in fig.axes if ax.images]


@pytest.mark.parametrize("dtype", DTYPES)
def test_heatmap_of_2d_inputs_is_one_image_per_output(dtype):
    r, W = linear_result((4, 5), 3, dtype)
    fig = r.plot("heatmap")  # the shape comes from the names x[r,c]
    ims = images_of(fig)
    assert len(ims) == 3
    for o, im in enumerate(ims):
        np.testing.assert_allclose(im.get_array(), np.abs(W[o]).reshape(4, 5), rtol=1e-12)
        assert im.get_clim() == (0.0, pytest.approx(np.abs(W).max(), rel=1e-12))
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles == ["class 0", "class 1", "class 2"]
    assert fig._suptitle.get_text() == "mean |∂y/∂x| per output, n = 16"
    # signed statistic: a diverging scale centred on 0
    ims = images_of(plot.sensitivity_map(r, by="mean", outputs=["class 2", 0]))
    np.testing.assert_allclose(ims[0].get_array(), W[2].reshape(4, 5), rtol=1e-12)
    np.testing.assert_allclose(ims[1].get_array(), W[0].reshape(4, 5), rtol=1e-12)
    v = np.abs(W[[2, 0]]).max()
    assert ims[0].get_clim() == pytest.approx((-v, v), rel=1e-12)
    assert ims[0].get_cmap().name == "RdBu_r"


def test_heatmap_shape_argument_and_strip():
    r, W = linear_result((4, 5), 2, jnp.float64, names=False)
    assert r.feature_names[:2] == ("x0", "x1")
    strip = images_of(r.plot("heatmap"))  # flat names: the (outputs, features) strip
    assert len(strip) == 1
    np.testing.assert_allclose(strip[0].get_array(), np.abs(W), rtol=1e-12)
    maps = images_of(r.plot("heatmap", shape=(5, 4)))
    np.testing.assert_allclose(maps[1].get_array(), np.abs(W[1]).reshape(5, 4), rtol=1e-12)
    named, _ = linear_result((4, 5), 2, jnp.float64)
    assert len(images_of(plot.sensitivity_heatmap(named, shape=(20,)))) == 1
    with pytest.raises(ValueError, match=r"`shape` \(3, 3\) holds 9 elements, but there are 20"):
        r.plot("heatmap", shape=(3, 3))
    with pytest.raises(ValueError, match="`shape` must be a tuple of positive ints"):
        r.plot("map", shape=(4, 0, 5))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        r.plot("map")  # flat names and no shape
    with pytest.raises(ValueError, match="pass `ax=None`"):
        named.plot("heatmap", ax=r.plot("bar").axes[0])
    with pytest.raises(ValueError, match="`ncols` must be a positive int"):
        plot.sensitivity_map(named, ncols=0)


def test_map_of_3d_inputs_sums_over_channels():
    r, W = linear_result((2, 3, 4), 2, jnp.float64)
    assert r.feature_names[:3] == ("x[0,0,0]", "x[0,0,1]", "x[0,0,2]")
    ims = images_of(r.plot("heatmap"))
    expected = np.abs(W).reshape(2, 2, 3, 4).sum(axis=1)
    for o in range(2):
        np.testing.assert_allclose(ims[o].get_array(), expected[o], rtol=1e-12)
    # channels last: (rows=2, cols=3, channels=4)
    ims = images_of(plot.sensitivity_map(r, by="max_abs", channel_axis=-1))
    expected = np.abs(W).reshape(2, 2, 3, 4).max(axis=3)
    np.testing.assert_allclose(ims[1].get_array(), expected[1], rtol=1e-12)


def test_attribution_map_panels_scale_and_inputs():
    rng = np.random.default_rng(2)
    attr = rng.standard_normal((3, 12))
    X = rng.uniform(size=(3, 12))
    fig = plot.attribution_map(attr, shape=(3, 4), images=X, titles=["a", "b", "c"], ncols=2)
    # a grid of 4 x 2 axes, row by row: inputs 0 and 1, their maps, input 2, an empty
    # slot, map 2, an empty slot
    grid = [ax.images[0] if ax.images else None for ax in fig.axes[:8]]
    inputs, maps = [grid[0], grid[1], grid[4]], [grid[2], grid[3], grid[6]]
    assert grid[5] is None and grid[7] is None
    for b in range(3):
        np.testing.assert_array_equal(inputs[b].get_array(), X[b].reshape(3, 4))
        np.testing.assert_array_equal(maps[b].get_array(), attr[b].reshape(3, 4))
    v = np.abs(attr).max()
    assert maps[1].get_clim() == (-v, v) and maps[1].get_cmap().name == "RdBu_r"
    assert inputs[0].get_cmap().name == "gray_r"
    titled = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titled == ["a", "b", "c"]
    assert sum(not ax.axison for ax in fig.axes) == 2  # the empty slot, input and map
    # non-negative: a sequential scale from 0; batched images need no `shape`
    ims = images_of(plot.attribution_map(np.abs(attr).reshape(3, 3, 4), label="saliency"))
    assert ims[0].get_clim() == (0.0, np.abs(attr).max())
    assert ims[0].get_cmap().name == "viridis"
    # 3-D samples (channels first) are summed over the channels
    a4 = rng.standard_normal((2, 3, 2, 2))
    ims = images_of(plot.attribution_map(a4))
    np.testing.assert_allclose(ims[1].get_array(), a4[1].sum(axis=0), rtol=1e-12)


def test_attribution_map_errors():
    attr = np.zeros((3, 12))
    with pytest.raises(ValueError, match=r"`attr` of shape \(3, 12\) needs `shape=`"):
        plot.attribution_map(attr)
    with pytest.raises(ValueError, match=r"`shape` \(5, 5\) does not match `attr`"):
        plot.attribution_map(attr, shape=(5, 5))
    with pytest.raises(ValueError, match="2-D .* or 3-D"):
        plot.attribution_map(attr, shape=(12,))
    with pytest.raises(ValueError, match="`images` must have the shape of `attr`"):
        plot.attribution_map(attr, shape=(3, 4), images=np.zeros((2, 12)))
    with pytest.raises(ValueError, match="`titles` must have 3 entries"):
        plot.attribution_map(attr, shape=(3, 4), titles=["a"])


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("shape", [(2, 3), (2, 1, 3), (1, 5)])
def test_index_names_round_trip(shape):
    names = plot.index_names(shape)
    assert len(names) == np.prod(shape)
    assert plot.shape_from_names(names) == shape
    assert plot.shape_from_names(plot.index_names(shape, prefix="pixel")) == shape
    idx = [tuple(int(i) for i in n[2:-1].split(",")) for n in names]
    assert idx == list(np.ndindex(*shape))  # C order, as the statistics are flattened


def test_flat_and_foreign_names_have_no_shape():
    assert plot.index_names((3,)) == ("x0", "x1", "x2")
    assert plot.index_names(()) == ("x0",)  # one scalar input, as `sensitivity` names it
    assert plot.shape_from_names(("x0", "x1")) is None
    assert plot.shape_from_names(()) is None
    names = list(plot.index_names((2, 2)))
    assert plot.shape_from_names(names[::-1]) is None
    assert plot.shape_from_names(names[:3]) is None
    assert plot.shape_from_names([*names[:3], "y[1,1]"]) is None
    assert plot.shape_from_names(["a[0,0]", "b[0,1]", "c[1,0]", "a[1,1]"]) is None


# --------------------------------------------------------------------------- display


def test_figures_show_in_jupyter_and_stay_out_of_pyplot():
    import matplotlib.image
    import matplotlib.pyplot as plt

    r, _ = bar_result(jnp.float64, n_half=4)
    before = plt.get_fignums()
    figs = [r.plot("bar"), r.plot("heatmap"), plot.attribution_map(np.ones((1, 2, 2)))]
    assert plt.get_fignums() == before  # not managed by pyplot: Jupyter shows it once
    for fig in figs:
        assert isinstance(fig, mpl.figure.Figure) and isinstance(fig, plot.Figure)
        png = fig._repr_png_()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(io.BytesIO(png))
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    again = pickle.loads(pickle.dumps(figs[0]))
    assert type(again) is plot.Figure
    assert again.axes[0].get_title() == figs[0].axes[0].get_title()
    # drawing into the user's axes returns the user's figure
    fig, ax = plt.subplots()
    try:
        assert r.plot("bar", ax=ax) is fig
    finally:
        plt.close(fig)


def test_loss_curves_draw_the_history():
    history = jacsens.History(train_loss=(4.0, 2.0, 1.0), val_loss=(5.0, 3.0, 2.5))
    ax = plot.loss_curves(history).axes[0]
    (train, val) = ax.get_lines()
    np.testing.assert_array_equal(train.get_xydata(), [[1, 4.0], [2, 2.0], [3, 1.0]])
    np.testing.assert_array_equal(val.get_ydata(), [5.0, 3.0, 2.5])
    assert ax.get_yscale() == "log"
    flat = plot.loss_curves(jacsens.History(train_loss=(0.0, 1.0), val_loss=None)).axes[0]
    assert flat.get_yscale() == "linear" and len(flat.get_lines()) == 1
