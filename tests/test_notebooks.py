"""Execute the notebooks in `notebooks/` at small sizes (JACSENS_NB_QUICK=1).

Each notebook asserts its own numbers (closed forms, consistency of statistics, accuracy);
this test fails if any cell raises, and if a figure a cell draws is not shown: the kernel
runs matplotlib's inline backend, as Jupyter does, and every cell must produce exactly one
PNG per figure it makes.
"""

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_notebooks_are_present_and_stripped():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_seed_derivations",
        "02_diabetes_sensitivity",
        "03_digits_saliency",
        "04_forward_vs_reverse",
        "05_classification_ensembles",
    ]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path):
    monkeypatch.setenv("JACSENS_NB_QUICK", "1")
    # Jupyter's own backend (a user's MPLBACKEND=Agg would hide pyplot figures)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert errors == []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            shown = sum("image/png" in out.get("data", {}) for out in cell.outputs)
            assert shown == figures_drawn(cell.source), (path.name, i, cell.source)


# The calls that make a figure: jacsens' plotting API (a `SensitivityResult.plot`,
# `History.plot`, any `jacsens.plot` function) and pyplot's figure constructors.
_FIGURE_CALLS = re.compile(
    r"\b(?:result|r|res|history)\.plot\(|\bplot\.(?:sensitivity_\w+|attribution_map|"
    r"loss_curves|plot_sensitivity)\(|\bplt\.(?:subplots|figure)\("
)


def figures_drawn(source: str) -> int:
    return len(_FIGURE_CALLS.findall(source))


def test_figure_calls_are_counted():
    assert figures_drawn('result.plot(kind="bar")\nhistory.plot();') == 2
    assert figures_drawn("fig, axes = plt.subplots(1, 2)\nax.plot(x, y)") == 1
    assert figures_drawn("plot.attribution_map(maps, shape=(8, 8))") == 1
    assert figures_drawn("ax.plot(x)\nprint(result.ranking())") == 0
