import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jacsens
from jacsens import cli

import _skeletons


def _r2_of(model, X, y) -> float:
    pred = np.asarray(jax.vmap(model)(jnp.asarray(X, jnp.float32)), np.float64).reshape(-1)
    y = np.asarray(y, np.float64)
    return float(1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("jacsens: error: ")
    return err[0]


def test_analyze_default_writes_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["analyze", "--epochs", "3", "--out", str(out), "--seed", "1"]) == 0
    stdout = capsys.readouterr().out
    assert "Test R²" in stdout and "rank" in stdout
    assert sorted(os.listdir(out)) == [
        "model.jsns",
        "sensitivity.csv",
        "sensitivity.png",
        "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["n_rows"] == 442 and summary["training"]["n_test"] == 88
    # the default: an ensemble of 5 (cheap here), each member a 10-32-32-1 MLP
    assert summary["model"]["class"] == "jacsens.Ensemble" and summary["model"]["size"] == 5
    assert summary["model"]["member"]["widths"] == [32, 32] and summary["model"]["in_size"] == 10
    assert summary["training"]["ensemble"] == 5 and "spread" in stdout and "top-5" in stdout
    assert np.isfinite(summary["metrics"]["test_r2"])
    assert sorted(summary["sensitivity"]["ranking_by_mean_abs"]) == sorted(
        jacsens.datasets.diabetes().feature_names
    )
    assert summary["timings"]["total_s"] > 0
    frame = pd.read_csv(out / "sensitivity.csv")
    assert len(frame) == 10
    for col in ["output", "feature", "mean", "mean_se", "mean_abs", "mean_abs_se", "dgsm"]:
        assert col in frame.columns
    # The printed table is ranked by mean |dy/dx| and agrees with the CSV.
    ranked = frame.sort_values("mean_abs", ascending=False)["feature"].tolist()
    assert ranked == summary["sensitivity"]["ranking_by_mean_abs"]
    table_rows = [ln.split() for ln in stdout.splitlines() if ln[:4].strip().isdigit()]
    assert [r[1] for r in table_rows] == ranked
    # The saved model reproduces the reported R² on the split of --seed 1 (the first of
    # three keys split from it), recomputed here in float64 from the bundled data.
    model = jacsens.load(out / "model.jsns")
    assert isinstance(model, jacsens.Ensemble) and model.member(0).widths == (32, 32)
    data = jacsens.datasets.diabetes()
    k_split = jax.random.split(jax.random.key(1), 3)[0]
    train, test = jacsens.datasets.train_test_split(data, 0.2, key=k_split)
    for part, key in ((test, "test_r2"), (train, "train_r2")):
        assert summary["metrics"][key] == pytest.approx(_r2_of(model, part.X, part.y), rel=1e-6)
    assert summary["metrics"]["test_r2"] != summary["metrics"]["train_r2"]
    assert summary["split"] == {
        "seed": 1,
        "test_fraction": 0.2,
        "n_rows": 442,
        "model_file": "model.jsns",
    }
    assert summary["data"]["standardisation"] == data.standardisation


@pytest.fixture
def linear_csv(tmp_path):
    """A CSV whose target is linear in the features, and a saved linear model of it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    w = np.array([3.0, -1.0, 0.25])
    frame = pd.DataFrame(X, columns=["a", "b", "c"])
    frame["y"] = X @ w + 2.0
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    model = jacsens.MLP(3, (), "scalar", key=jax.random.key(0), dtype=jnp.float32)
    model = jax.tree.map(lambda x: x, model)
    lin = model.layers[0]
    import equinox as eqx

    model = eqx.tree_at(
        lambda m: (m.layers[0].weight, m.layers[0].bias),
        model,
        (jnp.asarray(w[None, :], jnp.float32), jnp.asarray([2.0], jnp.float32)),
    )
    assert lin.weight.shape == (1, 3)
    model_path = tmp_path / "linear.jsns"
    jacsens.save(model_path, model)
    return path, model_path, w


def test_analyze_csv_with_saved_model_gives_exact_sensitivities(linear_csv, tmp_path, capsys):
    data, model_path, w = linear_csv
    out = tmp_path / "rep"
    args = ["analyze", "--data", str(data), "--target", "y", "--model", str(model_path)]
    assert cli.main([*args, "--raw", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    frame = pd.read_csv(out / "sensitivity.csv").set_index("feature")
    np.testing.assert_allclose(frame.loc[["a", "b", "c"], "mean"], w, rtol=1e-6)
    np.testing.assert_allclose(frame.loc[["a", "b", "c"], "mean_abs"], abs(w), rtol=1e-6)
    np.testing.assert_allclose(frame.loc[["a", "b", "c"], "dgsm"], w**2, rtol=1e-6)
    np.testing.assert_allclose(frame["std"], 0, atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    # No summary.json beside the model: its training rows are unknown, so R² is over all
    # rows and labelled so (no "test" R²).
    assert summary["metrics"]["r2_all_rows"] == pytest.approx(1.0, abs=1e-6)  # exact model
    assert "test_r2" not in summary["metrics"]
    assert summary["metrics"]["evaluated_on"].startswith("all rows (model fitted elsewhere")
    assert summary["sensitivity"]["ranking_by_mean_abs"] == ["a", "b", "c"]
    assert summary["training"]["fitted"] is False
    assert "model.jsns" not in os.listdir(out)  # nothing was fitted, nothing re-saved


def test_fit_csv_then_explain_and_check_the_model(linear_csv, tmp_path, capsys):
    data, _, _ = linear_csv
    out = tmp_path / "fitted"
    argv = ["fit", "--data", str(data), "--target", "y", "--hidden", "4", "--epochs", "2"]
    assert cli.main([*argv, "--ensemble", "1", "--out", str(out)]) == 0
    model = jacsens.load(out / "model.jsns")
    assert model.in_size == 3 and model.widths == (4,)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["standardisation"]["y_mean"] == pytest.approx(
        pd.read_csv(data)["y"].mean()
    )
    capsys.readouterr()
    assert cli.main(["explain", "--model", str(out / "model.jsns")]) == 0
    text = capsys.readouterr().out
    assert "diag(tanh'(z1))" in text and "4×3" in text
    # the costs are for the batch analyze will stream this model's 50 rows in
    assert "Example batch: 50 rows" in text and "Cost model at batch size 50:" in text
    assert cli.main(["check", "--model", str(out / "model.jsns"), "--batch", "2"]) == 0
    assert "passed" in capsys.readouterr().out


def test_explain_and_check_default_seed_net(capsys):
    assert cli.main(["explain"]) == 0
    text = capsys.readouterr().out
    assert "input (52,)" in text and "20×52" in text and "diag(tanh'(z2))" in text
    assert cli.main(["check", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "crosscheck passed" in out


def test_check_exits_1_on_disagreement(monkeypatch, capsys):
    real = jacsens.crosscheck

    def broken(model, X, **kw):
        return real(model, X, rtol=0.0, fd_rtol=0.0, **kw)

    monkeypatch.setattr(jacsens, "crosscheck", broken)
    assert cli.main(["check", "--batch", "1"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_bench_times_the_modes_and_writes_json(tmp_path, monkeypatch, capsys):
    from jacsens import _timing

    monkeypatch.setattr(_timing, "_nets", lambda quick: [("tiny", 6, (8,), 3, 4)])
    out = tmp_path / "sub" / "b.json"
    assert cli.main(["bench", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6-8-3" in text and "plain_rev" in text and f"results written to {out}" in text
    results = json.loads(out.read_text())
    (case,) = results["cases"]
    assert case["net"] == "6-8-3" and case["batch"] == 4 and case["errors"] == {}
    modes = {"rev", "fwd", "chain", "segments"}  # every mode auto chooses from
    assert set(case["median_s"]) == modes | {"auto", "plain_rev", "plain_fwd"}
    assert all(0 < t < 1 for t in case["median_s"].values())
    assert case["fastest"] in modes and case["auto_choice"] in modes
    assert results["meta"]["backend"] == jax.default_backend() and results["meta"]["quick"] is True
    assert cli.main(["bench", "--quick", "--out", str(tmp_path)]) == 2
    assert "is a folder" in _error_line(capsys)


def test_time_interleaved_measures_and_records_failures():
    import time

    from jacsens import _timing

    def sleepy():
        time.sleep(0.02)
        return jnp.zeros(())

    def boom():
        raise RuntimeError("simulated")

    calls = []

    def counted():
        calls.append(1)
        return jnp.zeros(())

    res = _timing.time_interleaved(
        {"sleepy": sleepy, "boom": boom, "counted": counted}, repeats=3, min_sample_s=0.0
    )
    assert res["boom"] == "RuntimeError: simulated"
    assert len(res["sleepy"]) == 3 and all(0.02 <= t < 0.2 for t in res["sleepy"])
    assert len(res["counted"]) == 3 and len(calls) == 2 + 3  # compile, probe, one per round
    with pytest.raises(ValueError, match="repeats"):
        _timing.time_interleaved({}, repeats=0)
    assert _timing.format_seconds(0.0015) == "1.5 ms" and _timing.format_seconds(None) == "-"


def test_bad_input_is_one_line_and_exit_2(tmp_path, linear_csv, capsys):
    data, model_path, _ = linear_csv
    text = tmp_path / "text.csv"
    text.write_text("a,b,y\n1,x,2\n2,y,3\n3,z,4\n4,w,5\n5,v,6\n")
    notes = tmp_path / "notes.jsns"
    notes.write_text("not a model\n")
    wide = tmp_path / "wide.jsns"
    jacsens.save(wide, jacsens.MLP(7, (), "scalar", key=jax.random.key(0)))
    multi = tmp_path / "multi.jsns"
    jacsens.save(multi, jacsens.MLP(3, (), 2, key=jax.random.key(0)))
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b,y\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    const = tmp_path / "const.csv"
    const.write_text("a,b,y\n" + "".join(f"{i},1,{i * i}\n" for i in range(10)))
    cases = [
        (["analyze", "--data", str(tmp_path / "missing.csv"), "--target", "y"], "does not exist"),
        (["analyze", "--data", str(text), "--target", "y"], "not numeric"),
        (["analyze", "--data", str(data), "--target", "nope"], "`target` column(s) ['nope']"),
        (["analyze", "--data", str(tmp_path), "--target", "y"], "is a folder; give a CSV"),
        (["analyze", "--data", str(header_only), "--target", "y"], "header but no data rows"),
        (["analyze", "--data", str(empty), "--target", "y"], "is empty"),
        (["analyze", "--data", str(const), "--target", "y"], "constant column(s) ['b']"),
        (["analyze", "--data", str(const), "--target", "y"], "pass --raw"),
        (["fit", "--data", str(data), "--target", "y", "--out", str(data)], "not a folder"),
        (["analyze", "--out", str(tmp_path / "no" / "such")], "does not exist"),
        (["analyze", "--model", str(tmp_path)], "is a folder; give a model file"),
        (["bench", "--out", str(tmp_path)], "--out"),
        (["analyze", "--data", str(data)], "--target"),
        (["analyze", "--target", "y"], "--data"),
        (["analyze", "--model", str(notes)], "not a jacsens model file"),
        (["analyze", "--model", str(wide)], "7"),
        (["analyze", "--data", str(data), "--target", "y", "--model", str(multi)], "one output"),
        (["analyze", "--model", str(tmp_path / "absent.jsns")], "does not exist"),
        (["analyze", "--hidden", "a,b"], "--hidden"),
        (["analyze", "--hidden", "4,-1"], "--hidden"),
        (["analyze", "--epochs", "0"], "--epochs"),
        (["analyze", "--test-fraction", "2"], "--test-fraction"),
        (["explain", "--model", str(notes)], "not a jacsens model file"),
        (["nonsense"], "invalid choice"),
    ]
    for argv, match in cases:
        if argv[0] == "analyze" and "--out" not in argv:
            argv = [*argv, "--out", str(tmp_path / "o")]
        assert cli.main(argv) == 2
        line = _error_line(capsys)
        assert match in line, (argv, line)
        assert "is has" not in line
    assert not (tmp_path / "o").exists()  # no empty report folder left behind


def test_subprocess_smoke(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    ok = subprocess.run(
        [sys.executable, "-m", "jacsens", "--version"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"jacsens {jacsens.__version__}"
    bad = subprocess.run(
        [sys.executable, "-m", "jacsens", "analyze", "--data", "absent.csv", "--target", "y"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip() == "jacsens: error: data file 'absent.csv' does not exist"
    assert "Traceback" not in bad.stderr


def test_analyze_without_fit_summary_says_r2_is_on_all_rows(linear_csv, tmp_path, capsys):
    data, model_path, _ = linear_csv
    argv = ["analyze", "--data", str(data), "--target", "y", "--model", str(model_path), "--raw"]
    assert cli.main([*argv, "--out", str(tmp_path / "rep")]) == 0
    stdout = capsys.readouterr().out
    assert "R² on all rows (model fitted elsewhere) = 1.000" in stdout
    assert "Test R²" not in stdout


def test_analyze_saved_model_reuses_its_split_and_standardisation(linear_csv, tmp_path, capsys):
    data, _, _ = linear_csv
    fitted = tmp_path / "fitted"
    common = ["--data", str(data), "--target", "y", "--hidden", "4", "--epochs", "3"]
    assert (
        cli.main(["fit", *common, "--seed", "3", "--test-fraction", "0.3", "--out", str(fitted)])
        == 0
    )
    fit_summary = json.loads((fitted / "summary.json").read_text())
    assert fit_summary["split"] == {
        "seed": 3,
        "test_fraction": 0.3,
        "n_rows": 50,
        "model_file": "model.jsns",
    }
    frame = pd.read_csv(data)
    capsys.readouterr()
    rep = tmp_path / "rep"
    argv = ["analyze", "--data", str(data), "--target", "y", "--model", str(fitted / "model.jsns")]
    # another --seed, --test-fraction or --raw on the command line changes neither the
    # split nor the standardisation: those of the fit are reused
    more = ["--seed", "0", "--test-fraction", "0.5", "--raw", "--out", str(rep)]
    assert cli.main([*argv, *more]) == 0
    stdout = capsys.readouterr().out
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["metrics"]["test_r2"] == pytest.approx(
        fit_summary["metrics"]["test_r2"], abs=1e-12
    )
    assert summary["metrics"]["train_r2"] == pytest.approx(
        fit_summary["metrics"]["train_r2"], abs=1e-12
    )
    assert summary["training"]["n_test"] == 15 and summary["training"]["n_train"] == 35
    assert summary["data"]["standardisation"] == fit_summary["data"]["standardisation"]
    assert summary["split"]["seed"] == 3
    assert f"Test R² = {summary['metrics']['test_r2']:.3f}" in stdout
    assert "split the model was fitted on" in stdout and "standardisation as saved" in stdout

    # Same columns, other rows: the saved standardisation is applied (not the new file's
    # own), but the split is unknown, so R² is over all rows.
    other = frame.iloc[:40].copy()
    other["y"] = other["y"] * 10.0  # its own mean and std differ from the fitted data's
    other_path = tmp_path / "other.csv"
    other.to_csv(other_path, index=False)
    argv2 = ["analyze", "--data", str(other_path), "--target", "y"]
    assert (
        cli.main([*argv2, "--model", str(fitted / "model.jsns"), "--out", str(tmp_path / "o2")])
        == 0
    )
    s2 = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert s2["data"]["standardisation"] == fit_summary["data"]["standardisation"]
    assert "r2_all_rows" in s2["metrics"] and "test_r2" not in s2["metrics"]
    # the R² reported is that of the model's predictions under the saved standardisation
    st = fit_summary["data"]["standardisation"]
    model = jacsens.load(fitted / "model.jsns")
    Xs = (other[["a", "b", "c"]].to_numpy() - st["x_mean"]) / st["x_std"]
    ys = (other["y"].to_numpy() - st["y_mean"]) / st["y_std"]
    pred = np.asarray(jax.vmap(model)(jnp.asarray(Xs, jnp.float32))).reshape(-1)
    r2 = 1 - np.sum((ys - pred) ** 2) / np.sum((ys - ys.mean()) ** 2)
    assert s2["metrics"]["r2_all_rows"] == pytest.approx(r2, rel=1e-5)


@pytest.mark.parametrize("n_rows", [1, 5, 6])
def test_too_few_rows_is_one_consistent_error(tmp_path, capsys, n_rows):
    """1, 5 and 6 rows fail for the same reason, with the same count of rows needed (8 at
    --test-fraction 0.2: 7 rows round to 1 test row, 8 to 2)."""
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(n_rows, 3)), columns=["a", "b", "y"])
    path = tmp_path / "tiny.csv"
    frame.to_csv(path, index=False)
    for cmd in ("fit", "analyze"):
        argv = [cmd, "--data", str(path), "--target", "y", "--epochs", "1"]
        assert cli.main([*argv, "--out", str(tmp_path / cmd)]) == 2
        line = _error_line(capsys)
        assert f"has {n_rows} data row(s)" in line
        assert "at least 2 test rows" in line and "at least 8 rows at this --test-fraction" in line
        assert not (tmp_path / cmd).exists()


def test_fewer_than_two_test_rows_is_an_error(tmp_path, capsys):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(6, 3)), columns=["a", "b", "y"])
    path = tmp_path / "tiny.csv"
    frame.to_csv(path, index=False)
    for cmd in ("fit", "analyze"):
        argv = [cmd, "--data", str(path), "--target", "y", "--epochs", "1"]
        assert cli.main([*argv, "--out", str(tmp_path / cmd)]) == 2  # 0.2 * 6 -> 1 test row
        line = _error_line(capsys)
        assert "leaves 1 test row(s) and 5 training row(s)" in line
        assert cli.main([*argv, "--test-fraction", "0.34", "--out", str(tmp_path / cmd)]) == 0
        summary = json.loads((tmp_path / cmd / "summary.json").read_text())
        assert summary["training"]["n_test"] == 2 and np.isfinite(summary["metrics"]["test_r2"])


def test_report_is_replaced_as_a_whole(linear_csv, tmp_path, monkeypatch, capsys):
    data, model_path, _ = linear_csv
    out = tmp_path / "rep"
    argv = ["analyze", "--data", str(data), "--target", "y", "--hidden", "3", "--epochs", "2"]
    assert cli.main([*argv, "--out", str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["model.jsns", "sensitivity.csv", "sensitivity.png", "summary.json"]

    # A failure while the new report is written (after some of its files are on disk)
    # leaves the old report as it was, and no temporary folder.
    import jacsens as js

    def failing_save(path, model):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(js, "save", failing_save)
    assert cli.main([*argv, "--seed", "5", "--out", str(out), "--quiet"]) == 2
    assert "disk full" in _error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == sorted(["data.csv", "linear.jsns", "rep"])
    # ... and into a new folder: nothing at all is left.
    assert cli.main([*argv, "--out", str(tmp_path / "new"), "--quiet"]) == 2
    capsys.readouterr()
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()

    # A successful run replaces every file (a report from a loaded model has no model file).
    assert cli.main([*argv[:5], "--model", str(model_path), "--raw", "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["sensitivity.csv", "sensitivity.png", "summary.json"]
    capsys.readouterr()

    # A folder with other files is not replaced; --model inside --out is refused.
    (out / "notes.txt").write_text("mine")
    assert cli.main([*argv, "--out", str(out)]) == 2
    assert "holds files jacsens did not write" in _error_line(capsys)
    fitted = tmp_path / "fitted"
    assert cli.main(["fit", *argv[1:], "--out", str(fitted), "--quiet"]) == 0
    inside = ["analyze", *argv[1:5], "--model", str(fitted / "model.jsns"), "--out", str(fitted)]
    assert cli.main(inside) == 2
    assert "inside --out" in _error_line(capsys)
    assert (fitted / "model.jsns").exists()


@pytest.mark.parametrize("raw", [True, False])
def test_csv_data_are_float32_and_standardised_like_float64(linear_csv, raw):
    import argparse

    path, _, _ = linear_csv
    args = argparse.Namespace(data=str(path), target="y", raw=raw, test_fraction=0.2, model=None)
    data, source, reused = cli._load_data(args)
    assert data.X.dtype == data.y.dtype == np.float32 and not reused
    assert source == str(path.resolve())
    values = pd.read_csv(path).to_numpy(np.float64)
    if not raw:
        values = (values - values.mean(axis=0)) / values.std(axis=0)
    np.testing.assert_allclose(data.X, values[:, :3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(data.y, values[:, 3], rtol=1e-6, atol=1e-6)
    assert (data.standardisation is None) == raw


SKELETONS = os.path.join(os.path.dirname(__file__), "_skeletons.py")


@pytest.fixture
def conv_files(tmp_path):
    """A conv net saved with its input shape, and the same without."""
    model = _skeletons.ConvNet(jax.random.key(3), jnp.float32)
    with_shape, without = tmp_path / "conv.jsns", tmp_path / "bare.jsns"
    jacsens.save(with_shape, model, input_shape=_skeletons.CONV_INPUT)
    jacsens.save(without, model)
    return model, with_shape, without


def test_explain_check_bench_any_model_with_a_skeleton(conv_files, tmp_path, capsys):
    model, path, bare = conv_files
    by_path = f"{SKELETONS}:conv_factory"
    for skeleton in (by_path, "_skeletons:ConvNet"):  # a file, or an importable module
        assert cli.main(["explain", "--model", str(path), "--skeleton", skeleton]) == 0
        text = capsys.readouterr().out
        assert "Model: ConvNet, input (1, 8, 8), output (3,)" in text
        assert "Cost model at batch size 1:" in text and "Cheapest bracketing" in text
    # The example batch is the one asked for; the text is jacsens.explain's on that batch.
    argv = ["explain", "--model", str(bare), "--skeleton", by_path, "--input-shape", "1,8,8"]
    assert cli.main([*argv, "--batch-size", "6"]) == 0
    text = capsys.readouterr().out
    X = jnp.zeros((6, *_skeletons.CONV_INPUT), jnp.float32)
    assert text == jacsens.explain(model, X, file=False)
    assert "Cost model at batch size 6:" in text

    assert cli.main(["check", "--model", str(path), "--skeleton", by_path, "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "crosscheck passed" in out and "input_jacobian" in out

    bench_out = tmp_path / "b.json"
    argv = ["bench", "--model", str(path), "--skeleton", by_path, "--quick"]
    assert cli.main([*argv, "--batch-size", "3", "--out", str(bench_out)]) == 0
    assert "conv.jsns (1, 8, 8)" in capsys.readouterr().out
    (case,) = json.loads(bench_out.read_text())["cases"]
    assert case["batch"] == 3 and case["auto_choice"] in ("rev", "fwd", "segments")
    assert all(0 < case["median_s"][m] < 1 for m in ("rev", "fwd", "plain_rev", "auto"))
    assert "chain" in case["errors"]  # a conv net has no layer chain: said, not hidden


def test_any_model_cli_errors_are_one_line(conv_files, tmp_path, capsys):
    _, path, bare = conv_files
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no')\n")
    sk = f"{SKELETONS}:conv_factory"
    cases = [
        (["explain", "--model", str(path)], "holds a _skeletons.ConvNet, not an MLP"),
        (["explain", "--model", str(bare), "--skeleton", sk], "records no input shape"),
        (
            ["check", "--model", str(path), "--skeleton", sk, "--input-shape", "8,8"],
            "disagrees with the input shape (1, 8, 8)",
        ),
        (["explain", "--model", str(path), "--skeleton", "conv_factory"], "MODULE:CALLABLE"),
        (["explain", "--model", str(path), "--skeleton", "no_such_mod:f"], "cannot import"),
        (["explain", "--model", str(path), "--skeleton", "x/absent.py:f"], "does not exist"),
        (["explain", "--model", str(path), "--skeleton", f"{broken}:f"], "RuntimeError: no"),
        (["explain", "--model", str(path), "--skeleton", f"{SKELETONS}:nope"], "has no 'nope'"),
        (
            ["explain", "--model", str(path), "--skeleton", f"{SKELETONS}:CONV_INPUT"],
            "is not callable",
        ),
        (
            ["explain", "--model", str(path), "--skeleton", f"{SKELETONS}:residual_factory"],
            "does not match the model in",
        ),
        (
            ["explain", "--model", str(path), "--skeleton", f"{SKELETONS}:no_arguments"],
            "called as like(key)",
        ),
        (["explain", "--input-shape", "1,8,8"], "go with --model"),
        (["explain", "--model", str(path), "--input-shape", "1,x"], "--input-shape"),
        (["analyze", "--model", str(path), "--out", str(tmp_path / "o")], "analyze works on MLP"),
    ]
    for argv, match in cases:
        assert cli.main(argv) == 2, argv
        line = _error_line(capsys)
        assert match in line, (argv, line)
    line_wrong = [c for c in cases if "residual_factory" in c[0][-1]][0][0]
    cli.main(line_wrong)
    assert f"--skeleton '{SKELETONS}:residual_factory' does not match" in _error_line(capsys)
