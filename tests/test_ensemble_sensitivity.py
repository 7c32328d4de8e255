"""`sensitivity` of a `jacsens.Ensemble`: one pass over the data, split into members that
equal each member's own analysis; spread, standard errors and rank stability by hand."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jacsens


class Linear(eqx.Module):
    W: jax.Array  # (n_out, n_in)

    def __call__(self, x):
        return self.W @ x


def _linear_ensemble(weights, dtype=jnp.float64):
    return jacsens.Ensemble(Linear(jnp.asarray(weights, dtype)), len(weights))


def test_linear_members_give_their_weights_and_rank_stability_by_hand():
    # three members, one output, three features: |∂y/∂x| = |W| exactly
    W = np.array(
        [
            [[3.0, 2.0, 0.1]],
            [[2.0, 3.0, 0.1]],
            [[3.0, -1.0, 0.2]],
        ]
    )
    ens = _linear_ensemble(W)
    X = jax.random.normal(jax.random.key(0), (50, 3), jnp.float64)
    r = jacsens.sensitivity(ens, X, feature_names=["a", "b", "c"], output_names=["y"])
    assert isinstance(r, jacsens.EnsembleSensitivity) and r.size == 3
    absW = np.abs(W[:, 0, :])
    np.testing.assert_allclose(r.values("mean_abs"), absW.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(r.between_sd("mean_abs"), absW.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(r.values("mean"), W[:, 0, :].mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(r.within_se("mean_abs"), 0.0, atol=1e-14)  # constant gradient
    np.testing.assert_allclose(r.se("mean_abs"), r.between_sd("mean_abs"), rtol=1e-12)
    # top-1 per member: a, b, a -> shares 2/3, 1/3, 0; top-2: {a,b} in every member
    np.testing.assert_allclose(r.rank_stability(1), [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(r.rank_stability(2), [1.0, 1.0, 0.0])
    assert r.ranking() == ["a", "b", "c"]
    assert r.top_agreement() == pytest.approx(2 / 3)  # top feature a in 2 of 3 members
    assert r.top_agreement(2) == 1.0  # {a, b} in every member
    assert r.top_agreement(3) == 1.0
    frame = r.ranked_frame(k=1)
    assert list(frame.columns) == [
        "output",
        "rank",
        "feature",
        "mean_abs",
        "mean_abs_between_sd",
        "mean_abs_within_se",
        "top1_share",
    ]
    assert frame["feature"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(frame["top1_share"], [2 / 3, 1 / 3, 0.0])
    tidy = r.members_frame()
    assert len(tidy) == 9 and sorted(set(tidy["member"])) == [0, 1, 2]
    summary = r.to_frame().set_index("feature")
    np.testing.assert_allclose(summary["mean_abs"], absW.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(summary["mean_abs_between_sd"], absW.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(summary["mean_abs_se"], r.se("mean_abs"), rtol=1e-12)
    np.testing.assert_allclose(summary["top5_share"], 1.0)  # three features: all in the top 5


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_members_equal_their_own_sensitivity(dtype):
    key = jax.random.key(3)

    def make(k):
        return jacsens.MLP(3, (8,), 2, "tanh", key=k, dtype=dtype)

    ens = jacsens.Ensemble.init(make, 4, key=key)
    X = jax.random.normal(jax.random.key(1), (37, 3), dtype)
    r = jacsens.sensitivity(ens, X, chunk_size=16, output_names=["p", "q"], interactions=True)
    rtol = 2e-5 if dtype == jnp.float32 else 1e-12
    for i in range(4):
        own = jacsens.sensitivity(
            ens.member(i), X, chunk_size=16, output_names=["p", "q"], interactions=True
        )
        got = r.members[i]
        assert got.output_names == ("p", "q") and got.n == 37
        for stat in ("mean", "mean_abs", "dgsm", "std", "max_abs", "mean_abs_se", "interactions"):
            np.testing.assert_allclose(getattr(got, stat), getattr(own, stat), rtol=rtol, atol=1e-7)
    # aggregate over outputs = mean over members of each member's RMS over outputs
    agg = np.mean([m.values("dgsm") for m in r.members], axis=0)
    np.testing.assert_allclose(r.values("dgsm"), agg, rtol=1e-12)
    assert r.output_label() == "RMS over 2 outputs"


def test_qmc_replicates_are_split_per_member():
    ens = _linear_ensemble(np.array([[[1.0, 2.0]], [[2.0, 1.0]]]))
    data = jacsens.sobol([[0.0, 1.0], [0.0, 1.0]], 64, key=jax.random.key(0), replicates=4)
    r = jacsens.sensitivity(ens, data)
    for i, m in enumerate(r.members):
        assert len(m.replicates) == 4
        np.testing.assert_allclose(m.mean, [[1.0, 2.0]] if i == 0 else [[2.0, 1.0]], rtol=1e-14)


def test_bad_output_names_are_refused_before_the_run():
    ens = _linear_ensemble(np.ones((2, 2, 3)))
    X = np.zeros((4, 3))
    with pytest.raises(ValueError, match="output_names"):
        jacsens.sensitivity(ens, X, output_names=["only one"])


def test_plot_says_it_is_an_ensemble():
    pytest.importorskip("matplotlib")
    ens = _linear_ensemble(np.array([[[1.0, 2.0]], [[2.0, 1.5]]]))
    r = jacsens.sensitivity(ens, np.random.default_rng(0).normal(size=(20, 2)))
    fig = r.plot()
    title = fig.axes[0].get_title()
    assert "ensemble of 2" in title and "all 2 features" in title
    bars = fig.axes[0].patches
    assert sorted(round(b.get_width(), 12) for b in bars) == [1.5, 1.75]
