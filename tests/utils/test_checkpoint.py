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
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # the partial file is gone (a SIGKILL would leave it)
    io.save_checkpoint({"step": 3, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["step"] == 3


def test_training_writes_checkpoints_through_the_atomic_writer(tmp_path):
    from helpers import tiny_train_config

    from main.train_ae import build_trainer

    trainer = build_trainer(tiny_train_config(tmp_path))
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_lightning_resume_reads_through_the_safe_loader_whatever_the_environment(tmp_path, monkeypatch):
    """trainer.fit(ckpt_path=...) loads with the strategy's CheckpointIO; torch.load with weights_only unset would
    unpickle anything under TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1."""
    from helpers import crafted_checkpoint, user_error

    marker = tmp_path / "ran"
    crafted = crafted_checkpoint(tmp_path / "last.ckpt", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    message = user_error(AtomicCheckpointIO().load_checkpoint, crafted)
    assert str(crafted) in message and "loading it could run code" in message and "io.open" in message
    assert not marker.exists()


@pytest.mark.parametrize("how", ["OSError", "RuntimeError from OSError"])
def test_a_full_disk_leaves_no_partial_file_and_names_the_latest_checkpoint(tmp_path, monkeypatch, how):
    """torch.save reports a full disk as OSError(ENOSPC), or (writing through a buffered file) as a RuntimeError raised
    while handling it."""
    import errno

    from helpers import user_error

    io, folder = AtomicCheckpointIO(), tmp_path / "checkpoints"
    io.save_checkpoint({"step": 1}, folder / "last.ckpt")

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 the first bytes")
        full = OSError(errno.ENOSPC, "No space left on device")
        if how == "OSError":
            raise full
        try:
            raise full
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", disk_full)
    message = user_error(io.save_checkpoint, {"step": 2}, folder / "best.ckpt")
    assert "disk is full" in message and str(folder / "best.ckpt") in message
    assert f"the latest complete checkpoint is still '{folder / 'last.ckpt'}'" in message
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["step"] == 1


def test_a_failed_save_of_another_kind_is_not_called_a_full_disk(tmp_path, monkeypatch):
    def fails(obj, f, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(PermissionError):
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []
