"""Sampling shows its progress: the images drawn of those asked, on the first rank only."""

from __future__ import annotations

import torch

from main.evaluation.common import Shard, generate_to
from main.utils.image_io import start_staging


def draw(start: int, count: int) -> dict[str, torch.Tensor]:
    return {"samples": torch.zeros(count, 1, 8, 8, dtype=torch.uint8)}


def test_sampling_counts_the_images_drawn(tmp_path, capsys):
    generate_to({"samples": tmp_path / "samples"}, 10, 4, draw, overwrite=False)
    err = capsys.readouterr().err
    assert "samples: 100%" in err and "10/10" in err


def test_other_ranks_show_no_bar(tmp_path, capsys):
    start_staging(tmp_path / "samples")  # what rank 0 creates
    generate_to({"samples": tmp_path / "samples"}, 10, 4, draw, overwrite=False, shard=Shard(rank=1, world_size=2))
    assert "samples" not in capsys.readouterr().err
