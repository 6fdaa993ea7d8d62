"""PNG charts with matplotlib: training curves, KL per latent group, speed against quality.

Figures use the object-oriented API on an Agg canvas: no display is needed, and no pyplot registry keeps figures alive,
so each one is freed when its function returns.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, MaxNLocator, NullLocator

from main.utils.errors import UserError

DPI = 100
PANEL = (5.5, 3.5)  # inches per panel of the training curves; halves of an inch are exact floats, so whole pixels at DPI
TITLE_HEIGHT = 0.5  # inches above the training curves' panels, for the figure title
KL_SIZE = (9.0, 4.5)
SPEED_QUALITY_SIZE = (8.0, 5.0)
PALETTE = [to_hex(color) for color in colormaps["tab10"].colors]
INACTIVE, REFERENCE = "#f2f2f2", "#444444"  # fill of inactive KL bars; threshold line
TRAIN_KEY = "train/loss"
VALIDATION_KEYS = ("val/loss", "val/bpd", "val/bpd_given_label", "fid")  # each logged one gets a panel, in this order


def _figure(size: tuple[float, float], layout: str | None = "constrained") -> Figure:
    figure = Figure(figsize=size, dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=DPI)  # explicit: a matplotlibrc's savefig.dpi would change the size
    return out_png


# ---------------------------------------------------------------- training curves


def read_metrics(metrics_csv: Path | Sequence[Path]) -> dict[str, list[tuple[int, float]]]:
    """Finite (step, value) pairs per column of Lightning CSVLogger files.

    Several files (the versions of a resumed run, oldest first) are joined: a file's rows at or after the first step of
    the next file are dropped, since the resumed run redid those steps from its checkpoint.
    """
    paths = [Path(metrics_csv)] if isinstance(metrics_csv, str | Path) else [Path(p) for p in metrics_csv]
    if not paths:
        raise UserError("no metrics.csv to plot: the run has not logged any metrics yet")
    tables = []
    for path in paths:
        if not path.is_file():
            raise UserError(f"metrics file '{path}' does not exist: pass the metrics.csv a CSV logger wrote (run_dir/logs/version_N/)")
        with path.open(newline="") as f:
            rows = [row for row in csv.DictReader(f) if row.get("step")]
        tables.append(rows)
    columns: dict[str, list[tuple[int, float]]] = {}
    for index, rows in enumerate(tables):
        later = [int(float(r["step"])) for table in tables[index + 1 :] for r in table]
        cutoff = min(later, default=math.inf)
        for row in rows:
            step = int(float(row["step"]))
            if step >= cutoff:
                continue
            for key, text in row.items():
                if key in ("step", "epoch") or not text:
                    continue
                value = float(text)
                if math.isfinite(value):
                    columns.setdefault(key, []).append((step, value))
    for values in columns.values():
        values.sort(key=lambda pair: pair[0])
    if TRAIN_KEY not in columns and "val/loss" not in columns:
        raise UserError(f"'{paths[-1]}' has no {TRAIN_KEY} or val/loss values: pass the metrics.csv of a training run")
    return columns


def smooth(values: Sequence[float], window: float) -> list[float]:
    """TensorBoard's debiased exponential moving average over about ``window`` points."""
    weight = 1 - 1 / max(window, 1.0)
    out, last = [], 0.0
    for i, value in enumerate(values):
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight ** (i + 1)))
    return out


def plot_training_curves(metrics_csv: Path | Sequence[Path], out_png: Path) -> Path:
    """Train loss per step (raw, faint; smoothed, dark) and each validation metric (VALIDATION_KEYS) per validation."""
    columns = read_metrics(metrics_csv)
    keys = [key for key in (TRAIN_KEY, *VALIDATION_KEYS) if key in columns]
    cols = min(2, len(keys))
    rows = math.ceil(len(keys) / cols)
    figure = _figure((PANEL[0] * cols, PANEL[1] * rows + TITLE_HEIGHT))
    figure.suptitle("training curves")
    panels = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, key in zip(panels, keys):
        steps, values = zip(*columns[key])
        if key == TRAIN_KEY:
            ax.plot(steps, values, color=PALETTE[0], alpha=0.3, linewidth=1, label="per step")
            ax.plot(steps, smooth(values, len(values) / 20), color=PALETTE[0], linewidth=2, label="smoothed")
            ax.legend()
        else:
            ax.plot(steps, values, color=PALETTE[1 + VALIDATION_KEYS.index(key)], linewidth=2, marker="o")
        ax.set(title=key, xlabel="step", ylabel=key)
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 20k rather than an offset of 1e4
        ax.grid(alpha=0.3)
    for ax in panels[len(keys) :]:
        ax.set_visible(False)
    return _save(figure, out_png)


