"""The README's Python examples run, in order, as written, and print what the README shows.

Each block is run statement by statement with its printed output captured. A statement
*shows output* in the README when it is a `print(...)` with a trailing comment, or a bare
expression directly followed by comment lines (the printout, as for `explain`). Every such
statement has a check below comparing the captured output with what the README shows:
printed lines in order (whitespace-insensitive) where the README quotes them, numbers
against their closed forms or against the objects the example built, with the tolerance
stated in the check. A README statement that shows output without a check here (or a check
whose statement is gone) fails the test.
"""

import ast
import contextlib
import io
import math
import pathlib
import re

import jax
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _statements(block: str):
    """`(source, shown, code)` for each top-level statement of `block`: `shown` is the
    output the README shows for it (`None` if it shows none)."""
    tree = ast.parse(block)
    lines = block.splitlines()
    for i, node in enumerate(tree.body):
        source = ast.get_source_segment(block, node)
        end = tree.body[i + 1].lineno - 1 if i + 1 < len(tree.body) else len(lines)
        following = []
        for line in lines[node.end_lineno : end]:
            if not line.strip().startswith("#"):
                break
            following.append(line.strip()[1:].strip())
        # column offsets count UTF-8 bytes
        inline = lines[node.end_lineno - 1].encode()[node.end_col_offset :].decode().strip()
        is_expr = isinstance(node, ast.Expr)
        is_print = (
            is_expr
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", None) == "print"
        )
        shown = None
        if is_expr and following:
            shown = "\n".join(following)
        elif is_print and inline.startswith("#"):
            shown = inline[1:].strip()
        yield source, shown, compile(ast.Module([node], []), str(README), "exec")


def _norm(line: str) -> str:
    return " ".join(line.split())


def _floats(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"[-+]?\d+\.?\d*(?:[eE][-+]?\d+)?", text)]


# --------------------------------------------------------------------------- checks
# Each takes (printed output, what the README shows, the examples' namespace).


def _lines_in_order(out, shown, ns):
    """Every line the README quotes (`...` elides) is printed, in that order."""
    printed = [_norm(line) for line in out.splitlines()]
    pos = 0
    quoted = [_norm(line) for line in shown.splitlines() if line.strip() != "..."]
    assert quoted
    for line in quoted:
        assert line in printed[pos:], (line, out)
        pos = printed.index(line, pos) + 1


def _crosscheck(out, shown, ns):
    # README: "True, ~1e-10": passed, and the largest relative error within a factor 10
    assert shown.startswith("True, ~1e-10")
    passed, max_rel = out.split()
    assert passed == "True"
    assert 1e-11 <= float(max_rel) <= 1e-9
    assert float(max_rel) == ns["report"].max_rel


def _ae_cost(out, shown, ns):
    # README: a table of FLOPs, bytes and time per mode, then the order, ~18x fewer FLOPs
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if words and words[0] in ("rev", "fwd", "chain", "backprop"):
            rows[words[0]] = float(words[1])  # GFLOP
    header = _norm(out.splitlines()[0])
    assert header.startswith("mode GFLOP MB est. time"), out
    assert set(rows) == {"rev", "fwd", "chain", "backprop"}
    order = re.search(r"order of the products: (.*?\))\s{2,}", shown).group(1)
    assert f"order of the products: {order}" in [_norm(line) for line in out.splitlines()]
    claimed = float(re.search(r"~(\d+)x fewer FLOPs", shown).group(1))
    ratio = min(rows["rev"], rows["fwd"]) / rows["chain"]
    assert abs(ratio - claimed) <= 0.05 * claimed, ratio  # "~18x": within 5%


def _bneck_best(out, shown, ns):
    assert out.strip() == shown == "segments"


