"""PNG charts drawn with Pillow (matplotlib is not a dependency): training curves, KL per latent group, speed against quality.

Each chart is drawn at twice its size and scaled down, which smooths lines and text without an anti-aliasing backend.
"""

from __future__ import annotations

import csv
import functools
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from main.utils.errors import UserError

SCALE = 2  # drawn at SCALE x the output size, then downsampled
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
GRID, AXIS, TEXT, FAINT = "#e6e6e6", "#444444", "#222222", "#b8cfe6"
PANEL = (560, 340)  # one panel of the training curves
TRAIN_KEY = "train/loss"
VALIDATION_KEYS = ("val/loss", "val/bpd", "fid")  # each logged one gets a panel, in this order


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size * SCALE)


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 times a power of ten) spanning [lo, hi]."""
    if not hi > lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 times powers of ten within [lo, hi] (lo > 0)."""
    ticks = [m * 10**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    return [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]


def tick_label(value: float) -> str:
    if abs(value) >= 10_000 and float(value).is_integer():
        return f"{value / 1000:g}k"
    return f"{value:.4g}"


class Chart:
    """A white canvas in output pixels; ``panel`` adds axes in a box of it; ``save`` scales down and writes a PNG."""

    def __init__(self, width: int, height: int, title: str | None = None):
        self.size = (width, height)
        self.image = Image.new("RGB", (width * SCALE, height * SCALE), "white")
        self.draw = ImageDraw.Draw(self.image)
        if title:
            self.draw.text((width * SCALE // 2, 8 * SCALE), title, fill=TEXT, font=_font(16), anchor="ma")

    def panel(self, box: tuple[int, int, int, int], xlim, ylim, title="", xlabel="", ylabel="", log_x=False, xticks=None) -> Axes:
        return Axes(self, box, xlim, ylim, title, xlabel, ylabel, log_x, xticks)

    def save(self, out_png: Path) -> Path:
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        self.image.resize(self.size, Image.Resampling.LANCZOS).save(out_png)
        return out_png


class Axes:
    """A plotting area: frame, grid, ticks, labels; maps data to pixels (x optionally logarithmic)."""

    def __init__(self, chart: Chart, box, xlim, ylim, title, xlabel, ylabel, log_x=False, xticks=None):
        self.chart, self.draw, self.log_x = chart, chart.draw, log_x
        left, top, right, bottom = (v * SCALE for v in box)
        self.frame = (left + 70 * SCALE, top + 30 * SCALE, right - 12 * SCALE, bottom - 46 * SCALE)
        yticks = nice_ticks(*ylim)
        self.ylim = (yticks[0], yticks[-1])
        if xticks is None:
            xticks = log_ticks(*xlim) if log_x else nice_ticks(*xlim)
            xlim = xlim if log_x else (xticks[0], xticks[-1])
        self.xlim = xlim
        x0, y0, x1, y1 = self.frame
        font = _font(11)
        for t in yticks:
            _, py = self.to_px(self.xlim[0], t)
            self.draw.line([(x0, py), (x1, py)], fill=GRID, width=SCALE)
            self.draw.text((x0 - 6 * SCALE, py), tick_label(t), fill=TEXT, font=font, anchor="rm")
        for t in xticks:
            px, _ = self.to_px(t, self.ylim[0])
            self.draw.line([(px, y0), (px, y1)], fill=GRID, width=SCALE)
            self.draw.line([(px, y1), (px, y1 + 4 * SCALE)], fill=AXIS, width=SCALE)
            self.draw.text((px, y1 + 6 * SCALE), tick_label(t), fill=TEXT, font=font, anchor="ma")
        self.draw.rectangle(self.frame, outline=AXIS, width=SCALE)
        self.draw.text(((x0 + x1) // 2, top + 8 * SCALE), title, fill=TEXT, font=_font(13), anchor="ma")
        self.draw.text(((x0 + x1) // 2, bottom - 6 * SCALE), xlabel, fill=TEXT, font=_font(12), anchor="md")
        self._vertical_text(ylabel, left + 12 * SCALE, (y0 + y1) // 2)

    def _vertical_text(self, text: str, x: int, y: int) -> None:
        font = _font(12)
        width, height = int(self.draw.textlength(text, font=font)) + 4, 16 * SCALE
        label = Image.new("RGBA", (width, height), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((2, height // 2), text, fill=TEXT, font=font, anchor="lm")
        label = label.rotate(90, expand=True)
        self.chart.image.paste(label, (x - label.width // 2, y - label.height // 2), label)

    def to_px(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.frame
        if self.log_x:
            fx = (math.log(x) - math.log(self.xlim[0])) / (math.log(self.xlim[1]) - math.log(self.xlim[0]))
        else:
            fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    def line(self, xs, ys, color: str, width: float = 2, markers: bool = False) -> None:
        points = [self.to_px(x, y) for x, y in zip(xs, ys)]
        if len(points) > 1:
            self.draw.line(points, fill=color, width=round(width * SCALE), joint="curve")
        if markers or len(points) == 1:
            r = 3.5 * SCALE
            for px, py in points:
                self.draw.ellipse((px - r, py - r, px + r, py + r), fill=color)

    def hline(self, y: float, color: str, dash: int = 6) -> None:
        x0, _, x1, _ = self.frame
        _, py = self.to_px(self.xlim[0], y)
        for start in range(int(x0), int(x1), 2 * dash * SCALE):
            self.draw.line([(start, py), (min(start + dash * SCALE, x1), py)], fill=color, width=SCALE)

    def bar(self, x: float, height: float, width: float, fill: str, outline: str) -> None:
        (left, top), (right, base) = self.to_px(x - width / 2, height), self.to_px(x + width / 2, self.ylim[0])
        self.draw.rectangle((left, min(top, base), right, base), fill=fill, outline=outline, width=SCALE)

    def text(self, x: float, y: float, text: str, color: str) -> None:
        """Small text centred just above the data point (x, y)."""
        px, py = self.to_px(x, y)
        self.draw.text((px, py - 3 * SCALE), text, fill=color, font=_font(10), anchor="md")

    def legend(self, entries: list[tuple[str, str]]) -> None:
        """Colour swatches and labels in the top-right corner of the frame."""
        font, row = _font(11), 16 * SCALE
        width = max(int(self.draw.textlength(label, font=font)) for label, _ in entries) + 30 * SCALE
        x1, y0 = self.frame[2] - 6 * SCALE, self.frame[1] + 6 * SCALE
        self.draw.rectangle((x1 - width, y0, x1, y0 + row * len(entries) + 4 * SCALE), fill="white", outline=GRID, width=SCALE)
        for i, (label, color) in enumerate(entries):
            y = y0 + 4 * SCALE + i * row + row // 2
            self.draw.rectangle((x1 - width + 6 * SCALE, y - 4 * SCALE, x1 - width + 18 * SCALE, y + 4 * SCALE), fill=color, outline=AXIS)
            self.draw.text((x1 - width + 24 * SCALE, y), label, fill=TEXT, font=font, anchor="lm")


def _limits(values: Sequence[float]) -> tuple[float, float]:
    return min(values), max(values)


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
    """Train loss per step (raw, faint; smoothed, dark) and each validation metric (val/loss, val/bpd, fid) per validation."""
    columns = read_metrics(metrics_csv)
    panels = [key for key in (TRAIN_KEY, *VALIDATION_KEYS) if key in columns]
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    chart = Chart(PANEL[0] * cols, PANEL[1] * rows + 30, "training curves")
    for i, key in enumerate(panels):
        steps, values = zip(*columns[key])
        left, top = (i % cols) * PANEL[0], 30 + (i // cols) * PANEL[1]
        ax = chart.panel((left, top, left + PANEL[0], top + PANEL[1]), _limits(steps), _limits(values), key, "step", key)
        if key == TRAIN_KEY:
            ax.line(steps, values, FAINT, width=1)
            ax.line(steps, smooth(values, len(values) / 20), PALETTE[0])
            ax.legend([("per step", FAINT), ("smoothed", PALETTE[0])])
        else:
            ax.line(steps, values, PALETTE[1 + VALIDATION_KEYS.index(key)], markers=True)
    return chart.save(out_png)


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
    title = f"KL per latent group: {sum(active)} of {n} active (> {threshold:g} bits/dim)"
    chart = Chart(900, 450)
    step = max(1, math.ceil(n / 16))
    ticks = list(range(0, n, step))
    ylim = (0.0, max(max(kl_bits_per_dim), threshold))
    ax = chart.panel((0, 0, 900, 450), (-0.6, n - 0.4), ylim, title, "latent group (0 = top)", "KL (bits/dim)", xticks=ticks)
    for i, (kl, r, on) in enumerate(zip(kl_bits_per_dim, resolutions, active)):
        color = colors[r]
        ax.bar(i, max(kl, 0.0), 0.8, fill=color if on else "#f2f2f2", outline=color)
        if not on:
            ax.text(i, 0.0, "off", "#888888")
    ax.hline(threshold, AXIS)
    ax.legend([(f"{r} px", c) for r, c in colors.items()] + [("inactive", "#f2f2f2")])
    return chart.save(out_png)


# ---------------------------------------------------------------- speed against quality


def plot_speed_quality(points: list[dict], out_png: Path, metric_name: str = "fid") -> Path:
    """``metric_name`` against the number of sampling steps (log axis), one line per sampler; points: {sampler, steps, <metric>}."""
    usable = [p for p in points if p.get(metric_name) is not None and math.isfinite(p[metric_name])]
    if not usable:
        raise UserError(f"no finite '{metric_name}' values to plot: compute it for at least one (sampler, steps) point")
    samplers = list(dict.fromkeys(p["sampler"] for p in usable))
    steps = [p["steps"] for p in usable]
    chart = Chart(800, 500)
    xlim, ylim = (min(steps) / 1.25, max(steps) * 1.25), _limits([p[metric_name] for p in usable])
    title = f"{metric_name} against sampling steps"
    ax = chart.panel((0, 0, 800, 500), xlim, ylim, title, "sampling steps", metric_name, log_x=True, xticks=sorted(set(steps)))
    for i, sampler in enumerate(samplers):
        line = sorted((p["steps"], p[metric_name]) for p in usable if p["sampler"] == sampler)
        ax.line(*zip(*line), PALETTE[i % len(PALETTE)], markers=True)
    ax.legend([(s, PALETTE[i % len(PALETTE)]) for i, s in enumerate(samplers)])
    return chart.save(out_png)