# ---------------------------------------------------------------- KL per latent group


def plot_kl_per_group(kl_bits_per_dim: list[float], resolutions: list[int], out_png: Path, threshold: float = 1e-4) -> Path:
    """Bars of each latent group's KL (bits/dim), top group first, coloured by resolution; groups at or below
    ``threshold`` bits/dim are inactive (pale, outlined, marked "off"), and the threshold is drawn dashed.

    stage_one.py's val/active_groups counts a group active above 0.01 nats per image: threshold = 0.01 / (ln 2 * C * H * W).
    """
    if len(kl_bits_per_dim) != len(resolutions) or not kl_bits_per_dim:
        raise ValueError(f"{len(kl_bits_per_dim)} KL values for {len(resolutions)} resolutions: pass one of each per group")
    colors = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(sorted(set(resolutions)))}
    active = [kl > threshold for kl in kl_bits_per_dim]
    n = len(kl_bits_per_dim)
    figure = _figure(KL_SIZE)
    ax = figure.subplots()
    edges = [colors[r] for r in resolutions]
    faces = [color if on else INACTIVE for color, on in zip(edges, active)]
    ax.bar(range(n), [max(kl, 0.0) for kl in kl_bits_per_dim], width=0.8, color=faces, edgecolor=edges)
    for i, on in enumerate(active):
        if not on:
            ax.annotate("off", (i, 0), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", color="#888888", fontsize=8)
    ax.axhline(threshold, color=REFERENCE, linestyle="--", linewidth=1)
    ax.set_xlim(-0.6, n - 0.4)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=16, integer=True))
    ax.set(
        title=f"KL per latent group: {sum(active)} of {n} active (> {threshold:g} bits/dim)",
        xlabel="latent group (0 = top)",
        ylabel="KL (bits/dim)",
    )
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=color, edgecolor=color, label=f"{r} px") for r, color in colors.items()]
    handles.append(Patch(facecolor=INACTIVE, edgecolor="#888888", label="inactive"))
    handles.append(Line2D([], [], color=REFERENCE, linestyle="--", linewidth=1, label="threshold"))
    ax.legend(handles=handles)
    return _save(figure, out_png)


# ---------------------------------------------------------------- speed against quality


def plot_speed_quality(points: list[dict], out_png: Path, metric_name: str = "fid") -> Path:
    """``metric_name`` against the number of sampling steps (log axis), one line per sampler; points: {sampler, steps, <metric>}."""
    usable = [p for p in points if p.get(metric_name) is not None and math.isfinite(p[metric_name])]
    if not usable:
        raise UserError(f"no finite '{metric_name}' values to plot: compute it for at least one (sampler, steps) point")
    figure = _figure(SPEED_QUALITY_SIZE)
    ax = figure.subplots()
    for i, sampler in enumerate(dict.fromkeys(p["sampler"] for p in usable)):
        line = sorted((p["steps"], p[metric_name]) for p in usable if p["sampler"] == sampler)
        ax.plot(*zip(*line), color=PALETTE[i % len(PALETTE)], linewidth=2, marker="o", label=sampler)
    ax.set_xscale("log")
    steps = sorted({p["steps"] for p in usable})
    ax.set_xticks(steps, labels=[f"{s:g}" for s in steps])  # the step counts run, not powers of ten
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(title=f"{metric_name} against sampling steps", xlabel="sampling steps (log scale)", ylabel=metric_name)
    ax.grid(alpha=0.3)
    ax.legend(title="sampler")
    return _save(figure, out_png)


def plot_noisy_conditioning(table: list[dict], units: dict[str, str], out_png: Path) -> Path:
    """One panel per corruption (its own strength axis, labelled with ``units[kind]``): PSNR of the corrupted y
    and of the refined image against the corruption's strength."""
    kinds = list(dict.fromkeys(row["corruption"] for row in table))
    figure = _figure((4.2 * len(kinds), 3.7))
    figure.suptitle("PSNR to the clean test image against corruption strength")
    for axes, kind in zip(figure.subplots(1, len(kinds), squeeze=False, sharey=True)[0], kinds):
        rows = sorted((row for row in table if row["corruption"] == kind), key=lambda row: row["strength"])
        strengths = [row["strength"] for row in rows]
        axes.plot(strengths, [row["psnr_y"] for row in rows], marker="o", color=PALETTE[0], label="corrupted y")
        axes.plot(strengths, [row["psnr_refined"] for row in rows], marker="o", color=PALETTE[1], label="refined")
        axes.set(title=kind, xlabel=units[kind])
        axes.grid(alpha=0.3)
        axes.legend()
    figure.axes[0].set_ylabel("PSNR (dB)")
    return _save(figure, out_png)
