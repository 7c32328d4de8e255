"""Classification and ensembles: per-class probability sensitivity on scikit-learn's wine,
iris and breast_cancer, the cost of an ensemble of 8 against one model, and how stable
the feature ranking is across members and seeds.

1. **Per-class sensitivity.** Each data set is split 80/20 (fixed seed), the features are
   standardised with the training rows' constants (`datasets.from_frame`, class labels
   kept as `int32`), an MLP `n-32-32-C` is fitted with `loss="cross_entropy"`, and its
   test accuracy, log-loss and per-class recall are recorded. `jacsens.sensitivity` of
   `jacsens.Probabilities(model)` on every row gives, per class `c` and feature `i`,
   `mean |∂p_c/∂x_i|` (per standard deviation of the feature); the top 3 features per
   class and for the aggregate (root mean square over classes) are listed.
2. **Ensemble cost.** On breast_cancer (MLP 30-32-32-2), `fit(..., ensemble=8)` (one
   `vmap` over the members) against `fit(...)` of one model, same epochs and batch size,
   timed interleaved by `harness.time_fns` (median of 3 rounds; the first call, which
   compiles, reported apart).
3. **Rank stability.** The ensemble's `EnsembleSensitivity` on breast_cancer: the share of
   the 8 members that put each feature in their top 5, `top_agreement`, and the spread
   between members beside the within-data standard error; and single models fitted with
   seeds 0..4, whose top features change with the seed.

    python benchmarks/classification.py [--out PATH]

Writes `benchmarks/results/<device>-<date>-classification.json` and prints the tables.
"""

from __future__ import annotations

import argparse
import os
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jacsens
from jacsens import datasets

import harness

HIDDEN = (32, 32)
EPOCHS = 100
BATCH = 32
LR = 1e-3
ENSEMBLE = 8
SEEDS = (0, 1, 2, 3, 4)
# one optimiser object for every fit: `fit`'s compiled epoch is cached on it
OPTIMIZER = optax.adam(LR)


def load(name: str) -> tuple[datasets.Dataset, datasets.Dataset]:
    """`(train, test)` of a bundled scikit-learn classification data set, split 80/20 by
    a fixed key; features standardised with the training rows' constants."""
    import sklearn.datasets

    raw = getattr(sklearn.datasets, f"load_{name}")(as_frame=True)
    frame = raw.frame.copy()
    frame["class"] = np.asarray(raw.target_names)[frame.pop("target").to_numpy()]
    (train_f,), (test_f,) = datasets.train_test_split((frame,), 0.2, key=jax.random.key(0))
    train = datasets.from_frame(train_f, "class", task="classification")
    test = datasets.from_frame(
        test_f, "class", task="classification", standardise=train.standardisation
    )
    if test.class_names != train.class_names:
        raise RuntimeError(f"{name}: a class is missing from one part of the split.")
    return train, test


def fit(train: datasets.Dataset, seed: int, ensemble: int | None = None):
    model = jacsens.MLP(
        train.n_features, HIDDEN, len(train.class_names), "tanh", key=jax.random.key(seed)
    )
    model, _ = jacsens.fit(
        model,
        train.X,
        train.y,
        loss="cross_entropy",
        optimizer=OPTIMIZER,
        epochs=EPOCHS,
        batch_size=BATCH,
        key=jax.random.key(1000 + seed),
        ensemble=ensemble,
        progress=False,
    )
    return model


def metrics(probs: np.ndarray, y: np.ndarray, class_names) -> dict:
    """Accuracy, log-loss and per-class recall of predicted probabilities `(N, C)`."""
    pred = probs.argmax(axis=1)
    p_true = np.clip(probs[np.arange(len(y)), y], 1e-15, 1.0)
    return {
        "accuracy": float(np.mean(pred == y)),
        "log_loss": float(-np.mean(np.log(p_true))),
        "recall": {c: float(np.mean(pred[y == k] == k)) for k, c in enumerate(class_names)},
        "n_test": len(y),
    }


def predict(model, X) -> np.ndarray:
    return np.asarray(jax.vmap(jacsens.Probabilities(model))(jnp.asarray(X)), np.float64)


def top(values: np.ndarray, names, k: int = 3) -> list[list]:
    order = np.argsort(-values, kind="stable")[:k]
    return [[names[i], float(values[i])] for i in order]


def probability_sensitivity(model, train, X):
    """Sensitivity of each class probability of `model` over the rows `X`."""
    return jacsens.sensitivity(
        jacsens.Probabilities(model),
        X,
        feature_names=train.feature_names,
        output_names=train.class_names,
        progress=False,
    )


