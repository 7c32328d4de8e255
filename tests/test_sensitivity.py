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

import jacsens

from helpers import assert_close

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
        (iter([x[:7], x[7:30], x[30:]]), J),
        (list(x), J),  # a list of numbers: one array of scalar rows
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
        meta = json.loads(str(z["_header"]))["checkpoint"]
    assert 0 < meta["rows_done"] < 900 and meta["rows_done"] % 64 == 0
    assert meta["rows_done"] == jacsens.SensitivityResult.load(ckpt).n
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
    with pytest.raises(ValueError, match="checkpoint.*its mode"):
        jacsens.sensitivity(seed_net, s, chunk_size=128, mode="fwd", checkpoint=ck2)
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
    from jacsens._sensitivity import model_fingerprint as _model_fingerprint

    code = textwrap.dedent(
        """
        import equinox as eqx, jax, jax.numpy as jnp
        jax.config.update("jax_enable_x64", True)
        import jacsens
        from jacsens._sensitivity import model_fingerprint as _model_fingerprint
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
        ValueError, match=r"input values.*sample 124 \(row 60 of the chunk starting at sample 64\)"
    ):
        jacsens.sensitivity(seed_net, X[6:], chunk_size=64)
    r = jacsens.sensitivity(seed_net, X, chunk_size=64, nan_policy="omit")
    keep = np.ones(300, bool)
    keep[[5, 130, 131, 200]] = False
    J = _reference_stats(seed_net, X[keep])
    assert r.n == 296 and r.n_omitted == 4
    assert_close(r.dgsm, (J**2).mean(0), 1e-12)
    with pytest.raises(ValueError, match="derivatives.*sample 2 "):
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
        jacsens.sensitivity(seed_net, iter([np.zeros((0, 52))]))
    with pytest.raises(ValueError, match="batch 2 has feature shape \\(51,\\)"):
        jacsens.sensitivity(seed_net, iter([X, X, np.zeros((4, 51))]))
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


def test_save_load_roundtrip(lin_result, tmp_path):
    path = tmp_path / "res.npz"
    lin_result.save(path)
    back = jacsens.SensitivityResult.load(path)
    assert back.feature_names == lin_result.feature_names and back.n == lin_result.n
    assert back.output_names == ("out",) and back.mode == lin_result.mode
    for f in ("mean", "mean_se", "mean_abs", "dgsm", "dgsm_se", "std", "std_se", "max_abs"):
        np.testing.assert_array_equal(getattr(back, f), getattr(lin_result, f))
    assert back.interactions is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.npz"]
    with pytest.raises(ValueError, match=r"\.npz"):
        lin_result.save(tmp_path / "res.json")


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
    """Re-chunking a stream slices views of big batches (it used to re-concatenate the
    whole remaining buffer after every chunk: quadratic in the batch size)."""
    from jacsens._sensitivity._sources import IterableSource

    X = np.arange(10_007 * 3, dtype=np.float32).reshape(10_007, 3)
    batches = [X[:5], X[5:4000], X[4000:4001], X[4001:]]

    def blocks(src, size, start=0):
        out = []
        while True:
            block, n = src.read(start, size)
            if n == 0:
                return out
            assert block.shape == (size, 3)
            out.append((start, block, n))
            src.release(start + n)
            start += n

    chunks = blocks(IterableSource(batches), 64)
    assert [n for _, _, n in chunks] == [64] * (10_007 // 64) + [10_007 % 64]
    got = np.concatenate([c[:n] for _, c, n in chunks])
    np.testing.assert_array_equal(got, X)
    np.testing.assert_array_equal(chunks[-1][1][10_007 % 64 :], 0.0)  # padding
    # a chunk inside one batch is a view of it, not a copy
    one = blocks(IterableSource([X]), 64)
    assert all(np.shares_memory(c, X) for _, c, n in one if n == 64)
    # resuming at a row skips exactly the rows before it
    src = IterableSource(batches)
    src.release(7 * 64)
    np.testing.assert_array_equal(src.read(7 * 64, 64)[0], X[7 * 64 : 8 * 64])
    # rows not yet released can be read again (the out-of-memory back-off does)
    src = IterableSource(batches)
    first, _ = src.read(0, 100)
    src.read(100, 100)
    again, _ = src.read(0, 50)
    np.testing.assert_array_equal(again, first[:50])


def test_checkpoint_refuses_other_nan_policy(seed_net, tmp_path):
    X = np.asarray(jax.random.normal(jax.random.key(5), (100, 52)), np.float32)
    X[17, 3] = np.nan
    ck = tmp_path / "ck.npz"
    r = jacsens.sensitivity(seed_net, X, chunk_size=16, nan_policy="omit", checkpoint=ck)
    assert r.n_omitted == 1
    with pytest.raises(ValueError, match="nan_policy"):
        jacsens.sensitivity(seed_net, X, chunk_size=16, nan_policy="raise", checkpoint=ck)


# ------------------------------------------------------------------ statistics that cannot overflow


def _exact_statistics(J):
    """Every statistic of a fixed sample `J` (n, ...) by the textbook formulas in float64,
    including the delta-method SE of std, which needs the fourth central moment."""
    J = np.asarray(J, np.float64)
    n = J.shape[0]
    d = J - J.mean(0)
    var = (d**2).sum(0) / (n - 1)
    mu4 = (d**4).sum(0) / n
    return {
        "mean": J.mean(0),
        "mean_se": np.sqrt(var / n),
        "mean_abs": np.abs(J).mean(0),
        "mean_abs_se": np.abs(J).std(0, ddof=1) / np.sqrt(n),
        "dgsm": (J**2).mean(0),
        "dgsm_se": (J**2).std(0, ddof=1) / np.sqrt(n),
        "std": np.sqrt(var),
        "std_se": np.sqrt(np.maximum(mu4 - var**2, 0) / n) / (2 * np.sqrt(var)),
        "max_abs": np.abs(J).max(0),
    }


W3 = np.array([1.0, 3.0, 2.0])


@pytest.mark.parametrize(
    "dtype, scale",
    [
        *[("float32", c) for c in (1e-16, 2e9, 2e19, 1e30)],
        *[("float64", c) for c in (1e-16, 2e9, 2e19, 1e30, 1e-100, 1e100)],
    ],
)
def test_statistics_finite_for_any_finite_jacobian(dtype, scale):
    # f = s Σ w_i x_i² / 2, so ∂f/∂x_i = s w_i x_i: changes sign, spans two decades
    rng = np.random.default_rng(11)
    X = (0.3 + rng.standard_normal((700, 3))).astype(dtype)

    def f(x):
        return jnp.asarray(scale, x.dtype) * jnp.sum(jnp.asarray(W3, x.dtype) * x * x) / 2

    # the float64 reference of J = s·w·x, formed as s^k × (statistic of w·x): J⁴ itself
    # would underflow float64 at s = 1e-100
    power = {"dgsm": 2, "dgsm_se": 2}
    ref = {
        k: v * scale ** power.get(k, 1)
        for k, v in _exact_statistics(W3 * X.astype(np.float64)).items()
    }
    if 1e-30 <= scale <= 1e30:  # and directly, where float64 holds J⁴
        direct = _exact_statistics(scale * W3 * X.astype(np.float64))
        for k in ref:
            assert_close(direct[k], ref[k], 1e-12)
    with jax.enable_x64(dtype == "float64"):
        r = jacsens.sensitivity(f, X, chunk_size=128, progress=False)  # 5 chunks + 60 rows
    for name, want in ref.items():
        got = getattr(r, name)[0]
        assert np.all(np.isfinite(got)) and np.all(got != 0), (name, got)
        # float32: the Jacobian itself is rounded to 6e-8; float64: round-off only
        assert_close(got, want, 2e-5 if dtype == "float32" else 1e-10)
    assert r.ranking() == ["x1", "x2", "x0"]
    assert r.ranking(by="dgsm") == ["x1", "x2", "x0"]


def test_standard_errors_are_the_exact_formulas_on_a_fixed_sample():
    # uniform x has kurtosis 1.8, far from the normal 3: an SE of std that ignored the
    # fourth moment (σ/√(2n)) would be off by ~37%
    rng = np.random.default_rng(3)
    X = rng.uniform(-1.0, 1.0, (500, 5))
    r = jacsens.sensitivity(quadratic, X, chunk_size=64, progress=False)
    ref = _exact_statistics(2 * C * X)
    for name, want in ref.items():
        assert_close(getattr(r, name)[0], want, 1e-10)
    gaussian_guess = ref["std"] / np.sqrt(2 * 500)
    assert np.all(np.abs(r.std_se[0] / gaussian_guess - 1) > 0.2)


def test_mean_abs_is_not_abs_mean_when_the_jacobian_changes_sign():
    # ∂/∂x_i Σ c_i x_i² = 2 c_i x_i over x ~ U(-1, 1): mean ≈ 0 but mean |J| ≈ |c_i|
    rng = np.random.default_rng(4)
    X = rng.uniform(-1.0, 1.0, (2000, 5))
    r = jacsens.sensitivity(quadratic, X, chunk_size=256, progress=False)
    J = 2 * C * X
    assert_close(r.mean_abs[0], np.abs(J).mean(0), 1e-12)
    assert_close(r.mean[0], J.mean(0), 1e-10)
    assert np.all(r.mean_abs[0] > 10 * np.abs(r.mean[0]))
    assert r.ranking() == ["x2", "x4", "x0", "x1", "x3"]


def test_non_finite_jacobian_from_finite_inputs_names_the_sample():
    def f(x):  # ∂f/∂x = 2·3e38·x: overflows float32 for |x| > 0.6
        return jnp.asarray(3e38, x.dtype) * jnp.sum(x * x)

    X = np.full((40, 2), 0.1, np.float32)
    X[33, 1] = 0.9
    with jax.enable_x64(False):
        with pytest.raises(ValueError, match=r"derivatives.*sample 33 "):
            jacsens.sensitivity(f, X, chunk_size=16, progress=False)
        r = jacsens.sensitivity(f, X, chunk_size=16, progress=False, nan_policy="omit")
    assert r.n == 39 and r.n_omitted == 1
    assert_close(r.mean[0], 2 * 3e38 * np.float64(np.float32(0.1)) * np.ones(2), 1e-6)


def test_ranking_refuses_undefined_values(seed_net):
    r = jacsens.sensitivity(seed_net, np.zeros((1, 52)), progress=False)
    assert np.all(np.isnan(r.std))
    with pytest.raises(ValueError, match="std.*undefined"):
        r.ranking(by="std")
    assert len(r.ranking()) == 52


# ------------------------------------------------------------------ data kinds


def test_array_likes_are_one_array(seed_net, getkey):
    X = np.asarray(jax.random.normal(getkey(), (90, 52)))
    ref = jacsens.sensitivity(seed_net, X, chunk_size=32, progress=False)
    for data in (X.tolist(), tuple(X), list(X)):
        r = jacsens.sensitivity(seed_net, data, chunk_size=32, progress=False)
        np.testing.assert_array_equal(r.dgsm, ref.dgsm)
        assert r.n == 90
    # a list of batches is not rows: a clear message says how to stream them
    with pytest.raises(ValueError, match=r"iter\(batches\)"):
        jacsens.sensitivity(seed_net, [X[:30], X[30:]], progress=False)
    with pytest.raises(ValueError, match=r"iter\(batches\)"):
        jacsens.sensitivity(seed_net, [X[:45], X[45:]], progress=False)
    r = jacsens.sensitivity(seed_net, iter([X[:30], X[30:]]), chunk_size=32, progress=False)
    np.testing.assert_array_equal(r.dgsm, ref.dgsm)
    with pytest.raises(TypeError, match="dict"):
        jacsens.sensitivity(seed_net, {"x0": X[:, 0]}, progress=False)
    with pytest.raises(TypeError, match="data"):
        jacsens.sensitivity(seed_net, [[1] * 52] * 3, progress=False)


def test_dataframe_columns_become_feature_names():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    df = pd.DataFrame(rng.uniform(-1, 1, (120, 5)), columns=["a", "b", "c", "d", "e"])
    r = jacsens.sensitivity(quadratic, df, chunk_size=50, progress=False)
    assert r.feature_names == ("a", "b", "c", "d", "e")
    J = 2 * C * df.to_numpy()
    assert_close(r.mean_abs[0], np.abs(J).mean(0), 1e-12)
    assert r.ranking()[0] == "c"
    named = jacsens.sensitivity(quadratic, df, feature_names=list("vwxyz"), progress=False)
    assert named.feature_names == tuple("vwxyz")
    with pytest.raises(TypeError, match=r"\['b'\]"):
        jacsens.sensitivity(quadratic, df.assign(b=np.arange(120)), progress=False)
    s = pd.Series(rng.uniform(0, 1, 64), name="t")
    r = jacsens.sensitivity(lambda v: v**3, s, progress=False)
    assert r.feature_names == ("t",) and r.mean.shape == (1, 1)
    assert_close(r.mean[0, 0], np.mean(3 * s.to_numpy() ** 2), 1e-12)


@pytest.mark.parametrize("low", ["float16", "bfloat16"])
def test_half_precision_inputs_like_input_jacobian(low):
    m = jacsens.MLP(4, (6,), 2, "tanh", key=jax.random.key(2), dtype=jnp.float32)
    X = jnp.asarray(np.random.default_rng(1).standard_normal((50, 4)), jnp.dtype(low))
    J = np.asarray(jacsens.input_jacobian(m, X), np.float64)
    for data in (X, np.asarray(X)):
        r = jacsens.sensitivity(m, data, chunk_size=16, progress=False)
        assert_close(r.mean, J.mean(0), 1e-6)
        assert_close(r.dgsm, (J**2).mean(0), 1e-6)


def test_huge_chunk_size_is_capped_at_the_data(seed_net, getkey):
    X = np.asarray(jax.random.normal(getkey(), (100, 52)))
    ref = jacsens.sensitivity(seed_net, X, chunk_size=100, progress=False)
    for data in (X, iter([X[:30], X[30:]])):
        r = jacsens.sensitivity(seed_net, data, chunk_size=10**12, progress=False)
        np.testing.assert_array_equal(r.dgsm, ref.dgsm)
    # "auto" (the default) on small data: one chunk of all the rows
    np.testing.assert_array_equal(jacsens.sensitivity(seed_net, X, progress=False).dgsm, ref.dgsm)


def test_samplers_refuse_strings(getkey):
    with pytest.raises(TypeError, match="bounds"):
        jacsens.uniform([["0", "1"], ["0", "2"]], 10, getkey())
    with pytest.raises(TypeError, match="mean"):
        jacsens.normal(["0.5"], 1.0, 10, getkey())
    with pytest.raises(TypeError, match="std"):
        jacsens.normal([0.5], "1", 10, getkey())
    assert isinstance(jacsens.uniform(UNIT, 5, getkey()), jacsens.Sampler)
    assert isinstance(jacsens.normal(np.zeros(2), 1.0, 5, getkey()), jacsens.Sampler)


# ------------------------------------------------------------------ merging and files


def test_merge_two_results_equals_one_run(seed_net, getkey):
    X = np.asarray(jax.random.normal(getkey(), (300, 52)))
    whole = jacsens.sensitivity(seed_net, X, chunk_size=64, progress=False)
    a = jacsens.sensitivity(seed_net, X[:110], chunk_size=64, progress=False)
    b = jacsens.sensitivity(seed_net, X[110:], chunk_size=64, progress=False)
    m = a.merge(b)
    assert m.n == 300
    for f in ("mean", "mean_se", "mean_abs", "dgsm", "dgsm_se", "std", "std_se", "max_abs"):
        assert_close(getattr(m, f), getattr(whole, f), 1e-12)
    other = jacsens.sensitivity(seed_net, X[:10], feature_names=[f"f{i}" for i in range(52)])
    with pytest.raises(ValueError, match="feature_names"):
        a.merge(other)


def _forge(path, edit):
    """Rewrite the `.npz` at `path` after `edit(header, arrays)`, with a valid checksum:
    what a careless edit or a buggy writer could produce."""
    from jacsens._sensitivity._result import _checksum

    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["_header"]))
        arrays = {k: z[k] for k in z.files if not k.startswith("_")}
    edit(header, arrays)
    text = json.dumps(header)
    np.savez(path, _header=np.array(text), _checksum=np.array(_checksum(text, arrays)), **arrays)


def test_damaged_result_files_are_value_errors_naming_the_file(lin_result, tmp_path):
    good = tmp_path / "good.npz"
    lin_result.save(good)
    blob = good.read_bytes()
    bad = tmp_path / "bad.npz"

    def refused(match="intact"):
        with pytest.raises(ValueError, match=match) as info:
            jacsens.SensitivityResult.load(bad)
        assert str(bad) in str(info.value)

    for cut in (0, 10, len(blob) // 3, len(blob) // 2, len(blob) - 30, len(blob) - 1):
        bad.write_bytes(blob[:cut])  # truncated
        refused()
    for pos in range(100, len(blob) - 100, max(1, len(blob) // 15)):
        flipped = bytearray(blob)
        flipped[pos] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        try:
            jacsens.SensitivityResult.load(bad)
        except ValueError as e:
            assert str(bad) in str(e)
        else:  # a flip in the zip's slack bytes changes nothing that is read
            back = jacsens.SensitivityResult.load(bad)
            np.testing.assert_array_equal(back.dgsm, lin_result.dgsm)

    # edits without a matching checksum
    with np.load(good) as z:
        entries = {k: z[k] for k in z.files}
    header = json.loads(str(entries["_header"]))
    header["n_omitted"] = 5
    np.savez(bad, **dict(entries, _header=np.array(json.dumps(header))))
    refused("checksum")
    np.savez(bad, **{k: v for k, v in entries.items() if k != "_checksum"})
    refused("checksum")
    np.savez(bad, **dict(entries, jac_u_mean=entries["jac_u_mean"] * 2))
    refused("checksum")

    # consistent checksums, impossible contents
    for edit, match in [
        (lambda h, a: a.update(jac_u_mean=a["jac_u_mean"][:, :3]), "shape"),
        (lambda h, a: a.update(jac_count=np.float64(-3)), "count"),
        (lambda h, a: a.update(jac_u_m2=-a["jac_u_m2"] - 1), "u_m2"),
        (lambda h, a: h.update(n_omitted=1.5), "n_omitted"),
        (lambda h, a: h.update(feature_names=h["feature_names"][:2]), "shape"),
        (lambda h, a: h.update(interactions=True), "interactions"),
        (lambda h, a: h.update(version=1), "version"),
    ]:
        bad.write_bytes(blob)
        _forge(bad, edit)
        refused(match)
    bad.write_bytes(blob)
    _forge(bad, lambda h, a: h.update(n_omitted=float("inf")))  # json writes Infinity
    refused("non-finite")
    with pytest.raises(FileNotFoundError):
        jacsens.SensitivityResult.load(tmp_path / "missing.npz")


def test_damaged_or_edited_checkpoint_is_refused(seed_net, getkey, tmp_path):
    X = np.asarray(jax.random.normal(getkey(), (300, 52)))
    ck = tmp_path / "ck.npz"
    with pytest.raises(Interrupted):
        jacsens.sensitivity(
            seed_net, _batches(X, [100] * 3, 2), chunk_size=64, checkpoint=ck, checkpoint_every=1
        )
    blob = ck.read_bytes()
    # editing rows_done would make the run "complete" with a fraction of the data
    with np.load(ck) as z:
        entries = {k: z[k] for k in z.files}
    header = json.loads(str(entries["_header"]))
    header["checkpoint"]["rows_done"] = 300
    np.savez(ck, **dict(entries, _header=np.array(json.dumps(header))))
    with pytest.raises(ValueError, match=r"`checkpoint`.*ck\.npz.*checksum"):
        jacsens.sensitivity(seed_net, _batches(X, [100] * 3), chunk_size=64, checkpoint=ck)
    for cut in (0, 100, len(blob) // 2):
        ck.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=r"`checkpoint`.*ck\.npz.*intact"):
            jacsens.sensitivity(seed_net, _batches(X, [100] * 3), chunk_size=64, checkpoint=ck)
    ck.write_bytes(blob)
    _forge(ck, lambda h, a: h["checkpoint"].update(rows_done=300))
    with pytest.raises(ValueError, match="rows_done=300"):
        jacsens.sensitivity(seed_net, _batches(X, [100] * 3), chunk_size=64, checkpoint=ck)
    ck.write_bytes(blob)
    r = jacsens.sensitivity(seed_net, _batches(X, [100] * 3), chunk_size=64, checkpoint=ck)
    assert r.n == 300
    # a result file is not a checkpoint
    r.save(tmp_path / "r.npz")
    with pytest.raises(ValueError, match="not a checkpoint"):
        jacsens.sensitivity(seed_net, X, checkpoint=tmp_path / "r.npz")


def test_missing_folder_fails_before_any_work(tmp_path, lin_result):
    traced = []

    def f(x):
        traced.append(1)
        return jnp.sum(x)

    target = tmp_path / "nope" / "ck.npz"
    with pytest.raises(ValueError, match="checkpoint.*does not exist"):
        jacsens.sensitivity(f, np.zeros((10, 3)), checkpoint=target)
    assert traced == []
    with pytest.raises(ValueError, match="does not exist"):
        lin_result.save(target)


def test_stale_temporary_of_a_killed_save_is_removed(lin_result, tmp_path):
    stale = tmp_path / ".res.npz.99999999.0badcafe.tmp"  # a pid that does not run
    stale.write_bytes(b"half a file")
    lin_result.save(tmp_path / "res.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res.npz"]


def test_checkpoint_auto_chunk_size_and_mode_resume_bit_for_bit(seed_net, getkey, tmp_path):
    X = np.asarray(jax.random.normal(getkey(), (500, 52)))
    whole = jacsens.sensitivity(seed_net, X, chunk_size=64, mode="rev", progress=False)
    ck = tmp_path / "ck.npz"
    with pytest.raises(Interrupted):
        jacsens.sensitivity(
            seed_net,
            _batches(X, [100] * 5, 3),
            chunk_size=64,
            mode="rev",
            checkpoint=ck,
            checkpoint_every=1,
        )
    # chunk_size and mode "auto" adopt the saved ones
    r = jacsens.sensitivity(seed_net, _batches(X, [100] * 5), checkpoint=ck, progress=False)
    assert r.mode == "rev"
    for f in ("mean", "dgsm", "std", "std_se", "max_abs"):
        np.testing.assert_array_equal(getattr(r, f), getattr(whole, f))


# ------------------------------------------------------------------ data fingerprints


def test_fingerprint_sees_a_late_row_of_a_large_array(getkey, tmp_path, monkeypatch):
    from jacsens._sensitivity import _sources

    m = jacsens.MLP(3, (4,), 1, "tanh", key=getkey())
    X = np.asarray(jax.random.normal(getkey(), (5000, 3)))
    ck = tmp_path / "ck.npz"
    jacsens.sensitivity(m, X, chunk_size=1024, checkpoint=ck, progress=False)
    for row in (2049, 3333, 4998):  # beyond any "first 1024 / 2048 rows" shortcut
        X2 = X.copy()
        X2[row, 1] += 1e-3
        with pytest.raises(ValueError, match="its data"):
            jacsens.sensitivity(m, X2, chunk_size=1024, checkpoint=ck, progress=False)
    # arrays too large to hash whole: first/last rows and a strided sample
    monkeypatch.setattr(_sources, "_FULL_HASH_BYTES", 1024)
    monkeypatch.setattr(_sources, "_SAMPLE_ROWS", 100)
    digest = _sources.array_digest(X)
    assert digest.startswith("sampled")
    stride = int(digest[len("sampled") : digest.index(":")])
    for row in (4999, 4000 - 4000 % stride, stride * 40):
        X2 = X.copy()
        X2[row] += 1.0
        assert _sources.array_digest(X2) != digest, row
