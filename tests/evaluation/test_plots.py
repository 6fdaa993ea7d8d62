"""main/evaluation/plots.py: valid PNGs of the expected sizes whose data shows up, the joins of resumed CSV logs, and clear errors."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image, ImageColor

from main.evaluation.plots import (
    DPI,
    KL_SIZE,
    PALETTE,
    PANEL,
    SPEED_QUALITY_SIZE,
    TITLE_HEIGHT,
    plot_kl_per_group,
    plot_speed_quality,
    plot_training_curves,
    read_metrics,
    smooth,
)
from main.utils.errors import UserError

FIELDS = ["epoch", "step", "train/loss", "val/bpd", "val/loss"]


def write_metrics(path, rows: list[dict], fields=FIELDS):
    """A metrics.csv as Lightning's CSVLogger writes it: one wide header, empty cells where a row has no value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def training_rows(first: int, last: int, validate_every: int = 10) -> list[dict]:
    rows = []
    for step in range(first, last):
        rows.append({"epoch": 0, "step": step, "train/loss": 3.0 - step / 100})
        if step % validate_every == validate_every - 1:
            rows.append({"epoch": 0, "step": step, "val/loss": 2.5 - step / 200, "val/bpd": 4.0 - step / 100})
    return rows


def open_png(path, inches: tuple[float, float]) -> np.ndarray:
    """The RGB pixels of a valid, non-blank PNG of ``inches`` at the plots' DPI."""
    with Image.open(path) as image:
        image.verify()  # a truncated or malformed file raises here
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (round(inches[0] * DPI), round(inches[1] * DPI))
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1
    return pixels


def pixels_near(image: np.ndarray, color: str, tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` (per channel) of ``color``."""
    target = np.array(ImageColor.getrgb(color))
    return int((np.abs(image.astype(int) - target).max(-1) <= tolerance).sum())


def test_training_curves_draw_a_panel_per_logged_metric(tmp_path):
    out = plot_training_curves(write_metrics(tmp_path / "metrics.csv", training_rows(0, 100)), tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    image = open_png(out, (2 * PANEL[0], 2 * PANEL[1] + TITLE_HEIGHT))  # train/loss, val/loss, val/bpd: two rows of two columns
    assert pixels_near(image, PALETTE[0]) > 100  # the smoothed train loss
    assert pixels_near(image, PALETTE[1]) > 50 and pixels_near(image, PALETTE[2]) > 50  # val/loss, val/bpd

    train_only = [{"epoch": 0, "step": s, "train/loss": 1.0 / (s + 1)} for s in range(30)]
    out = plot_training_curves(write_metrics(tmp_path / "train.csv", train_only), tmp_path / "train.png")
    image = open_png(out, (PANEL[0], PANEL[1] + TITLE_HEIGHT))  # one panel
    assert pixels_near(image, PALETTE[1]) == 0


def test_a_resumed_runs_logs_are_joined_without_the_steps_it_redid(tmp_path):
    """version_0 logged steps 0..59 but was resumed from step 40: its rows from step 40 on were redone by version_1."""
    first = write_metrics(tmp_path / "version_0" / "metrics.csv", training_rows(0, 60))
    redone = [r | {"train/loss": 9.0} if "train/loss" in r else r for r in training_rows(40, 80)]
    second = write_metrics(tmp_path / "version_1" / "metrics.csv", redone)
    columns = read_metrics([first, second])
    steps = [step for step, _ in columns["train/loss"]]
    assert steps == list(range(80))
    assert {value for step, value in columns["train/loss"] if step >= 40} == {9.0}
    assert [step for step, _ in columns["val/loss"]] == [9, 19, 29, 39, 49, 59, 69, 79]


def test_nonfinite_values_and_empty_cells_are_skipped(tmp_path):
    rows = [{"step": step, "train/loss": text} for step, text in enumerate(["nan", "2.0", "", "inf"])]
    assert read_metrics(write_metrics(tmp_path / "m.csv", rows, ["step", "train/loss"]))["train/loss"] == [(1, 2.0)]


def test_missing_csv_or_no_loss_column_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="does not exist") as missing:
        plot_training_curves(tmp_path / "nope.csv", tmp_path / "out.png")
    no_loss = write_metrics(tmp_path / "m.csv", [{"step": 0, "train/lr": 0.1}], ["step", "train/lr"])
    with pytest.raises(UserError, match="no train/loss or val/loss") as wrong:
        plot_training_curves(no_loss, tmp_path / "out.png")
    assert all(len(str(e.value).splitlines()) == 1 for e in (missing, wrong))
    assert not (tmp_path / "out.png").exists()


def test_smoothing_keeps_a_constant_and_follows_a_step():
    assert smooth([2.0] * 50, window=10) == pytest.approx([2.0] * 50)  # debiased: no ramp up from zero
    assert smooth([1.0, 5.0, 3.0], window=1) == [1.0, 5.0, 3.0]
    stepped = smooth([0.0] * 20 + [1.0] * 80, window=5)
    assert stepped[19] == 0.0 and 0.0 < stepped[21] < 1.0 and stepped[-1] == pytest.approx(1.0, abs=1e-6)


def test_kl_bars_are_coloured_by_resolution_and_pale_when_inactive(tmp_path):
    resolutions = [1, 1, 4, 4, 8, 8]
    active = open_png(plot_kl_per_group([0.3, 0.2, 0.1, 0.05, 0.2, 0.1], resolutions, tmp_path / "kl.png"), KL_SIZE)
    inactive_1px = open_png(plot_kl_per_group([1e-6, 0.0, 0.1, 0.05, 0.2, 0.1], resolutions, tmp_path / "kl_off.png"), KL_SIZE)
    for i in range(3):  # one colour per resolution
        assert pixels_near(active, PALETTE[i]) > 1000
    assert pixels_near(inactive_1px, PALETTE[0]) < pixels_near(active, PALETTE[0]) / 10  # only the legend and outlines remain
    with pytest.raises(ValueError, match="one of each per group"):
        plot_kl_per_group([0.1, 0.2], [1], tmp_path / "bad.png")


def test_speed_quality_draws_a_line_per_sampler(tmp_path):
    points = [
        {"sampler": sampler, "steps": steps, "fid": 50 / steps + offset}
        for sampler, offset in [("ddpm", 20), ("ddim", 10)]
        for steps in (10, 25, 50, 100)
    ]
    image = open_png(plot_speed_quality(points, tmp_path / "sq.png", "fid"), SPEED_QUALITY_SIZE)
    assert pixels_near(image, PALETTE[0]) > 300 and pixels_near(image, PALETTE[1]) > 300 and pixels_near(image, PALETTE[2]) == 0
    with pytest.raises(UserError, match="no finite 'kid_mean' values"):
        plot_speed_quality(points, tmp_path / "none.png", "kid_mean")
