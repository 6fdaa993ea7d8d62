"""The latent cache: encode once, store memory-mapped, load, decode; flipped train copies; measured shift and
scale; the data module serving latents; and the image-level view of a latent-space VAE."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import compose_config

from main.datasets import build_datamodule
from main.datasets.latents import LatentCache, LatentDataModule
from main.models.autoencoder import KLAutoencoder, encode_images
from main.models.latent_space import LatentSpaceModel
from main.models.vdvae import HierarchicalVAE


def digits_cfg(flip=True):
    return compose_config("train_ae", ["dataset=digits", f"dataset.flip={str(flip).lower()}"]).dataset


def autoencoder(seed=0) -> KLAutoencoder:
    torch.manual_seed(seed)
    return KLAutoencoder(image_channels=1, latent_channels=4, base_channels=8, channel_mults=[1, 2]).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    images = build_datamodule(digits_cfg(), batch_size=64)
    return LatentCache(tmp_path_factory.mktemp("cache"), images, autoencoder(), batch_size=100).build(), images


def test_cached_split_round_trips_to_the_direct_encoding(cache):
    cache, images = cache
    test = images.split("test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    cached = cache.split("test")
    assert len(cached) == len(test)
    stored = torch.stack([cached[i][0] for i in range(len(cached))])
    torch.testing.assert_close(stored, encode_images(cache.autoencoder, x))
    assert [cached[i][1] for i in range(len(cached))] == [test[i][1] for i in range(len(test))]
    with torch.no_grad():
        torch.testing.assert_close(cache.autoencoder.decode(stored), cache.autoencoder.decode(encode_images(cache.autoencoder, x)))
    assert not list(cache.folder.glob("*partial*"))


def test_flipped_train_copies_are_the_latents_of_mirrored_images(cache):
    cache, images = cache
    train = cache.split("train")
    n = len(train) // 2
    assert train.n == n and n == len(images.split("train")) // 2
    image, _ = images.split("train")[3]
    torch.testing.assert_close(train[n + 3][0], encode_images(cache.autoencoder, image.flip(-1)[None])[0])
    assert not torch.allclose(train[n + 3][0], train[3][0].flip(-1))  # why the mirrors are encoded, not flipped


def test_shift_and_scale_are_measured_on_the_train_latents(cache):
    cache, _ = cache
    train = np.load(cache.paths("train")[0])
    shift, scale = cache.statistics(chunk=97)  # chunks that do not divide the split
    assert shift == pytest.approx(float(train.astype(np.float64).mean()), rel=1e-9)
    assert scale == pytest.approx(float(train.astype(np.float64).std()), rel=1e-9)
    assert scale > 0.01


def test_a_second_build_reuses_the_cache_and_another_autoencoder_gets_its_own(cache, tmp_path):
    cache, images = cache
    stamp = cache.paths("train")[0].stat().st_mtime_ns
    cache.build()
    assert cache.paths("train")[0].stat().st_mtime_ns == stamp
    assert LatentCache(cache.folder.parent, images, autoencoder(seed=1)).folder != cache.folder


def test_encoding_shows_progress_and_a_cached_build_is_silent(tmp_path, capsys):
    images = build_datamodule(digits_cfg(flip=False), batch_size=64)
    cache = LatentCache(tmp_path, images, autoencoder(), batch_size=100).build()
    err = capsys.readouterr().err
    assert all(f"encoding the {split} split" in err for split in ("train", "val", "test"))
    assert f"{len(images.split('test'))}/{len(images.split('test'))}" in err  # the bar reached the split's size
    cache.build()
    assert "encoding" not in capsys.readouterr().err


def test_latent_data_module_serves_float_latent_batches(cache):
    cache, _ = cache
    module = LatentDataModule(cache, digits_cfg(), batch_size=16)
    latents, labels = next(iter(module.train_dataloader()))
    assert latents.shape == (16, 4, 4, 4) and latents.dtype == torch.float32 and labels.dtype == torch.int64
    val, _ = next(iter(module.val_dataloader()))
    torch.testing.assert_close(val[0], module.split("val")[0][0])


def test_latent_space_model_speaks_images(cache):
    cache, images = cache
    shift, scale = cache.statistics()
    vae = HierarchicalVAE(
        image_size=4, channels=4, enc_blocks="4x1,4d4,1x1", dec_blocks="1x1,4m1,4x1", width=16, zdim=2, num_mixtures=1,
        likelihood="gaussian", pixel_mean=shift, pixel_std=scale,
    )  # fmt: skip
    model = LatentSpaceModel(vae, cache.autoencoder, image_size=8).eval()
    x = torch.stack([images.split("test")[i][0] for i in range(3)])
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 8, 8) and samples.abs().max() <= 1
    assert model.reconstruct(x, k=vae.num_groups).shape == (3, 1, 8, 8)
    assert model.to_uint8(torch.tensor([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]
    with torch.no_grad():
        torch.manual_seed(0)
        elbo = model(x).loss
        torch.manual_seed(0)
        assert torch.equal(elbo, vae(encode_images(cache.autoencoder, x)).loss)  # the ELBO of the images' latents
    assert torch.isfinite(elbo).all()


@pytest.fixture
def damageable_cache(tmp_path):
    """A fresh cache of the digits test split alone (cheap to damage), with the latents encoded directly."""
    images = build_datamodule(digits_cfg(flip=False), batch_size=64)
    cache = LatentCache(tmp_path / "cache", images, autoencoder()).build(["test"])
    test = images.split("test")
    expected = encode_images(cache.autoencoder, torch.stack([test[i][0] for i in range(len(test))]))
    return cache, expected


def damage(cache: LatentCache, how: str) -> None:
    latents, labels, manifest = cache.paths("test")
    if how == "manifest of another key":
        text = json.loads(manifest.read_text())
        text["key"]["data"]["flip"] = True  # arrays untouched: only the key they claim differs
        manifest.write_text(json.dumps(text))
    elif how == "manifest not json":
        manifest.write_text("{not json")
    elif how == "truncated latents":
        latents.write_bytes(latents.read_bytes()[:-100])
    elif how == "garbage latents":
        latents.write_bytes(b"\x93NUMPY garbage" * 10)
    elif how == "missing labels":
        labels.unlink()
    elif how == "labels of another shape, manifest to match":  # a planted file the manifest vouches for, of the wrong count
        np.save(labels, np.zeros(3, dtype=np.int64))
        text = json.loads(manifest.read_text())
        text["labels"] |= {"shape": [3], "bytes": labels.stat().st_size}
        manifest.write_text(json.dumps(text))


@pytest.mark.parametrize(
    "how",
    [
        "manifest of another key",
        "manifest not json",
        "truncated latents",
        "garbage latents",
        "missing labels",
        "labels of another shape, manifest to match",
    ],
)
def test_a_damaged_or_mismatched_split_is_encoded_again_into_fresh_files(damageable_cache, how):
    cache, expected = damageable_cache
    latents_path = cache.paths("test")[0]
    inode = latents_path.stat().st_ino
    damage(cache, how)
    cached = cache.split("test")
    torch.testing.assert_close(torch.stack([cached[i][0] for i in range(len(cached))]), expected)
    assert latents_path.stat().st_ino != inode  # a new file renamed into place, not the old one written over
    assert json.loads(cache.paths("test")[2].read_text())["key"] == json.loads(json.dumps(cache.key))
    assert sorted(p.name for p in cache.folder.iterdir()) == ["test_labels.npy", "test_latents.npy", "test_manifest.json"]


class WritesMarker:
    """Unpickling this creates the marker file: the code a planted .npy would run if loaded with pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_planted_object_array_never_runs_code(damageable_cache, tmp_path):
    cache, expected = damageable_cache
    marker = tmp_path / "code_ran"
    latents_path, labels_path, manifest_path = cache.paths("test")
    manifest = json.loads(manifest_path.read_text())
    for name, path in (("latents", latents_path), ("labels", labels_path)):
        np.save(path, np.array([WritesMarker(marker)], dtype=object), allow_pickle=True)
        manifest[name] = {"shape": [1], "dtype": "object", "bytes": path.stat().st_size}  # the manifest vouches for the plant
    manifest_path.write_text(json.dumps(manifest))
    bait = tmp_path / "bait.npy"
    bait.write_bytes(latents_path.read_bytes())
    cached = cache.split("test")
    assert not marker.exists()
    torch.testing.assert_close(torch.stack([cached[i][0] for i in range(len(cached))]), expected)
    np.load(bait, allow_pickle=True)  # the bait is live: loading it with pickle does run its code
    assert marker.exists()
