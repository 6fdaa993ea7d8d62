"""The sample-grid callback: every N steps a grid on disk and in TensorBoard, drawn in eval mode from the same noise."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from main.callbacks.sample_grid import SampleGrid


class FakeSystem(torch.nn.Module):
    """Stands in for a system with only `sample_images`: random uint8 images from the callback's generator, recording
    the mode and count it saw."""

    device = torch.device("cpu")

    def __init__(self):
        super().__init__()
        self.calls = []

    def sample_images(self, n: int, generator: torch.Generator) -> torch.Tensor:
        self.calls.append((self.training, n))
        return torch.randint(0, 256, (n, 3, 8, 8), generator=generator, dtype=torch.uint8)


class FakeRows(FakeSystem):
    """A system that lays its grid out itself: n images in one row."""

    def preview_grid(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        return self.sample_images(n, generator), n


def run_steps(callback: SampleGrid, system: FakeSystem, steps: list[int], loggers: list) -> None:
    for step in steps:
        callback.on_train_batch_end(SimpleNamespace(global_step=step, loggers=loggers), system, None, None, 0)


def test_grids_are_written_and_logged_every_n_steps_once_each(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tb")
    system = FakeSystem()
    callback = SampleGrid(tmp_path / "samples", every_n_steps=2, n=4)
    run_steps(callback, system, [0, 1, 2, 2, 3, 4], [logger])  # step 2 twice: an update was skipped
    logger.experiment.flush()

    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    assert system.calls == [(False, 4), (False, 4)] and system.training  # sampled in eval mode, then restored
    first, second = (tmp_path / "samples" / "step_0000002.png").read_bytes(), (tmp_path / "samples" / "step_0000004.png").read_bytes()
    assert first == second  # the same noise every time
    images = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload().Images("samples")
    with Image.open(tmp_path / "samples" / "step_0000002.png") as grid:
        assert [(event.step, event.width, event.height) for event in images] == [(2, *grid.size), (4, *grid.size)]


def test_every_n_steps_zero_draws_nothing(tmp_path):
    system = FakeSystem()
    run_steps(SampleGrid(tmp_path / "samples", every_n_steps=0), system, [0, 1, 2], [])
    assert not system.calls and not (tmp_path / "samples").exists()


def test_a_sampler_gets_a_square_grid_and_a_grid_preview_its_own_rows(tmp_path):
    sizes = {}
    for name, system in [("square", FakeSystem()), ("rows", FakeRows())]:
        run_steps(SampleGrid(tmp_path / name, every_n_steps=1, n=4), system, [1], [])
        with Image.open(tmp_path / name / "step_0000001.png") as grid:
            sizes[name] = grid.size
    assert sizes["square"][0] < sizes["rows"][0] and sizes["square"][1] > sizes["rows"][1]  # 2 x 2 against 4 x 1
