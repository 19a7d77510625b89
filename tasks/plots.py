"""Pictures of a run, drawn with matplotlib (Agg: no display needed).

- `curves_figure` / `write_curves`: training loss, the validation metrics and the learning rate against the optimizer
  step, read from the run's CSV log (`<run_dir>/metrics.csv`, and `resume_N/metrics.csv` of resumed fits). run.py
  writes `<run_dir>/curves.png` at the end of fit and gives wandb the same picture.
- `attention_figure`: one layer's attention, one panel per head, tokens on both axes (tasks/attention.py).
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

log = logging.getLogger(__name__)

Curve = list[tuple[int, float]]          # (optimizer step, value)


# ---------------------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------------------
def metric_files(run_dir: str | Path) -> list[Path]:
    """The run's CSV logs in the order they were written: metrics.csv, then resume_1/, resume_2/, ..."""
    run_dir = Path(run_dir)
    resumed = sorted(run_dir.glob("resume_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    return [p for p in [run_dir / "metrics.csv", *resumed] if p.is_file()]


def read_metrics(run_dir: str | Path) -> dict[str, Curve]:
    """{column: [(step, value), ...]} of every logged metric. A resumed fit restarts at its checkpoint's step, so
    each log replaces what the earlier ones logged from its first step on."""
    curves: dict[str, Curve] = {}
    for path in metric_files(run_dir):
        with path.open(newline="", encoding="utf-8") as f:
            rows = [row for row in csv.DictReader(f) if row.get("step")]
        if not rows:
            continue
        first = min(int(row["step"]) for row in rows)
        for name in curves:
            curves[name] = [(s, v) for s, v in curves[name] if s < first]
        for row in rows:
            for name, value in row.items():
                if name not in ("step", "epoch") and value not in ("", None):
                    curves.setdefault(name, []).append((int(row["step"]), float(value)))
    return {name: sorted(points) for name, points in curves.items() if points}


def _panels(curves: dict[str, Curve]) -> list[tuple[str, list[str]]]:
    """(title, metric names) of each panel: the losses together, every other metric alone, the learning rates."""
    losses = sorted(n for n in curves if n.split("/")[-1].startswith("loss"))
    rates = sorted(n for n in curves if n.startswith("lr-"))
    others = sorted(n for n in curves if n not in losses and n not in rates)
    panels = [("loss", losses)] if losses else []
    panels += [(name, [name]) for name in others]
    return panels + ([("learning rate", rates)] if rates else [])


def curves_figure(curves: dict[str, Curve], title: str = "") -> Figure:
    """One panel per panel of `_panels`, value against optimizer step. Learning-rate groups that follow the same
    schedule are drawn once, labelled by the first of them."""
    panels = _panels(curves)
    if not panels:
        raise ValueError("no metrics logged")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False, layout="constrained")
    for ax, (name, metrics) in zip(axes.flat, panels):
        drawn: list[Curve] = []
        for metric in metrics:
            points = curves[metric]
            if points in drawn:
                continue
            drawn.append(points)
            steps, values = zip(*points)
            few = len(points) <= 20                        # validation: a point per evaluation, mark each
            ax.plot(steps, values, marker="o" if few else None, markersize=3, linewidth=1.2,
                    label=metric.removeprefix("lr-"))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(drawn) > 1:
            ax.legend(fontsize=7)
    for ax in axes.flat[len(panels):]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def write_curves(run_dir: str | Path, loggers: Sequence = ()) -> Path | None:
    """Draw `<run_dir>/curves.png` from the run's CSV logs and log it to every logger that takes images (wandb).
    Never fails a finished fit: a problem is one warning line and None."""
    run_dir = Path(run_dir)
    path = run_dir / "curves.png"
    try:
        curves = read_metrics(run_dir)
        if not curves:
            log.info("curves.png not drawn: the run logged no metrics (shorter than log_every_n_steps)")
            return None
        fig = curves_figure(curves, title=f"{run_dir.parent.name}/{run_dir.name}")
        fig.savefig(path, dpi=80)
        plt.close(fig)
        for logger in loggers:
            if hasattr(logger, "log_image"):              # wandb
                logger.log_image(key="curves", images=[str(path)])
    except Exception as e:  # noqa: BLE001 - a picture is never worth a failed run
        log.warning("curves.png not written: %s: %s", type(e).__name__, " ".join(str(e).split())[:200])
        return None
    return path


# ---------------------------------------------------------------------------------------------------------
# Attention maps
# ---------------------------------------------------------------------------------------------------------
def token_label(token: str) -> str:
    """A token as an axis label: whitespace made visible, and "$" kept from starting matplotlib's mathtext."""
    shown = token.replace("\n", "\\n").replace("\t", "\\t")
    return "␣" if shown and not shown.strip() else shown.replace("$", r"\$")


def attention_figure(weights: np.ndarray, queries: Sequence[str], keys: Sequence[str], title: str,
                     heads: Sequence[int] | None = None) -> Figure:
    """weights: (H, T, S), row t is query t's distribution over the S keys -> a figure with one panel per head (a
    grid sharing its axes: queries down the left column, keys along the bottom row). `heads` names the panels
    (default 0..H-1)."""
    H, T, S = weights.shape
    heads = list(range(H)) if heads is None else list(heads)
    cols = min(H, 4)
    rows = math.ceil(H / cols)
    fontsize = max(4.0, min(8.0, 160 / max(T, S)))
    # inches: a cell per token, and margins for the longest labels (laid out here, not by a layout engine: fast)
    cell = max(0.12, fontsize / 50)
    label = max(len(token_label(t)) for t in [*queries, *keys]) * fontsize / 110 + 0.2
    panel_w, panel_h, gap = max(1.5, cell * S), max(1.5, cell * T), 0.35
    width = max(4.0, label + cols * panel_w + (cols - 1) * gap + 0.2)      # at least the title's width
    height = 0.6 + rows * panel_h + (rows - 1) * gap + label
    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, sharex=True, sharey=True)
    fig.subplots_adjust(left=label / width, right=1 - 0.2 / width, bottom=label / height, top=1 - 0.6 / height,
                        wspace=gap / panel_w, hspace=gap / panel_h)
    for ax, head, w in zip(axes.flat, heads, weights):
        ax.imshow(w, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_title(f"head {head}", fontsize=8, pad=2)
        ax.tick_params(length=0, labelsize=fontsize)
        ax.tick_params(axis="x", labelrotation=90)
    axes[0, 0].set_xticks(range(S), [token_label(t) for t in keys], rotation=90)
    axes[0, 0].set_yticks(range(T), [token_label(t) for t in queries])
    for ax in axes.flat[H:]:
        fig.delaxes(ax)
    for ax in axes.flat[max(0, H - cols):H]:          # the lowest panel of each column shows the keys
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(f"{title}  (dark 0 → bright 1)", fontsize=10)
    return fig
