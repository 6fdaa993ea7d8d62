"""The latent cache as runs see it (prepare_latent_space): a run reads only latents of its own data, its own data
settings and its own autoencoder, encoded on the device it passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import compose_config

import main.systems.latent_setup as latent_setup
from main.models.autoencoder import KLAutoencoder, encode_images


@pytest.fixture
def autoencoder(monkeypatch) -> KLAutoencoder:
    """A tiny untrained autoencoder (1 channel, 8 px -> 4x4x4 latents) served in place of vae.autoencoder's checkpoint."""
    torch.manual_seed(0)
    model = KLAutoencoder(image_channels=1, latent_channels=4, base_channels=8, channel_mults=[1, 2]).eval()
    monkeypatch.setattr(latent_setup, "load_autoencoder_source", lambda source: model)
    return model


def write_npz(path, seed: int, n: int = 60):
    np.savez(path, images=np.random.default_rng(seed).integers(0, 256, (n, 8, 8), dtype=np.uint8))
    return path


def prepare(cache, root, *overrides, device="cpu"):
    cfg = compose_config(
        "train_ae",
        ["dataset=npz", f"dataset.root={root}", "dataset.image_size=8", "dataset.channels=1", "vae=digits_latent",
         f"vae.latent_cache={cache}", "num_workers=0", *overrides],
    )  # fmt: skip
    return latent_setup.prepare_latent_space(cfg, 16, device=device)[2]


def stacked(dataset, indices=None) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in indices or range(len(dataset))])


def assert_serves_latents_of_its_data(datamodule, autoencoder, split="test"):
    """The module's cached latents are those of the images its own data source loads."""
    torch.testing.assert_close(stacked(datamodule.split(split)), encode_images(autoencoder, stacked(datamodule.source.split(split))))


def test_two_roots_with_the_same_data_set_name_get_their_own_caches(tmp_path, autoencoder):
    a, b = write_npz(tmp_path / "a.npz", seed=1), write_npz(tmp_path / "b.npz", seed=2)
    run_a, run_b = prepare(tmp_path / "cache", a), prepare(tmp_path / "cache", b)
    assert_serves_latents_of_its_data(run_a, autoencoder)
    assert_serves_latents_of_its_data(run_b, autoencoder)
    assert run_a.cache.folder != run_b.cache.folder and run_a.cache.folder.name.startswith("npz-")
    assert run_b.cache.key["data"]["root"] == str(b.resolve())


def test_data_files_changed_under_the_same_root_get_a_new_cache(tmp_path, autoencoder):
    root = write_npz(tmp_path / "data.npz", seed=1)
    first = prepare(tmp_path / "cache", root).cache.folder
    write_npz(root, seed=2)
    run = prepare(tmp_path / "cache", root)
    assert_serves_latents_of_its_data(run, autoencoder)
    assert run.cache.folder != first


def test_turning_flip_on_gives_a_separate_cache_of_true_mirror_pairs(tmp_path, autoencoder):
    root = write_npz(tmp_path / "data.npz", seed=1)
    plain = prepare(tmp_path / "cache", root, "dataset.flip=false")
    flipped = prepare(tmp_path / "cache", root, "dataset.flip=true")
    train = flipped.split("train")
    images = stacked(plain.source.split("train"))
    assert train.n == len(images) and len(train) == 2 * len(images)
    torch.testing.assert_close(stacked(train, range(train.n, 2 * train.n)), encode_images(autoencoder, images.flip(-1)))
    torch.testing.assert_close(stacked(train, range(train.n)), encode_images(autoencoder, images))
    assert flipped.cache.folder != plain.cache.folder
    assert len(plain.cache.split("train")) == len(images)  # the flip=false cache is left as it was


def test_latents_are_encoded_on_the_device_the_caller_passes(tmp_path, autoencoder, monkeypatch):
    """Even where CUDA is available, a CPU run encodes on the CPU (no device guessed behind the run's back)."""
    seen = set()
    encode = autoencoder.encode
    monkeypatch.setattr(autoencoder, "encode", lambda x: seen.add(x.device.type) or encode(x))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    prepare(tmp_path / "cache", write_npz(tmp_path / "data.npz", seed=1), device=torch.device("cpu"))
    assert seen == {"cpu"}


def test_a_cache_kept_inside_the_data_root_is_reused(tmp_path, autoencoder):
    """The cache's own files are not data files: writing them does not change the key."""
    write_npz(tmp_path / "data.npz", seed=1)
    first = prepare(tmp_path / "latent_cache", tmp_path).cache
    stamp = first.paths("train")[0].stat().st_mtime_ns
    again = prepare(tmp_path / "latent_cache", tmp_path).cache
    assert again.folder == first.folder and again.paths("train")[0].stat().st_mtime_ns == stamp