def _ranking(out, shown, ns):
    # README: feature names, most sensitive first (by mean |dy/dx|)
    res = ns["res"]
    names = ast.literal_eval(out.strip())
    top = np.argsort(-res.mean_abs[0], kind="stable")[:5]
    assert names == [res.feature_names[i] for i in top]
    assert list(res.mean_abs[0][top]) == sorted(res.mean_abs[0][top], reverse=True)


def _completeness(out, shown, ns):
    # README: completeness, sum(attr) - (F(x) - F(baseline)), for baseline 0
    model, X, ig = ns["model"], np.asarray(ns["X"][:8]), np.asarray(ns["ig"])
    gap = np.asarray(jax.vmap(model)(X)) - float(model(np.zeros(52, np.float32)))
    (printed,) = _floats(out)
    np.testing.assert_allclose(printed, np.abs(ig.sum(axis=1) - gap).max(), atol=1e-5)
    assert printed < 1e-4  # float32, 32 steps on a smooth model


def _eigenvalues(out, shown, ns):
    # README: λ₁ = E[g'²]‖a‖², the rest 0; g = sin, aᵀx ~ N(0, ‖a‖²): E[cos²] closed form
    act, a = ns["act"], np.asarray(ns["a"], np.float64)
    s2 = float(a @ a)
    lam1 = 0.5 * (1 + math.exp(-2 * s2)) * s2
    printed = _floats(out)
    np.testing.assert_allclose(printed[:4], act.eigenvalues, rtol=1e-6, atol=1e-12)
    assert abs(act.eigenvalues[0] - lam1) <= 0.02 * lam1  # 20,000 normal draws
    assert np.all(np.abs(act.eigenvalues[1:]) <= 1e-6 * lam1)


def _eigenvector(out, shown, ns):
    # README: ±a/‖a‖; the bootstrap's sin(angle) to the first direction
    act, a = ns["act"], np.asarray(ns["a"], np.float64)
    v = np.asarray(act.eigenvectors[:, 0], np.float64)
    assert abs(abs(v @ a) / np.linalg.norm(a) - 1) <= 1e-6
    printed = _floats(out)
    np.testing.assert_allclose(printed[:4], v, atol=1e-6)
    assert 0 <= printed[-1] <= 1e-4


def _ishigami(out, shown, ns):
    # README: exact ν₁ = (1 + π⁴/25 + π⁸/900)/2, ν₂ = 49/2 (and ν₃ = 0.08 π⁶/7)
    qres = ns["qres"]
    exact = np.array([(1 + math.pi**4 / 25 + math.pi**8 / 900) / 2, 49 / 2, 0.08 * math.pi**6 / 7])
    est, se = np.asarray(qres.dgsm[0]), np.asarray(qres.dgsm_se[0])
    np.testing.assert_allclose(_floats(out), np.r_[est, se], rtol=1e-6)
    assert np.all(np.abs(est - exact) <= 5 * se + 1e-6 * exact), (est, exact, se)


def _y_mean(out, shown, ns):
    # README: raw y = y * y_std + y_mean
    table, raw = ns["table"], ns["data"].to_frame()["y"].to_numpy(np.float64)
    std = table.standardisation
    (printed,) = _floats(out)
    np.testing.assert_allclose(printed, raw.mean(), rtol=1e-6)
    np.testing.assert_allclose(table.y * std["y_std"] + std["y_mean"], raw, rtol=1e-5, atol=1e-5)


def _iris_accuracy(out, shown, ns):
    # README: test accuracy ≥ 0.9, of the mean probability of the ensemble's members
    probs, test = ns["probs"], ns["test"]
    P = np.asarray(jax.vmap(probs.outputs)(test.X), np.float64).mean(axis=1)
    acc = float(np.mean(P.argmax(axis=1) == test.y))
    (printed,) = _floats(out)
    assert printed == float(f"{acc:.2f}") and acc >= 0.9, (out, acc)
    assert shown.startswith("≥ 0.9")


