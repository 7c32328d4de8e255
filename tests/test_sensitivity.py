import json
import os
import resource
import subprocess
import sys
import textwrap

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_close

import jacsens

N_IN = 5
A = np.array([1.5, -2.0, 0.5, 0.0, 3.0])
C = np.array([1.0, -0.5, 2.0, 0.25, -1.5])
UNIT = np.tile([0.0, 1.0], (N_IN, 1))


def linear(x):
    return x @ jnp.asarray(A, x.dtype)


def quadratic(x):
    return jnp.sum(jnp.asarray(C, x.dtype) * x**2)


@pytest.fixture(scope="module")
def seed_net():
    return jacsens.MLP(52, (20, 10), "scalar", "tanh", key=jax.random.key(0))


def _reference_stats(model, X):
    J = np.asarray(jacsens.input_jacobian(model, jnp.asarray(X)), np.float64)
    return J.reshape(X.shape[0], -1, X.shape[1])


# ------------------------------------------------------------------ closed forms


def test_linear_model_closed_form(getkey):
    r = jacsens.sensitivity(
        linear, jacsens.normal(np.zeros(N_IN), 2.0, 3000, getkey()), chunk_size=512
    )
    assert r.n == 3000 and r.n_omitted == 0 and r.mean.shape == (1, N_IN)
    assert_close(r.dgsm[0], A**2, 1e-12)
    assert_close(r.mean[0], A, 1e-12)
    assert_close(r.mean_abs[0], np.abs(A), 1e-12)
    assert_close(r.max_abs[0], np.abs(A), 1e-12)
    assert np.max(r.std) < 1e-12 and np.max(r.dgsm_se) < 1e-12


def test_quadratic_uniform_dgsm_within_4_se(getkey):
    r = jacsens.sensitivity(quadratic, jacsens.uniform(UNIT, 20_000, getkey()), chunk_size=4096)
    # ∂f/∂x_i = 2 c_i x_i, x_i ~ U(0, 1): ν = 4c²/3, mean = c, mean|.| = |c|, std = 2|c|/√12
    for est, se, exact in [
        (r.dgsm, r.dgsm_se, 4 * C**2 / 3),
        (r.mean, r.mean_se, C),
        (r.mean_abs, r.mean_abs_se, np.abs(C)),
        (r.std, r.std_se, 2 * np.abs(C) / np.sqrt(12)),
    ]:
        assert np.all(se[0] > 0)
        assert np.all(np.abs(est[0] - exact) <= 4 * se[0]), (est[0], exact, se[0])
    assert np.all(r.max_abs[0] <= 2 * np.abs(C)) and np.all(r.max_abs[0] > 1.99 * np.abs(C))


def test_standard_errors_match_spread_of_repeated_runs(getkey):
    runs = [
        jacsens.sensitivity(quadratic, jacsens.uniform(UNIT, 400, getkey()), chunk_size=128)
        for _ in range(20)
    ]
    for est, se in [("dgsm", "dgsm_se"), ("mean", "mean_se"), ("std", "std_se")]:
        values = np.stack([getattr(r, est)[0] for r in runs])
        reported = np.mean([getattr(r, se)[0] for r in runs], axis=0)
        ratio = values.std(axis=0, ddof=1) / reported
        # 20 runs: the sample std itself is uncertain by ~16%; allow a factor 1.5
        assert np.all((ratio > 1 / 1.5) & (ratio < 1.5)), (est, ratio)


def test_interactions_closed_form(getkey):
    def f(x):
        return jnp.stack([x[0] * x[1] + x[2] ** 2, 3 * x[0] * x[2]])

    X = np.asarray(jax.random.normal(getkey(), (50, 3)))
    r = jacsens.sensitivity(f, X, interactions=True, chunk_size=16)
    H = np.zeros((2, 3, 3))
    H[0, 0, 1] = H[0, 1, 0] = 1.0
    H[0, 2, 2] = 2.0
    H[1, 0, 2] = H[1, 2, 0] = 3.0
    assert r.interactions.shape == (2, 3, 3)
    assert_close(r.interactions, H, 1e-12)
    assert np.max(r.interactions_se) < 1e-12
    assert r.output_names == ("y0", "y1")


# ------------------------------------------------------------------ streaming machinery


