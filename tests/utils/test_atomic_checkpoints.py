"""Checkpoint writes are atomic: a save that dies half-way leaves the previous checkpoint loadable."""

from __future__ import annotations

import pytest
import torch

from main.utils.checkpoint import AtomicCheckpointIO


def test_a_save_interrupted_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1
    original_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")  # what a kill during torch.save would leave behind
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", original_save)
    kept = torch.load(path, weights_only=True)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.ones(3))
    io.save_checkpoint({"step": 3, "w": torch.zeros(3)}, path)  # the next save replaces the leftover partial file
    assert torch.load(path, weights_only=True)["step"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_training_writes_checkpoints_through_the_atomic_writer(tmp_path):
    from helpers import tiny_train_config

    from main.train_ae import build_trainer

    trainer = build_trainer(tiny_train_config(tmp_path))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