def _versicolor_top2(out, shown, ns):
    # README: the two petal measurements rank first for versicolor's probability
    cls = ns["cls"]
    names = ast.literal_eval(out.strip())
    assert names == cls.ranking(output="versicolor")[:2]
    assert sorted(names) == ["petal length (cm)", "petal width (cm)"]


def _zero_sum(out, shown, ns):
    # README: ~1e-8: Σ_c E[∂p_c/∂x_i] = 0 (probabilities sum to 1), float32 round-off
    (printed,) = _floats(out)
    assert shown.startswith("~1e-8")
    assert 0 <= printed <= 1e-6, printed


def _rank_stability(out, shown, ns):
    # README: each feature's share of members with it in their top 2, then top_agreement
    cls = ns["cls"]
    printed = _floats(out)
    share = cls.rank_stability(2)
    np.testing.assert_allclose(printed[:-1], share, atol=1e-8)
    assert printed[-1] == cls.top_agreement(2)
    assert share.sum() == 2 and set(share) <= {0, 0.25, 0.5, 0.75, 1}  # 4 members


CHECKS = {
    "jacsens.explain(model)": _lines_in_order,
    "print(report.passed, report.max_rel)": _crosscheck,
    "print(jacsens.jacobian_cost(ae, batch_size=256))": _ae_cost,
    "print(jacsens.jacobian_cost(bneck, Xb).best)": _bneck_best,
    "print(res.ranking()[:5])": _ranking,
    "print(abs(delta).max())": _completeness,
    "print(act.eigenvalues, act.eigenvalues_ci())": _eigenvalues,
    'print(act.eigenvectors[:, 0], act.subspace_distance()["high"][0])': _eigenvector,
    "print(qres.dgsm, qres.dgsm_se)": _ishigami,
    'print(table.standardisation["y_mean"])': _y_mean,
    'print(f"test accuracy {acc:.2f}")': _iris_accuracy,
    'print(cls.ranking(output="versicolor")[:2])': _versicolor_top2,
    'print(abs(sum(cls.values("mean", output=c) for c in train.class_names)).max())': _zero_sum,
    "print(cls.rank_stability(2), cls.top_agreement(2))": _rank_stability,
}


def test_statements_showing_output_are_found():
    block = "x = 1\nprint(x)  # 1\nprint(x)\nf(x)\n# shown\n# lines\n\ny = 2  # not output\n"
    found = [(src, shown) for src, shown, _ in _statements(block)]
    assert found == [("x = 1", None), ("print(x)", "1"), ("print(x)", None),
                     ("f(x)", "shown\nlines"), ("y = 2", None)]  # fmt: skip


def test_readme_python_blocks_run_and_print_what_it_shows(tmp_path, monkeypatch):
    if not README.exists():
        pytest.skip("README.md not found (installed package without sources)")
    blocks = _blocks()
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    shown_outputs = []
    # as a user runs them: JAX's defaults (float32, standard promotion), not the suite's
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
        for block in blocks:
            for source, shown, code in _statements(block):
                buffer = io.StringIO()
                with contextlib.redirect_stdout(buffer):
                    exec(code, namespace)
                if shown is not None:
                    shown_outputs.append((source, shown, buffer.getvalue()))
        assert sorted(src for src, _, _ in shown_outputs) == sorted(CHECKS)
        for source, shown, out in shown_outputs:
            CHECKS[source](out, shown, namespace)
    # The tour's claims, checked on the objects it built.
    assert namespace["J"].shape == (1000, 52)
    assert namespace["report"].passed
    assert namespace["norms"].shape == (1000,)
    assert namespace["res"].n == 100_000
    assert (tmp_path / "friedman.jsns").exists()
    assert namespace["Jb"].shape == (32, 128, 128)
    js = namespace["jacsens"]
    with jax.enable_x64(False), jax.numpy_dtype_promotion("standard"):
        assert js.jacobian_cost(namespace["bneck"], namespace["Xb"]).best == "segments"
