"""ImageDataModule behaviour shared by all formats, exercised on the embedded digits."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from main.datasets import ImageDataModule, build_datamodule
from main.datasets.common import EpochSampler, MirrorPairs
from main.utils.errors import UserError


def first_batch(loader):
    return next(iter(loader))


def test_is_a_lightning_datamodule_with_the_config_attributes(config):
    dm = build_datamodule(config("digits"), batch_size=8)
    assert isinstance(dm, ImageDataModule) and isinstance(dm, pl.LightningDataModule)
    assert (dm.image_size, dm.channels, dm.num_classes) == (8, 1, 10)


def test_batches_have_the_documented_types(config):
    dm = build_datamodule(config("digits"), batch_size=8, eval_batch_size=32)
    dm.setup("fit")
    images, labels = first_batch(dm.train_dataloader())
    assert images.shape == (8, 1, 8, 8) and images.dtype == torch.uint8
    assert labels.shape == (8,) and labels.dtype == torch.int64
    assert first_batch(dm.val_dataloader())[0].shape[0] == 32
    assert first_batch(dm.test_dataloader())[0].shape[0] == 32


def test_training_order_follows_the_seed(config):
    def order(seed):
        return first_batch(build_datamodule(config("digits"), batch_size=64, seed=seed).train_dataloader())[0]

    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))


def test_eval_loaders_keep_split_order(config):
    dm = build_datamodule(config("digits"), batch_size=8, eval_batch_size=10)
    images, _ = first_batch(dm.val_dataloader())
    assert torch.equal(images, torch.stack([dm.split("val")[i][0] for i in range(10)]))


def test_flip_applies_to_train_only(config):
    """Each training image is served mirrored or not, about half of them mirrored; val never."""
    dm = build_datamodule(config("digits", flip=True), batch_size=8)
    train, val = dm.split("train"), dm.split("val")
    assert isinstance(train, MirrorPairs) and not isinstance(val, MirrorPairs)
    order = list(EpochSampler(train.n, seed=0, flip=True))
    assert sorted(i % train.n for i in order) == list(range(train.n))  # every image once per epoch
    assert 0.4 < sum(i >= train.n for i in order) / train.n < 0.6
    base = train.dataset
    asymmetric = next(i for i in range(200) if not torch.equal(base[i][0], base[i][0].flip(-1)))
    assert torch.equal(train[asymmetric][0], base[asymmetric][0])
    assert torch.equal(train[train.n + asymmetric][0], base[asymmetric][0].flip(-1))
    assert all(torch.equal(val[i][0], val.dataset[val.indices[i]][0]) for i in range(50))


def test_epoch_sampler_depends_on_seed_and_epoch_only():
    """Resumed runs see the same order: the order is a function of (seed, epoch)."""
    a, b = EpochSampler(100, seed=3), EpochSampler(100, seed=3)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(EpochSampler(100, seed=4)) != list(EpochSampler(100, seed=3))


def test_flip_off_leaves_train_unchanged(config):
    train = build_datamodule(config("digits", flip=False), batch_size=8).split("train")
    assert not isinstance(train, MirrorPairs)


def test_worker_processes_serve_the_same_batches(config):
    dm0 = build_datamodule(config("digits"), batch_size=16, seed=3)
    dm1 = build_datamodule(config("digits"), batch_size=16, seed=3, num_workers=1)
    assert torch.equal(first_batch(dm0.train_dataloader())[0], first_batch(dm1.train_dataloader())[0])


def test_unknown_split_name_is_rejected(config):
    with pytest.raises(UserError, match="unknown split 'training': use train, val or test"):
        build_datamodule(config("digits"), batch_size=8).split("training")


def test_ranks_share_each_global_batch():
    """Rank r serves every world_size-th image of the epoch's order from r on: batch k of 2 ranks with batch B
    holds the images of batch k of one process with batch 2B (the order is padded by its start to an even length)."""
    order = list(EpochSampler(101, seed=3))
    shards = [EpochSampler(101, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 51
    assert [i for pair in zip(*shards) for i in pair] == order + order[:1]


def epoch(batches) -> list[torch.Tensor]:
    """The labels of each batch (they identify the images well enough)."""
    return [labels for _, labels in batches]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_loader_resumes_mid_epoch(config, num_workers):
    """The loader's state (saved by Lightning in checkpoints) continues the epoch; Lightning loads it, then
    iterates (worker processes start drawing indices at once), then sets the epoch."""

    def loader():
        return build_datamodule(config("digits"), batch_size=100, seed=5, num_workers=num_workers).train_dataloader()

    first = loader()
    first.sampler.set_epoch(2)
    full = epoch(first)
    interrupted = loader()
    interrupted.sampler.set_epoch(2)
    batches = iter(interrupted)
    served = [next(batches)[1] for _ in range(4)]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "offset": 400}

    resumed = loader()
    resumed.load_state_dict(state)
    rest = iter(resumed)
    resumed.sampler.set_epoch(2)
    assert len(resumed) == len(full) and all(torch.equal(a, b) for a, b in zip(served + epoch(rest), full, strict=True))


def test_training_loader_state_at_the_end_of_an_epoch_is_the_next_epoch(config):
    loader = build_datamodule(config("digits"), batch_size=100, seed=5).train_dataloader()
    epoch(loader)
    assert loader.state_dict() == {"epoch": 1, "offset": 0}
    resumed = build_datamodule(config("digits"), batch_size=100, seed=5).train_dataloader()
    resumed.load_state_dict(loader.state_dict())
    loader.sampler.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(epoch(resumed), epoch(loader), strict=True))
