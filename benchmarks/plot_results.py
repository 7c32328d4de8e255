"""Plots of the Jacobian-mode benchmark: time per mode, and the cost model beside it.

- `<stem>-nets.png`: time of every mode on the named networks (seed, MNIST-shaped,
  bottleneck autoencoder, tall, wide), from a `jacobian_modes.py` result file.
- `<stem>-grid.png`: for each input width, time of rev / fwd / chain against the output
  width, measured (solid) and the cost model's roofline estimate (dashed), from a
  `cost_model.py` evaluation file.

    python benchmarks/plot_results.py --modes RESULTS.json --costmodel EVALUATION.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {
    "rev": "tab:blue",
    "fwd": "tab:orange",
    "chain": "tab:green",
    "auto": "tab:red",
    "backprop": "tab:purple",
    "plain_rev": "tab:cyan",
    "plain_fwd": "tab:olive",
}


def _device(meta: dict) -> str:
    return f"{meta['backend']} ({meta['device_kind']}, {meta['cpu_count']} CPUs)"


def plot_nets(results: dict, path: Path) -> Path:
    """Grouped bars: one group per named network, one bar per mode (log time)."""
    cases = [c for c in results["cases"] if not c["name"].startswith("grid") and c["timings"]]
    modes = list(COLOURS)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(modes)
    for j, mode in enumerate(modes):
        xs, ys = [], []
        for i, c in enumerate(cases):
            t = c["timings"].get(mode)
            if t and t["ok"]:
                xs.append(i + (j - len(modes) / 2 + 0.5) * width)
                ys.append(t["median_s"] * 1e3)
        ax.bar(xs, ys, width, label=mode, color=COLOURS[mode])
    ax.set_yscale("log")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels([f"{c['net']}\nB={c['batch']}" for c in cases], fontsize=8)
    ax.set_ylabel("time per batch (ms, median)")
    ax.set_title(f"input_jacobian modes — {_device(results['meta'])}; missing bar: skipped")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grid(evaluation: dict, meta: dict, path: Path, depth_hidden: int = 2) -> Path | None:
    """Per input width: time vs output width, measured (solid) and estimated (dashed)."""
    rows = [c for c in evaluation["cases"] if c.get("name") == f"grid{depth_hidden}"]
    if not rows:
        return None
    ins = sorted({int(c["net"].split("-")[0]) for c in rows})
    fig, axes = plt.subplots(1, len(ins), figsize=(3.6 * len(ins), 3.6), sharey=True)
    axes = [axes] if len(ins) == 1 else axes
    for ax, n_in in zip(axes, ins, strict=True):
        sub = sorted(
            (c for c in rows if int(c["net"].split("-")[0]) == n_in),
            key=lambda c: int(c["net"].split("-")[-1]),
        )
        outs = [int(c["net"].split("-")[-1]) for c in sub]
        for mode in ("rev", "fwd", "chain"):
            meas = [c["measured_median_s"].get(mode) for c in sub]
            pts = [(o, m / c["batch"] * 1e6) for o, m, c in zip(outs, meas, sub, strict=True) if m]
            if pts:
                ax.plot(*zip(*pts, strict=True), "o-", color=COLOURS[mode], label=f"{mode}")
            pred = [c["predicted_s"][mode] / c["batch"] * 1e6 for c in sub]
            ax.plot(outs, pred, "--", color=COLOURS[mode], alpha=0.6, label=f"{mode} (model)")
        for o, c in zip(outs, sub, strict=True):
            ax.annotate(
                c["new_choice"][0],
                (o, 0.03),
                xycoords=("data", "axes fraction"),
                fontsize=8,
                ha="center",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"input width {n_in}", fontsize=10)
        ax.set_xlabel("output width")
    axes[0].set_ylabel("µs per sample")
    axes[-1].legend(fontsize=7)
    fig.suptitle(
        f"{'-'.join(['in'] + ['256'] * depth_hidden + ['out'])}: measured (solid) vs cost model "
        f"(dashed); letters: auto's pick — {_device(meta)}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", type=Path, help="a jacobian_modes.py result file")
    parser.add_argument("--costmodel", type=Path, help="a cost_model.py evaluation file")
    parser.add_argument("--grid-source", type=Path, help="result file the evaluation came from")
    args = parser.parse_args(argv)
    written = []
    if args.modes:
        results = json.loads(args.modes.read_text())
        written.append(plot_nets(results, args.modes.with_name(args.modes.stem + "-nets.png")))
    if args.costmodel:
        evaluation = json.loads(args.costmodel.read_text())
        source = args.grid_source or args.costmodel.with_name(evaluation["source"])
        meta = json.loads(source.read_text())["meta"]
        for depth in (2, 3):
            stem = args.costmodel.stem.removesuffix("-costmodel")
            path = args.costmodel.with_name(f"{stem}-grid{depth}.png")
            if plot_grid(evaluation, meta, path, depth) is not None:
                written.append(path)
    for p in written:
        print(f"wrote {p}")
    return written


if __name__ == "__main__":
    main()
