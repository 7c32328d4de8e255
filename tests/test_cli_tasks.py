"""The CLI's tasks: classification (probability sensitivity per class), several targets,
--features/--drop, ensembles (auto size, rank stability), warnings, early stopping."""

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jacsens
from jacsens import cli


def _error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    return capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def blobs_csv(tmp_path_factory):
    """Three well-separated classes with text labels; feature `c` is pure noise."""
    rng = np.random.default_rng(0)
    n = 120
    label = rng.integers(0, 3, n)
    centres = np.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.0]])
    ab = centres[label] + rng.normal(size=(n, 2)) * 0.5
    frame = pd.DataFrame({"a": ab[:, 0], "b": ab[:, 1], "c": rng.normal(size=n)})
    frame["kind"] = np.array(["cat", "dog", "emu"])[label]
    path = tmp_path_factory.mktemp("blobs") / "blobs.csv"
    frame.to_csv(path, index=False)
    return path


def test_classification_report(blobs_csv, tmp_path, capsys):
    out = tmp_path / "rep"
    argv = ["analyze", "--data", str(blobs_csv), "--target", "kind", "--epochs", "60"]
    assert cli.main([*argv, "--ensemble", "3", "--lr", "1e-2", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "Test accuracy" in stdout and "recall per class" in stdout and "R²" not in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training"]["task"] == "classification"
    assert summary["training"]["classes"] == ["cat", "dog", "emu"]
    assert summary["model"]["class"] == "jacsens.Ensemble" and summary["model"]["size"] == 3
    # the saved ensemble reproduces the reported test accuracy (mean of member probabilities)
    model = jacsens.load(out / "model.jsns")
    data = jacsens.datasets.from_csv(blobs_csv, "kind", task="classification")
    k_split = jax.random.split(jax.random.key(0), 3)[0]
    _, test = jacsens.datasets.train_test_split(data, 0.2, key=k_split)
    probs = np.mean(
        [jax.vmap(jacsens.Probabilities(model.member(i)))(test.X) for i in range(3)], axis=0
    )
    acc = float(np.mean(np.argmax(probs, axis=1) == test.y))
    assert summary["metrics"]["test_accuracy"] == pytest.approx(acc, abs=1e-9)
    assert acc >= 0.9
    # one row per (class, feature); probabilities sum to 1, so Σ_c ∂p_c/∂x = 0
    frame = pd.read_csv(out / "sensitivity.csv")
    assert sorted(set(frame["output"])) == ["cat", "dog", "emu"]
    sums = frame.groupby("feature")["mean"].sum()
    np.testing.assert_allclose(sums, 0.0, atol=1e-6)
    # the noise feature is last in the aggregate ranking
    assert summary["sensitivity"]["ranking_by_mean_abs"][-1] == "c"
    assert set(summary["sensitivity"]["ranking_by_mean_abs_per_output"]) == {"cat", "dog", "emu"}
    assert "sensitivity_by_output.png" in os.listdir(out)
    assert "probability per" in summary["sensitivity"]["units"]


@pytest.fixture(scope="module")
def two_target_csv(tmp_path_factory):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 4))
    frame = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    frame["p"] = 2 * frame["a"] - frame["b"]
    frame["q"] = 0.5 * frame["c"]
    path = tmp_path_factory.mktemp("two") / "two.csv"
    frame.to_csv(path, index=False)
    return path