def test_chunked_matches_one_pass_for_every_data_kind(seed_net, getkey, tmp_path):
    X = np.asarray(jax.random.uniform(getkey(), (1000, 52)))
    J = _reference_stats(seed_net, X)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    mm[:] = X
    mm.flush()
    sizes = [1, 99, 250, 7, 300, 343]
    starts = np.cumsum([0, *sizes])
    kinds = {
        "numpy": X,
        "jax": jnp.asarray(X),
        "memmap": np.load(tmp_path / "x.npy", mmap_mode="r"),
        "iterable": (X[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)),
    }
    for name, data in kinds.items():
        r = jacsens.sensitivity(seed_net, data, chunk_size=128)  # 7 full chunks + 104 rows
        assert r.n == 1000, name
        assert_close(r.mean, J.mean(0), 1e-12)
        assert_close(r.mean_abs, np.abs(J).mean(0), 1e-12)
        assert_close(r.dgsm, (J**2).mean(0), 1e-12)
        assert_close(r.std, J.std(0, ddof=1), 1e-10)
        assert_close(r.max_abs, np.abs(J).max(0), 1e-12)
        assert_close(r.mean_se, J.std(0, ddof=1) / np.sqrt(1000), 1e-10)


def test_one_compilation_for_all_chunks(getkey):
    traces = []

    def make():
        def f(x):
            traces.append(1)
            return jnp.tanh(x).sum()

        return f

    X = np.asarray(jax.random.normal(getkey(), (1000, 4)))
    counts = []
    for n in (70, 1000):  # 3 chunks (one partial) vs 16 chunks (one partial)
        traces.clear()
        jacsens.sensitivity(make(), X[:n], chunk_size=32)
        counts.append(len(traces))
    assert counts[0] == counts[1] > 0


def test_stream_one_million_samples_in_bounded_memory(seed_net, getkey):
    n = 1_000_000
    sampler = jacsens.uniform(np.tile([-1.0, 1.0], (52, 1)), n, getkey())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    r = jacsens.sensitivity(seed_net, sampler, chunk_size=8192)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.n == n
    # materialising the inputs alone would take n·52·8 B ≈ 400 MiB
    assert grown_mib < 100, grown_mib
    # the estimate agrees with a small exact pass within its standard errors
    X = sampler.chunk(0, 8192)
    J = _reference_stats(seed_net, X)
    assert np.all(np.abs(r.mean_abs - np.abs(J).mean(0)) < 5 * np.abs(J).std(0) / np.sqrt(8192))


def test_sampler_validation_and_determinism(getkey):
    key = getkey()
    s = jacsens.uniform([[0.0, 1.0], [-2.0, 5.0]], 10, key)
    a, b = s.chunk(3, 100), s.chunk(3, 100)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (100, 2) and float(a[:, 1].min()) >= -2 and float(a[:, 1].max()) <= 5
    with pytest.raises(ValueError, match="bounds.*low < high.*input 1"):
        jacsens.uniform([[0.0, 1.0], [2.0, 2.0]], 10, key)
    with pytest.raises(ValueError, match="bounds"):
        jacsens.uniform([0.0, 1.0, 2.0], 10, key)
    with pytest.raises(ValueError, match="bounds"):
        jacsens.uniform(np.zeros((2, 3)), 10, key)
    with pytest.raises(ValueError, match="bounds.*the scalar input has low=2.0 >= high=2.0"):
        jacsens.uniform([2.0, 2.0], 10, key)
    with pytest.raises(ValueError, match="`n`"):
        jacsens.uniform(UNIT, 0, key)
    with pytest.raises(ValueError, match="`std`"):
        jacsens.normal(np.zeros(3), [1.0, 0.0, 1.0], 10, key)
    with pytest.raises(TypeError, match="`key`"):
        jacsens.normal(np.zeros(3), 1.0, 10, 0)