def per_class(name: str) -> dict:
    train, test = load(name)
    t0 = time.perf_counter()
    model = fit(train, seed=0)
    fit_s = time.perf_counter() - t0
    X_all = np.concatenate([train.X, test.X])
    res = probability_sensitivity(model, train, X_all)
    zero_sum = float(np.max(np.abs(res.mean.sum(axis=0))))
    return {
        "data": name,
        "rows": {"train": len(train), "test": len(test)},
        "n_features": train.n_features,
        "classes": list(train.class_names),
        "model": f"{train.n_features}-{'-'.join(map(str, HIDDEN))}-{len(train.class_names)}",
        "fit_s_with_compile": fit_s,
        "test": metrics(predict(model, test.X), test.y, train.class_names),
        "train_accuracy": metrics(predict(model, train.X), train.y, train.class_names)["accuracy"],
        "statistic": "mean |dp_c/dx_i| per sd of x_i, over train+test rows",
        "top3_per_class": {
            c: top(res.values("mean_abs", output=c), res.feature_names) for c in res.output_names
        },
        "top3_aggregate_rms": top(res.values("mean_abs"), res.feature_names),
        "max_abs_sum_over_classes_of_mean": zero_sum,
    }


def ensemble_cost(train: datasets.Dataset) -> dict:
    def one():
        return eqx.filter(fit(train, seed=0), eqx.is_array)

    def eight():
        return eqx.filter(fit(train, seed=0, ensemble=ENSEMBLE), eqx.is_array)

    jax.clear_caches()  # the first calls below compile (earlier fits compiled `one` already)
    t = harness.time_fns({"single": (one, ()), f"ensemble{ENSEMBLE}": (eight, ())}, repeats=3)
    single, ens = t["single"], t[f"ensemble{ENSEMBLE}"]
    return {
        "data": "breast_cancer",
        "model": f"{train.n_features}-{'-'.join(map(str, HIDDEN))}-2",
        "epochs": EPOCHS,
        "batch_size": BATCH,
        "train_rows": len(train),
        "members": ENSEMBLE,
        "ratio_ensemble_over_single": harness.paired_ratio(ens, single),
        "ratio_of_medians": ens.median_s / single.median_s,
        "eight_single_fits_s": ENSEMBLE * single.median_s,
        "first_call_s": {"single": single.first_s, "ensemble": ens.first_s},
        "compile_s_estimate": {
            "single": single.first_s - single.median_s,
            "ensemble": ens.first_s - ens.median_s,
            "how": "first call (trace, compile, run) minus the median run",
        },
        "timings": {k: v.to_dict() for k, v in t.items()},
    }


