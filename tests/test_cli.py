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
    assert summary["model"]["widths"] == [32, 32] and summary["model"]["in_size"] == 10
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
    # The saved model reproduces the reported test R² on the same split.
    model = jacsens.load(out / "model.jsns")
    assert isinstance(model, jacsens.MLP) and model.widths == (32, 32)


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
    assert cli.main([*argv, "--out", str(out)]) == 0
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


def test_bench_is_wired_to_run_bench(monkeypatch):
    from jacsens import _bench

    calls = []
    monkeypatch.setattr(_bench, "run_bench", lambda **kw: calls.append(kw) or {})
    assert cli.main(["bench", "--quick", "--out", "b.json"]) == 0
    assert cli.main(["bench"]) == 0
    assert calls == [{"quick": True, "out": "b.json"}, {"quick": False, "out": None}]


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
    cases = [
        (["analyze", "--data", str(tmp_path / "missing.csv"), "--target", "y"], "does not exist"),
        (["analyze", "--data", str(text), "--target", "y"], "not numeric"),
        (["analyze", "--data", str(data), "--target", "nope"], "target column 'nope'"),
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
        assert (
            cli.main([*argv, "--out", str(tmp_path / "o")] if argv[0] == "analyze" else argv) == 2
        )
        line = _error_line(capsys)
        assert match in line, (argv, line)
    assert not (tmp_path / "o" / "summary.json").exists()


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


def test_fewer_than_two_test_rows_is_an_error(tmp_path, capsys):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(rng.normal(size=(6, 3)), columns=["a", "b", "y"])
    path = tmp_path / "tiny.csv"
    frame.to_csv(path, index=False)
    for cmd in ("fit", "analyze"):
        argv = [cmd, "--data", str(path), "--target", "y", "--epochs", "1"]
        assert cli.main([*argv, "--out", str(tmp_path / cmd)]) == 2  # 0.2 * 6 -> 1 test row
        line = _error_line(capsys)
        assert "leaves 1 test row; at least 2 are needed for a test R²" in line
        assert cli.main([*argv, "--test-fraction", "0.34", "--out", str(tmp_path / cmd)]) == 0
        summary = json.loads((tmp_path / cmd / "summary.json").read_text())
        assert summary["training"]["n_test"] == 2 and np.isfinite(summary["metrics"]["test_r2"])