def test_sampler_rows_do_not_depend_on_chunk_size(getkey):
    s = jacsens.normal(np.zeros(3), 2.0, 1000, getkey())
    block = np.asarray(s.rows(0, 1000))
    # any cut of the stream into chunks gives the same rows
    for size in (1, 7, 64, 100, 1000):
        chunks = [np.asarray(s.chunk(i, size)) for i in range(-(-1000 // size))]
        np.testing.assert_array_equal(np.concatenate(chunks)[:1000], block)
    # the 64-bit row counter carries into the high word
    np.testing.assert_array_equal(s.rows(2**32 - 2, 4)[2:], s.rows(2**32, 2))
    assert not np.array_equal(s.rows(2**32, 1), s.rows(0, 1))
    assert abs(block.std() - 2.0) < 0.1
    # so a sensitivity run gives the same numbers for any chunk_size (to round-off);
    # with per-chunk keys the samples differ and these differ by ~the standard error
    runs = [jacsens.sensitivity(quadratic_3, s, chunk_size=c) for c in (64, 100, 1000)]
    J = 2 * np.asarray([1.0, -0.5, 2.0]) * block  # ∂/∂x_i of Σ c_i x_i²
    for r in runs:
        assert_close(r.mean[0], J.mean(0), 1e-12)
        assert_close(r.dgsm[0], (J**2).mean(0), 1e-12)
        assert_close(r.max_abs[0], np.abs(J).max(0), 1e-12)


def quadratic_3(x):
    return jnp.sum(jnp.asarray([1.0, -0.5, 2.0], x.dtype) * x**2)


def test_scalar_input_model(getkey):
    m = jacsens.MLP("scalar", (8,), 2, "tanh", key=getkey())
    x = np.asarray(jax.random.normal(getkey(), (50,)))
    J = np.asarray(jacsens.input_jacobian(m, jnp.asarray(x)), np.float64)  # (50, 2)
    s = jacsens.normal(0.5, 2.0, 300, getkey())
    assert s.in_shape == () and jacsens.uniform([-1.0, 1.0], 5, getkey()).in_shape == ()
    Js = np.asarray(jacsens.input_jacobian(m, s.rows(0, 300)), np.float64)
    for data, ref in [
        (x, J),
        (jnp.asarray(x), J),
        ([x[:7], x[7:30], x[30:]], J),
        (s, Js),
    ]:
        r = jacsens.sensitivity(m, data, chunk_size=16)
        assert r.mean.shape == (2, 1) and r.n == ref.shape[0]
        assert r.feature_names == ("x0",) and r.output_names == ("y0", "y1")
        assert_close(r.mean[:, 0], ref.mean(0), 1e-12)
        assert_close(r.mean_abs[:, 0], np.abs(ref).mean(0), 1e-12)
        assert_close(r.dgsm[:, 0], (ref**2).mean(0), 1e-12)
        assert_close(r.std[:, 0], ref.std(0, ddof=1), 1e-10)
        assert_close(r.max_abs[:, 0], np.abs(ref).max(0), 1e-12)
    # scalar model and scalar output: d/dx (x³) = 3x²
    r = jacsens.sensitivity(lambda v: v**3, x, chunk_size=16)
    assert r.mean.shape == (1, 1) and r.output_names == ("y",)
    assert_close(r.mean[0, 0], np.mean(3 * x**2), 1e-12)
    # shapes that do not match the model still name `data`
    with pytest.raises(ValueError, match="data"):
        jacsens.sensitivity(m, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="data"):
        jacsens.sensitivity(jacsens.MLP(3, (4,), 1, key=getkey()), np.zeros(10))
    with pytest.raises(ValueError, match="data"):
        jacsens.sensitivity(m, np.array(1.0))


# ------------------------------------------------------------------ devices


def test_eight_devices_same_numbers_as_one(tmp_path):
    # Per-chunk statistics are reduced on each device in the model's dtype (float32 with
    # jax_enable_x64 off, float64 with it on); only the host merge is always float64. So
    # float32 runs agree to ~1e-7 and float64 runs to float64 round-off. chunk_size=100 is
    # rounded up to 104 for 8 devices: sampler draws are keyed by row, so the samples are
    # the same anyway.
    script = textwrap.dedent(
        """
        import json, sys
        import jax, numpy as np
        import jacsens
        assert jax.device_count() == 8, jax.devices()
        out = {}
        # part 1: float32 model and samples, jax_enable_x64 off
        model = jacsens.MLP(6, (8,), 3, "tanh", key=jax.random.key(0))
        data = jacsens.normal(np.zeros(6), 1.5, 1000, jax.random.key(1))
        assert model.layers[0].weight.dtype == np.float32 and data.dtype == np.float32
        kw = dict(chunk_size=100, progress=False)
        one = jacsens.sensitivity(model, data, devices=jax.devices()[:1], **kw)
        eight = jacsens.sensitivity(model, data, devices=jax.devices(), **kw)
        for f in ("mean", "mean_abs", "dgsm", "std", "max_abs"):
            a = getattr(one, f)
            out["f32_" + f] = float(np.max(np.abs(getattr(eight, f) - a)) / np.max(np.abs(a)))
        # part 2: float64 model and samples, jax_enable_x64 on
        jax.config.update("jax_enable_x64", True)
        model = jacsens.MLP(6, (8,), 3, "tanh", key=jax.random.key(0))
        data = jacsens.normal(np.zeros(6), 1.5, 1000, jax.random.key(1))
        assert model.layers[0].weight.dtype == np.float64 and data.dtype == np.float64
        kw = dict(chunk_size=100, interactions=True, progress=False)
        one = jacsens.sensitivity(model, data, devices=jax.devices()[:1], **kw)
        mesh = jax.make_mesh((8,), ("batch",))
        eight = jacsens.sensitivity(model, data, devices=mesh, **kw)
        eight_list = jacsens.sensitivity(model, data, devices=jax.devices(), **kw)
        none = jacsens.sensitivity(model, data, **kw)
        for f in ("mean", "mean_abs", "dgsm", "std", "max_abs", "dgsm_se", "interactions"):
            a = getattr(one, f)
            errs = [np.max(np.abs(getattr(r, f) - a)) / np.max(np.abs(a))
                    for r in (eight, eight_list, none)]
            out["f64_" + f] = max(errs)
        out["n"] = [one.n, eight.n, none.n]
        print(json.dumps(out))
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("n") == [1000, 1000, 1000]
    for f, err in out.items():
        assert err < (1e-5 if f.startswith("f32_") else 1e-12), (f, err)


def test_devices_validation(seed_net):
    X = np.zeros((4, 52))
    with pytest.raises(TypeError, match="devices"):
        jacsens.sensitivity(seed_net, X, devices=["cpu"])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    with pytest.raises(ValueError, match="'batch'"):
        jacsens.sensitivity(seed_net, X, devices=mesh)


# ------------------------------------------------------------------ checkpoint / resume


class Interrupted(Exception):
    pass


def _batches(X, sizes, fail_after=None):
    start = 0
    for k, s in enumerate(sizes):
        if fail_after is not None and k == fail_after:
            raise Interrupted
        yield X[start : start + s]
        start += s


def test_interrupted_run_resumes_to_same_result(seed_net, getkey, tmp_path):
    X = np.asarray(jax.random.normal(getkey(), (900, 52)))
    sizes = [100] * 9
    whole = jacsens.sensitivity(seed_net, _batches(X, sizes), chunk_size=64)
    ckpt = tmp_path / "state.npz"
    with pytest.raises(Interrupted):
        jacsens.sensitivity(
            seed_net, _batches(X, sizes, 5), chunk_size=64, checkpoint=ckpt, checkpoint_every=3
        )
    with np.load(ckpt, allow_pickle=False) as z:
        meta = json.loads(str(z["_meta"]))
    assert 0 < meta["rows_done"] < 900 and meta["rows_done"] % 64 == 0
    resumed = jacsens.sensitivity(seed_net, _batches(X, sizes), chunk_size=64, checkpoint=ckpt)
    for f in ("mean", "mean_abs", "dgsm", "std", "max_abs", "mean_se", "std_se"):
        np.testing.assert_array_equal(getattr(resumed, f), getattr(whole, f))
    assert resumed.n == 900
    # a sampler run interrupted by a non-finite input, then continued with clean data
    s = jacsens.uniform(np.tile([0.0, 1.0], (52, 1)), 1000, getkey())
    ref = jacsens.sensitivity(seed_net, s, chunk_size=128)
    ck2 = tmp_path / "s.npz"
    part = jacsens.sensitivity(seed_net, s, chunk_size=128, checkpoint=ck2)
    again = jacsens.sensitivity(seed_net, s, chunk_size=128, checkpoint=ck2)  # already complete
    np.testing.assert_array_equal(part.dgsm, ref.dgsm)
    np.testing.assert_array_equal(again.dgsm, ref.dgsm)
    with pytest.raises(ValueError, match="checkpoint.*chunk_size"):
        jacsens.sensitivity(seed_net, s, chunk_size=256, checkpoint=ck2)
    other_key = jacsens.uniform(np.tile([0.0, 1.0], (52, 1)), 1000, getkey())
    with pytest.raises(ValueError, match="checkpoint.*data"):
        jacsens.sensitivity(seed_net, other_key, chunk_size=128, checkpoint=ck2)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_checkpoint_rejects_other_model_or_data(getkey, tmp_path):
    k1 = getkey()
    m1 = jacsens.MLP(6, (8,), 2, "tanh", key=k1)
    X = np.asarray(jax.random.normal(getkey(), (300, 6)))
    ck = tmp_path / "run.npz"
    r1 = jacsens.sensitivity(m1, X, chunk_size=64, checkpoint=ck)
    # another model (other weights; same weights with another activation)
    for other in (
        jacsens.MLP(6, (8,), 2, "tanh", key=getkey()),
        jacsens.MLP(6, (8,), 2, "sigmoid", key=k1),
    ):
        with pytest.raises(ValueError, match=r"`checkpoint`.*different run: its model"):
            jacsens.sensitivity(other, X, chunk_size=64, checkpoint=ck)
    # plain functions: told apart by their bytecode
    ck_f = tmp_path / "f.npz"
    jacsens.sensitivity(lambda x: m1(x), X, mode="rev", checkpoint=ck_f)
    with pytest.raises(ValueError, match=r"`checkpoint`.*different run: its model"):
        jacsens.sensitivity(lambda x: m1(x) * 2, X, mode="rev", checkpoint=ck_f)
    # other data of the same shape: first row, last row, a row in the middle, all rows
    for edit in (0, 299, 150, slice(None)):
        X2 = X.copy()
        X2[edit] += 1.0
        for data in (X2, jnp.asarray(X2)):
            with pytest.raises(ValueError, match=r"`checkpoint`.*different run: its data"):
                jacsens.sensitivity(m1, data, chunk_size=64, checkpoint=ck)
    # the same model (rebuilt) and the same data (copied, as a jax array, as a memmap)
    np.save(tmp_path / "x.npy", X)
    same = jacsens.MLP(6, (8,), 2, "tanh", key=k1)
    for data in (X.copy(), jnp.asarray(X), np.load(tmp_path / "x.npy", mmap_mode="r")):
        r = jacsens.sensitivity(same, data, chunk_size=64, checkpoint=ck)
        np.testing.assert_array_equal(r.dgsm, r1.dgsm)
    # an interrupted run resumes with the rebuilt model and refuses another one
    ck2 = tmp_path / "part.npz"
    with pytest.raises(Interrupted):
        jacsens.sensitivity(
            m1, _batches(X, [100] * 3, 2), chunk_size=64, checkpoint=ck2, checkpoint_every=1
        )
    with pytest.raises(ValueError, match="its model"):
        other = jacsens.MLP(6, (8,), 2, key=getkey())
        jacsens.sensitivity(other, _batches(X, [100] * 3), chunk_size=64, checkpoint=ck2)
    resumed = jacsens.sensitivity(same, _batches(X, [100] * 3), chunk_size=64, checkpoint=ck2)
    assert_close(resumed.dgsm, r1.dgsm, 1e-12)


def test_model_fingerprint_is_the_same_in_another_process():
    # memory addresses in reprs (functions in static fields) must not enter the identity,
    # or a checkpoint could never be resumed by a new process
    from jacsens._sensitivity import _model_fingerprint

    code = textwrap.dedent(
        """
        import equinox as eqx, jax, jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        import jacsens
        from jacsens._sensitivity import _model_fingerprint
        def f(x):
            return jnp.sin(x).sum()
        models = [
            jacsens.MLP(4, (5,), 2, "gelu", key=jax.random.key(0)),
            eqx.nn.Sequential(
                [eqx.nn.Linear(4, 3, key=jax.random.key(1)), eqx.nn.Lambda(jnp.tanh)]
            ),
            f,
        ]
        """
    )
    ns: dict = {"__name__": "__main__"}
    exec(code, ns)
    here = [_model_fingerprint(m) for m in ns["models"]]
    proc = subprocess.run(
        [sys.executable, "-c", code + "print([_model_fingerprint(m) for m in models])"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(here)
    assert len(set(here)) == 3
    # a different function in a static position changes it
    seq = ns["models"][1]
    other = eqx.tree_at(lambda s: s.layers[1], seq, eqx.nn.Lambda(jnp.sin))
    assert _model_fingerprint(other) != here[1]


# ------------------------------------------------------------------ bad input


def test_nan_policy(seed_net, getkey):
    X = np.array(jax.random.normal(getkey(), (300, 52)))
    X[[5, 130, 131]] = np.nan
    X[200, 3] = np.inf
    with pytest.raises(
        ValueError, match=r"input values.*chunk 1, row 60 of the chunk \(sample 124\)"
    ):
        jacsens.sensitivity(seed_net, X[6:], chunk_size=64)
    r = jacsens.sensitivity(seed_net, X, chunk_size=64, nan_policy="omit")
    keep = np.ones(300, bool)
    keep[[5, 130, 131, 200]] = False
    J = _reference_stats(seed_net, X[keep])
    assert r.n == 296 and r.n_omitted == 4
    assert_close(r.dgsm, (J**2).mean(0), 1e-12)
    with pytest.raises(ValueError, match="derivatives.*chunk 0, row 2 "):
        jacsens.sensitivity(jnp.sqrt, np.array([[1.0], [2.0], [0.0]]))  # ∂√x/∂x = ∞ at 0
    with pytest.raises(ValueError, match="nan_policy"):
        jacsens.sensitivity(seed_net, X, nan_policy="ignore")
    with pytest.raises(ValueError, match="No usable samples"):
        jacsens.sensitivity(seed_net, np.full((3, 52), np.nan), nan_policy="omit")


def test_bad_input(seed_net):
    X = np.zeros((10, 52))
    with pytest.raises(ValueError, match="feature_names.*52.*got 3"):
        jacsens.sensitivity(seed_net, X, feature_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="output_names"):
        jacsens.sensitivity(seed_net, X, output_names=["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        jacsens.sensitivity(seed_net, np.zeros((0, 52)))
    with pytest.raises(ValueError, match="empty"):
        jacsens.sensitivity(seed_net, iter([]))
    with pytest.raises(ValueError, match="empty"):
        jacsens.sensitivity(seed_net, [np.zeros((0, 52))])
    with pytest.raises(ValueError, match="batch 2 has feature shape \\(51,\\)"):
        jacsens.sensitivity(seed_net, [X, X, np.zeros((4, 51))])
    with pytest.raises(ValueError, match="data"):
        jacsens.sensitivity(seed_net, np.zeros((10, 51)))
    with pytest.raises(TypeError, match="data"):
        jacsens.sensitivity(seed_net, np.zeros((10, 52), np.int32))
    with pytest.raises(TypeError, match="data"):
        jacsens.sensitivity(seed_net, 3.0)
    with pytest.raises(ValueError, match="chunk_size"):
        jacsens.sensitivity(seed_net, X, chunk_size=0)
    with pytest.raises(ValueError, match="mode"):
        jacsens.sensitivity(seed_net, X, mode="sideways")


# ------------------------------------------------------------------ result object


@pytest.fixture(scope="module")
def lin_result():
    names = [f"f{i}" for i in range(N_IN)]
    X = np.asarray(jax.random.uniform(jax.random.key(3), (200, N_IN)))
    return jacsens.sensitivity(linear, X, feature_names=names, output_names=["out"])


def test_ranking_and_frame(lin_result):
    r = lin_result
    assert r.ranking() == ["f4", "f1", "f0", "f2", "f3"]
    assert r.ranking(output="out", by="dgsm") == ["f4", "f1", "f0", "f2", "f3"]
    assert r.ranking(by="mean")[0] == "f4"
    with pytest.raises(ValueError, match="by"):
        r.ranking(by="median")
    with pytest.raises(ValueError, match="output"):
        r.ranking(output=1)
    df = r.to_frame()
    assert list(df.columns) == [
        "output",
        "feature",
        "mean",
        "mean_se",
        "mean_abs",
        "mean_abs_se",
        "dgsm",
        "dgsm_se",
        "std",
        "std_se",
        "max_abs",
    ]
    assert len(df) == N_IN and list(df["feature"]) == [f"f{i}" for i in range(N_IN)]
    assert_close(df["dgsm"].to_numpy(), A**2, 1e-12)


def test_sobol_bound_closed_form(lin_result):
    # y = a·x, x_i ~ U(lo_i, hi_i): S_T,i = a_i² w_i²/12 / Var y ≤ a_i² w_i² / (π² Var y)
    bounds = np.array([[0, 1], [0, 2], [-1, 1], [0, 1], [0, 0.5]], float)
    w = bounds[:, 1] - bounds[:, 0]
    var_y = np.sum(A**2 * w**2 / 12)
    bound = lin_result.sobol_bound(bounds, var_y)
    assert_close(bound[0], w**2 * A**2 / (np.pi**2 * var_y), 1e-12)
    assert np.all(bound[0] >= A**2 * w**2 / 12 / var_y)
    with pytest.raises(ValueError, match="low < high"):
        lin_result.sobol_bound(bounds[:, ::-1], var_y)
    with pytest.raises(ValueError, match="output_variance"):
        lin_result.sobol_bound(bounds, 0.0)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_save_load_roundtrip(lin_result, tmp_path, suffix):
    path = tmp_path / f"res{suffix}"
    lin_result.save(path)
    back = jacsens.SensitivityResult.load(path)
    assert back.feature_names == lin_result.feature_names and back.n == lin_result.n
    for f in ("mean", "dgsm", "std_se", "max_abs"):
        np.testing.assert_array_equal(getattr(back, f), getattr(lin_result, f))
    assert back.interactions is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"res{suffix}"]


@pytest.mark.parametrize("kind", ["bar", "heatmap"])
def test_plot_png(seed_net, tmp_path, kind):
    X = np.asarray(jax.random.normal(jax.random.key(0), (64, 52)))
    r = jacsens.sensitivity(seed_net, X)
    fig = r.plot(kind, **({"top": 10} if kind == "bar" else {}))
    path = tmp_path / f"{kind}.png"
    fig.savefig(path)
    assert path.stat().st_size > 5000
    if kind == "bar":
        ax = fig.axes[0]
        assert len(ax.patches) == 10
        assert [t.get_text() for t in ax.get_yticklabels()] == r.ranking()[:10]
    with pytest.raises(ValueError, match="kind"):
        r.plot("pie")


def test_progress_bar_in_a_terminal(seed_net, monkeypatch, capsys):
    pytest.importorskip("tqdm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    jacsens.sensitivity(seed_net, np.zeros((300, 52)), chunk_size=100, progress=True)
    assert "300" in capsys.readouterr().err
    jacsens.sensitivity(seed_net, np.zeros((300, 52)), chunk_size=100, progress=False)
    assert capsys.readouterr().err == ""


def test_iterable_chunking_copies_each_row_once():
    """Re-chunking an iterable slices views of big batches (it used to re-concatenate the
    whole remaining buffer after every chunk: quadratic in the batch size)."""
    from jacsens._sensitivity import _IterableSource

    X = np.arange(10_007 * 3, dtype=np.float32).reshape(10_007, 3)
    batches = [X[:5], X[5:4000], X[4000:4001], X[4001:]]
    chunks = list(_IterableSource(batches).chunks(64, 0))
    assert [n for _, _, n in chunks] == [64] * (10_007 // 64) + [10_007 % 64]
    assert [i for i, _, _ in chunks] == list(range(len(chunks)))
    got = np.concatenate([c[:n] for _, c, n in chunks])
    np.testing.assert_array_equal(got, X)
    # a chunk inside one batch is a view of it, not a copy
    one = list(_IterableSource([X]).chunks(64, 0))
    assert all(np.shares_memory(c, X) for _, c, n in one if n == 64)
    # resuming at a chunk skips exactly its rows
    resumed = list(_IterableSource(batches).chunks(64, 7))
    np.testing.assert_array_equal(resumed[0][1], X[7 * 64 : 8 * 64])


def test_checkpoint_refuses_other_nan_policy(seed_net, tmp_path):
    X = np.asarray(jax.random.normal(jax.random.key(5), (100, 52)), np.float32)
    X[17, 3] = np.nan
    ck = tmp_path / "ck.npz"
    r = jacsens.sensitivity(seed_net, X, chunk_size=16, nan_policy="omit", checkpoint=ck)
    assert r.n_omitted == 1
    with pytest.raises(ValueError, match="nan_policy"):
        jacsens.sensitivity(seed_net, X, chunk_size=16, nan_policy="raise", checkpoint=ck)