def rank_stability(train: datasets.Dataset, test: datasets.Dataset) -> dict:
    ens = fit(train, seed=0, ensemble=ENSEMBLE)
    probs = jacsens.Ensemble(jacsens.Probabilities(ens.members), ens.size)
    X_all = np.concatenate([train.X, test.X])
    es = jacsens.sensitivity(
        probs,
        X_all,
        feature_names=train.feature_names,
        output_names=train.class_names,
        progress=False,
    )
    cls = "malignant"  # two classes: |∂p_benign/∂x| = |∂p_malignant/∂x|, one table
    frame = es.ranked_frame(output=cls, k=5)
    member_acc = [
        metrics(predict(ens.member(i), test.X), test.y, train.class_names)["accuracy"]
        for i in range(ENSEMBLE)
    ]
    mean_p = np.asarray(jax.vmap(probs)(jnp.asarray(test.X)), np.float64)
    members_top = [es.feature_names[int(r._order("mean_abs", cls)[0])] for r in es.members]
    singles = []
    for seed in SEEDS:
        model = fit(train, seed=seed)
        r = probability_sensitivity(model, train, X_all)
        v, se = r.values("mean_abs", cls), r.se("mean_abs", cls)
        order = np.argsort(-v, kind="stable")
        singles.append(
            {
                "seed": seed,
                "test_accuracy": metrics(predict(model, test.X), test.y, train.class_names)[
                    "accuracy"
                ],
                "top3": [[r.feature_names[i], float(v[i]), float(se[i])] for i in order[:3]],
            }
        )
    share = es.rank_stability(5, cls)
    ratio = es.between_sd("mean_abs", cls) / es.within_se("mean_abs", cls)
    top10 = frame.head(10)
    return {
        "data": "breast_cancer",
        "class": cls,
        "members": ENSEMBLE,
        "member_test_accuracy": member_acc,
        "ensemble_mean_probability_test": metrics(mean_p, test.y, train.class_names),
        "top_agreement": es.top_agreement(1, cls),
        "members_top_feature": members_top,
        "top5_share": {
            n: float(x)
            for n, x in sorted(zip(es.feature_names, share, strict=True), key=lambda t: -t[1])
            if x
        },
        "ranked_top10": [
            {
                "feature": row.feature,
                "mean_abs": float(row.mean_abs),
                "between_sd": float(row.mean_abs_between_sd),
                "within_se": float(row.mean_abs_within_se),
                "top5_share": float(row.top5_share),
            }
            for row in top10.itertuples()
        ],
        "between_sd_over_within_se": {
            "median": float(np.median(ratio)),
            "top10_median": float(
                np.median(ratio[[es.feature_names.index(f) for f in top10.feature]])
            ),
            "max": float(np.max(ratio)),
        },
        "single_models": singles,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="JSON path (default benchmarks/results/...)")
    args = p.parse_args(argv)
    meta = harness.metadata()

    sens = [per_class(name) for name in ("wine", "iris", "breast_cancer")]
    print("Per-class probability sensitivity (mean |dp_c/dx| per sd of x), test metrics")
    for s in sens:
        t = s["test"]
        recall = ", ".join(f"{c} {r:.2f}" for c, r in t["recall"].items())
        print(
            f"\n{s['data']} ({s['model']}, {s['rows']['train']}/{s['rows']['test']} rows): "
            f"accuracy {t['accuracy']:.3f}, log-loss {t['log_loss']:.3f}, recall: {recall}"
        )
        tables = [*s["top3_per_class"].items(), ("RMS over classes", s["top3_aggregate_rms"])]
        rows = [
            {"output": c, "top 3": ", ".join(f"{f} {v:.3f}" for f, v in tops)} for c, tops in tables
        ]
        print(harness.format_table(rows, ["output", "top 3"]))

    train, test = load("breast_cancer")
    cost = ensemble_cost(train)
    print(
        f"\nEnsemble cost on breast_cancer ({cost['model']}, {EPOCHS} epochs, batch {BATCH}): "
        f"one model {harness.format_seconds(cost['timings']['single']['median_s'])}, "
        f"{ENSEMBLE} members "
        f"{harness.format_seconds(cost['timings'][f'ensemble{ENSEMBLE}']['median_s'])}: "
        f"{cost['ratio_ensemble_over_single']:.2f}x (paired median of 3; compile "
        f"{harness.format_seconds(cost['compile_s_estimate']['single'])} / "
        f"{harness.format_seconds(cost['compile_s_estimate']['ensemble'])})"
    )

    stab = rank_stability(train, test)
    print(
        f"\nRank stability on breast_cancer, class {stab['class']!r}, {ENSEMBLE} members "
        f"(test accuracy {min(stab['member_test_accuracy']):.3f}.."
        f"{max(stab['member_test_accuracy']):.3f}; mean probability "
        f"{stab['ensemble_mean_probability_test']['accuracy']:.3f}); "
        f"top_agreement {stab['top_agreement']:.2f}"
    )
    print(
        harness.format_table(
            [
                {
                    "feature": r["feature"],
                    "mean_abs": f"{r['mean_abs']:.4f}",
                    "between_sd": f"{r['between_sd']:.4f}",
                    "within_se": f"{r['within_se']:.4f}",
                    "top5_share": f"{r['top5_share']:.2f}",
                }
                for r in stab["ranked_top10"]
            ],
            ["feature", "mean_abs", "between_sd", "within_se", "top5_share"],
        )
    )
    b = stab["between_sd_over_within_se"]
    print(
        f"between-member sd / within-data se: median {b['median']:.2f} (top 10: "
        f"{b['top10_median']:.2f}, max {b['max']:.2f})"
    )
    print("single models by seed (top 3 by mean |dp/dx| ± se of that one model):")
    for s in stab["single_models"]:
        tops = ", ".join(f"{f} {v:.3f}±{se:.3f}" for f, v, se in s["top3"])
        print(f"  seed {s['seed']}: accuracy {s['test_accuracy']:.3f}; {tops}")

    data = {
        "meta": meta,
        # other jobs on a shared machine slow both sides of the interleaved ratio alike,
        # but not the compile times
        "load_average_1_5_15min_at_end": list(os.getloadavg()),
        "settings": {
            "hidden": list(HIDDEN),
            "activation": "tanh",
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "optimizer": f"adam({LR})",
            "loss": "cross_entropy",
            "split": "80/20, jax.random.key(0); features standardised with the train rows",
            "dtype": "float32",
        },
        "per_class_sensitivity": sens,
        "ensemble_cost": cost,
        "rank_stability": stab,
    }
    path = args.out or harness.default_path("classification", meta)
    harness.write_json(data, path)
    print(f"\nwritten {path}")
    return data


if __name__ == "__main__":
    main()