def test_two_targets_and_drop_with_an_exact_linear_model(two_target_csv, tmp_path, capsys):
    # a saved linear 3 -> 2 model on the raw columns a, b, c (d dropped)
    W = jnp.asarray([[2.0, -1.0, 0.0], [0.0, 0.0, 0.5]], jnp.float32)
    model = jacsens.MLP(3, (), 2, key=jax.random.key(0))
    model = jax.tree_util.tree_map(lambda x: x, model)
    import equinox as eqx

    model = eqx.tree_at(lambda m: m.layers[0].weight, model, W)
    model = eqx.tree_at(lambda m: m.layers[0].bias, model, jnp.zeros(2, jnp.float32))
    path = tmp_path / "lin.jsns"
    jacsens.save(path, model)
    out = tmp_path / "rep"
    argv = ["analyze", "--data", str(two_target_csv), "--target", "p,q", "--drop", "d"]
    assert cli.main([*argv, "--model", str(path), "--raw", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "per target: p 1.000, q 1.000" in stdout
    frame = pd.read_csv(out / "sensitivity.csv").set_index(["output", "feature"])
    np.testing.assert_allclose(frame.loc["p", "mean"].loc[["a", "b", "c"]], [2, -1, 0], atol=1e-6)
    np.testing.assert_allclose(frame.loc["q", "mean"].loc[["a", "b", "c"]], [0, 0, 0.5], atol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["features"] == ["a", "b", "c"]
    assert summary["sensitivity"]["aggregate"] == "RMS over 2 outputs"
    # RMS over outputs of |mean|: a: sqrt(4/2), b: sqrt(1/2), c: sqrt(0.25/2)
    assert summary["sensitivity"]["ranking_by_mean_abs"] == ["a", "b", "c"]


def test_features_and_errors(two_target_csv, tmp_path, capsys):
    base = ["analyze", "--data", str(two_target_csv), "--out", str(tmp_path / "r")]
    assert "not both" in _error(capsys, [*base, "--target", "p", "--features", "a", "--drop", "b"])
    assert "'zz'" in _error(capsys, [*base, "--target", "p", "--features", "a,zz"])
    assert "also --target" in _error(capsys, [*base, "--target", "p", "--features", "a,p"])
    err = _error(capsys, [*base, "--target", "p,q", "--task", "classification"])
    assert "one target column" in err
    assert "--features needs --data" in _error(capsys, ["analyze", "--features", "a"])


def test_features_choose_the_inputs_and_poor_fits_warn(tmp_path, capsys):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(80, 3)), columns=["a", "b", "c"])
    frame["noise"] = rng.normal(size=80)  # unrelated to the inputs
    data = tmp_path / "noise.csv"
    frame.to_csv(data, index=False)
    out = tmp_path / "rep"
    argv = ["analyze", "--data", str(data), "--target", "noise", "--features", "a,b"]
    assert cli.main([*argv, "--epochs", "5", "--ensemble", "2", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "Warning: poor test performance" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["features"] == ["a", "b"]
    assert any(w.startswith("poor test performance") for w in summary["warnings"])
    assert summary["metrics"]["test_r2"] < 0.1
    assert "Rank stability" in stdout and summary["sensitivity"]["ensemble"]["size"] == 2
    # two features: the column is top-1 (every feature is in a top 5 of 2)
    assert summary["sensitivity"]["ensemble"]["top_k"] == 1 and "top-1" in stdout
    shares = summary["sensitivity"]["ensemble"]["top_k_share"]
    assert sorted(shares) == ["a", "b"] and sum(shares.values()) == pytest.approx(1.0)


def test_early_stopping_and_weight_decay_are_recorded(two_target_csv, tmp_path, capsys):
    out = tmp_path / "fit"
    argv = ["fit", "--data", str(two_target_csv), "--target", "p", "--epochs", "400"]
    argv += ["--early-stopping", "3", "--weight-decay", "0.01", "--ensemble", "1"]
    assert cli.main([*argv, "--lr", "0.05", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    t = summary["training"]
    assert t["weight_decay"] == 0.01 and t["early_stopping"] == 3
    assert t["epochs_run"] < 400 and t["epochs_run"] == t["best_epoch"] + 1 + 3
    assert t["n_fit"] + round(0.15 * t["n_train"]) == t["n_train"]


def test_auto_ensemble_size_rule():
    args = argparse.Namespace(ensemble="auto", epochs=100)
    assert cli._ensemble_size(args, 1000, 1000)[0] == cli.AUTO_ENSEMBLE  # 3e9 FLOPs
    assert cli._ensemble_size(args, 100_000, 10_000)[0] == 1  # 3e12 FLOPs
    args.ensemble = 3
    assert cli._ensemble_size(args, 100_000, 10_000) == (3, "--ensemble")


def test_divergence_is_one_line_not_a_traceback(two_target_csv, tmp_path, capsys):
    argv = ["analyze", "--data", str(two_target_csv), "--target", "p", "--lr", "1e30"]
    argv += ["--activation", "relu", "--epochs", "3", "--ensemble", "2"]
    err = _error(capsys, [*argv, "--out", str(tmp_path / "r")])
    assert err.startswith("jacsens: error: training diverged in epoch 1") and "--lr" in err


def test_repeated_columns_are_refused(two_target_csv, tmp_path, capsys):
    base = ["analyze", "--data", str(two_target_csv), "--out", str(tmp_path / "r")]
    assert "--target names ['p'] more than once" in _error(capsys, [*base, "--target", "p,p"])
    err = _error(capsys, [*base, "--target", "p", "--features", "a,a"])
    assert "--features names ['a'] more than once" in err


def test_refit_model_reads_its_own_columns_and_class_codes(blobs_csv, tmp_path, capsys):
    """Re-analysing a fitted classifier: the recorded feature order and class codes are
    used, whatever order --features lists, and whatever labels the new file lacks."""
    fitted = tmp_path / "fit"
    argv = ["fit", "--data", str(blobs_csv), "--target", "kind", "--epochs", "40"]
    assert cli.main([*argv, "--ensemble", "1", "--lr", "1e-2", "--out", str(fitted)]) == 0
    capsys.readouterr()
    model = str(fitted / "model.jsns")
    scores = {}
    for name, features in (("same", None), ("reordered", "c,b,a")):
        out = tmp_path / name
        argv = ["analyze", "--data", str(blobs_csv), "--target", "kind", "--model", model]
        argv += ["--features", features] if features else []
        assert cli.main([*argv, "--out", str(out)]) == 0
        scores[name] = json.loads((out / "summary.json").read_text())["metrics"]
    assert scores["reordered"]["test_accuracy"] == scores["same"]["test_accuracy"] >= 0.9
    err = _error(capsys, [*argv[:-2], "--features", "a,b", "--out", str(tmp_path / "x")])
    assert "fitted on the features ['a', 'b', 'c']" in err
    # a file without the first class: the others keep their codes (dog = 1, emu = 2)
    frame = pd.read_csv(blobs_csv)
    part = tmp_path / "part.csv"
    frame[frame["kind"] != "cat"].to_csv(part, index=False)
    (tmp_path / "part_fit").mkdir()
    for f in ("model.jsns", "summary.json"):
        (tmp_path / "part_fit" / f).write_bytes((fitted / f).read_bytes())
    out = tmp_path / "part_rep"
    argv = ["analyze", "--data", str(part), "--target", "kind"]
    assert (
        cli.main([*argv, "--model", str(tmp_path / "part_fit" / "model.jsns"), "--out", str(out)])
        == 0
    )
    metrics = json.loads((out / "summary.json").read_text())["metrics"]
    assert set(metrics["all_recall"]) == {"cat", "dog", "emu"}
    assert metrics["all_recall"]["dog"] >= 0.9 and metrics["all_recall"]["emu"] >= 0.9


def test_one_output_model_is_not_taken_for_a_classifier(tmp_path, capsys):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(40, 2)), columns=["a", "b"])
    frame["y"] = (frame["a"] > 0).astype(int)  # two levels: auto reads classes
    data = tmp_path / "d.csv"
    frame.to_csv(data, index=False)
    path = tmp_path / "lone.jsns"
    jacsens.save(path, jacsens.MLP(2, (), "scalar", key=jax.random.key(0)))
    argv = ["analyze", "--data", str(data), "--target", "y", "--model", str(path)]
    err = _error(capsys, [*argv, "--out", str(tmp_path / "r")])
    assert "--task classification" in err and "--task regression" in err
    assert cli.main([*argv, "--task", "regression", "--out", str(tmp_path / "r2")]) == 0


def test_a_continuous_target_is_not_split_into_classes():
    frame = pd.DataFrame({"a": np.arange(20.0), "y": np.linspace(0, 1, 20)})
    with pytest.raises(ValueError, match="20 distinct values in 20 rows"):
        jacsens.datasets.from_frame(frame, "y", task="classification")
    data = jacsens.datasets.from_frame(
        frame.assign(y=np.where(frame["a"] > 9, "hi", "lo")),
        "y",
        task="classification",
        classes=["lo", "hi", "mid"],
    )
    assert data.class_names == ("lo", "hi", "mid") and data.y.tolist() == [0] * 10 + [1] * 10
    with pytest.raises(ValueError, match=r"label\(s\) \['hi'\]"):
        jacsens.datasets.from_frame(
            frame.assign(y=np.where(frame["a"] > 9, "hi", "lo")),
            "y",
            task="classification",
            classes=["lo"],
        )
