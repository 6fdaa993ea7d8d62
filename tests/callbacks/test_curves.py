"""The end-of-training curves plot: written from the CSV log (all versions of a resumed run), also with TensorBoard, or off."""

from __future__ import annotations

from helpers import tiny_train_config
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from main.callbacks.curves import TrainingCurves, csv_log_files
from main.evaluation.plots import DPI, PANEL, TITLE_HEIGHT, read_metrics
from main.train_ae import build_trainer, train

QUICK = ["trainer.log_every_n_steps=1", "trainer.limit_val_batches=1"]


def test_a_resumed_run_plots_its_whole_history(tmp_path):
    train(tiny_train_config(tmp_path, *QUICK, "trainer.max_steps=6", "trainer.val_check_interval=3"))
    train(tiny_train_config(tmp_path, *QUICK, "trainer.max_steps=10", "trainer.val_check_interval=3", "resume=true"))
    png = tmp_path / "plots" / "training_curves.png"
    two_by_two = (2 * PANEL[0] * DPI, (2 * PANEL[1] + TITLE_HEIGHT) * DPI)  # train/loss, val/loss, val/bpd
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == two_by_two
    files = csv_log_files(CSVLogger(tmp_path, name="logs"))
    assert [f.parent.name for f in files] == ["version_0", "version_1"]
    assert [step for step, _ in read_metrics(files)["train/loss"]] == list(range(10))  # Lightning logs update k at step k - 1


def test_tensorboard_runs_keep_a_csv_log_and_get_the_image(tmp_path):
    train(tiny_train_config(tmp_path, *QUICK, "logger=tensorboard", "trainer.max_steps=4", "trainer.val_check_interval=4"))
    assert (tmp_path / "plots" / "training_curves.png").stat().st_size > 0
    assert (tmp_path / "csv_logs" / "version_0" / "metrics.csv").is_file()
    (events,) = {p.parent for p in (tmp_path / "logs").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    assert "training_curves" in accumulator.Reload().Tags()["images"]
    loggers = build_trainer(tiny_train_config(tmp_path / "other", "logger=tensorboard")).loggers
    assert [type(lg) for lg in loggers] == [TensorBoardLogger, CSVLogger]


def test_off_adds_neither_the_callback_nor_a_second_logger(tmp_path):
    trainer = build_trainer(tiny_train_config(tmp_path, "logger=tensorboard", "plots.training_curves=false"))
    assert not any(isinstance(c, TrainingCurves) for c in trainer.callbacks)
    assert [type(lg) for lg in trainer.loggers] == [TensorBoardLogger]


def test_a_run_with_nothing_to_plot_warns_instead_of_failing(tmp_path, recwarn):
    """Two updates, logged every 50, no validation: no loss values, and the run still ends normally."""
    last = train(tiny_train_config(tmp_path, "trainer.max_steps=2", "trainer.limit_val_batches=0"))
    assert last.is_file() and not (tmp_path / "plots").exists()
    assert any("no training curves" in str(w.message) for w in recwarn)
