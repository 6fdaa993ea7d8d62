"""Corruptions of the conditioning image: identity at strength 0, the noise std asked for, JPEG's quality, blur as a low-pass."""

from __future__ import annotations

import pytest
import torch

from main.models.diffusion.corruptions import check_augmentation, corrupt, gaussian_blur, gaussian_noise, jpeg, random_corruption
from main.utils.errors import UserError


def images(n: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth-ish test images in [-1, 1]: random 8x8 patterns upsampled, so JPEG and blur have structure to act on."""
    coarse = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed)) * 1.6 - 0.8
    return torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("kind", ["gaussian_noise", "blur", "jpeg"])
def test_strength_zero_is_the_identity(kind):
    y = images()
    assert torch.equal(corrupt(y, kind, 0.0, torch.Generator().manual_seed(1)), y)
    assert not torch.equal(corrupt(y, kind, 0.5 if kind != "jpeg" else 50, torch.Generator().manual_seed(1)), y)


def test_noise_has_the_std_asked_for_and_comes_from_the_generator():
    y = torch.zeros(16, 1, 32, 32)  # mid-grey: clamping to [-1, 1] never bites at sigma 0.1
    out = corrupt(y, "gaussian_noise", 0.1, torch.Generator().manual_seed(3))
    residual = out - y
    assert abs(float(residual.std()) - 0.1) < 0.003 and abs(float(residual.mean())) < 0.002
    assert torch.equal(out, corrupt(y, "gaussian_noise", 0.1, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, corrupt(y, "gaussian_noise", 0.1, torch.Generator().manual_seed(4)))
    per_image = gaussian_noise(y[:2], torch.tensor([0.05, 0.2]), torch.Generator().manual_seed(5))
    torch.testing.assert_close(per_image.flatten(1).std(1), torch.tensor([0.05, 0.2]), rtol=0.08, atol=0)
    assert float(gaussian_noise(torch.ones(1, 1, 8, 8), 0.5).max()) == 1.0  # stays a valid image


def quantised(y: torch.Tensor) -> torch.Tensor:
    """What any 8-bit file holds: y on the 256-level grid."""
    return ((y + 1) * 127.5).round() / 127.5 - 1


def test_jpeg_quality_100_is_nearly_the_identity():
    y = images()[:, :1]  # grayscale: no chroma subsampling, so quality 100 is within one 8-bit level
    assert jpeg(y, 100).shape == y.shape
    assert float((jpeg(y, 100) - quantised(y)).abs().max()) <= 1.0 / 127.5 + 1e-6
    assert float((jpeg(y, 10) - quantised(y)).abs().max()) > 4.0 / 127.5


def test_lower_jpeg_quality_loses_more():
    y = images()  # RGB with independent random colours: JPEG's 4:2:0 chroma subsampling already costs at quality 100
    errors = [float((jpeg(y, q) - quantised(y)).pow(2).mean()) for q in (100, 90, 50, 10)]
    assert errors == sorted(errors) and errors[0] < errors[-1] / 4
    assert torch.equal(corrupt(y, "jpeg", 50), jpeg(y, 50))  # strength = 100 - quality


def high_frequency_power(x: torch.Tensor) -> float:
    """Power of the spatial frequencies above half the Nyquist frequency (mean removed)."""
    spectrum = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs().pow(2)
    freqs = torch.fft.fftfreq(x.shape[-1]).abs()
    high = (freqs[:, None] > 0.25) | (freqs[None, :] > 0.25)
    return float(spectrum[..., high].sum())


def test_blur_removes_high_frequencies_and_keeps_flat_images():
    y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1  # white noise: power at every frequency
    powers = [high_frequency_power(gaussian_blur(y, s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert powers[0] > powers[1] > powers[2] > powers[3] and powers[2] < 0.1 * powers[0]
    flat = torch.full((1, 1, 8, 8), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.5), flat)
    assert gaussian_blur(torch.rand(1, 1, 8, 8), 5.0).shape == (1, 1, 8, 8)  # kernel capped to what the padding allows


def test_random_corruption_respects_p_and_the_strength_range():
    y = torch.zeros(64, 1, 16, 16)
    spec = {"kind": "gaussian_noise", "max_strength": 0.2, "p": 1.0}
    out = random_corruption(y, spec, torch.Generator().manual_seed(0))
    stds = (out - y).flatten(1).std(1)
    assert bool((stds > 0).all()) and float(stds.max()) < 0.2 * 1.15 and float(stds.min()) < 0.05  # uniform in [0, 0.2]
    assert torch.equal(random_corruption(y, spec | {"p": 0.0}, torch.Generator().manual_seed(0)), y)
    half = random_corruption(y, spec | {"p": 0.5}, torch.Generator().manual_seed(0))
    changed = int((half != y).flatten(1).any(1).sum())
    assert 16 < changed < 48
    assert torch.equal(out, random_corruption(y, spec, torch.Generator().manual_seed(0)))  # pure given the generator


def test_mixed_corruption_uses_every_kind_it_is_given(monkeypatch):
    import main.models.diffusion.corruptions as corruptions

    seen = []
    original_noise, original_corrupt = corruptions.gaussian_noise, corruptions.corrupt
    monkeypatch.setattr(
        corruptions, "gaussian_noise", lambda y, s, g=None: seen.extend(["gaussian_noise"] * len(y)) or original_noise(y, s, g)
    )
    monkeypatch.setattr(corruptions, "corrupt", lambda y, kind, s, g=None: seen.append(kind) or original_corrupt(y, kind, s, g))
    y = images(n=30, size=16)
    spec = {"kind": "mixed", "max_strength": {"gaussian_noise": 0.3, "blur": 1.5, "jpeg": 90}, "p": 1.0}
    out = random_corruption(y, spec, torch.Generator().manual_seed(0))
    assert len(seen) == 30 and set(seen) == {"gaussian_noise", "blur", "jpeg"}
    assert out.shape == y.shape and float(out.abs().max()) <= 1.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "sharpen", "max_strength": 1.0}, "unknown corruption 'sharpen'"),
        ({"kind": "gaussian_noise", "max_strength": -0.1}, r"gaussian_noise strength -0.1: use 0\.\.10"),
        ({"kind": "jpeg", "max_strength": 100}, r"jpeg strength 100.0: use 0\.\.99"),
        ({"kind": "mixed", "max_strength": 0.2}, "mixed needs max_strength per kind"),
        ({"kind": "blur", "max_strength": {"blur": 1.0}}, "takes one number as max_strength"),
        ({"kind": "blur", "max_strength": 1.0, "p": 1.5}, r"p=1.5: use a probability in \[0, 1\]"),
        ({"kind": "blur", "strength": 1.0}, "give kind .* max_strength"),
    ],
)
def test_bad_augmentation_settings_are_clear_errors(spec, message):
    with pytest.raises(UserError, match=message):
        check_augmentation(spec)


def test_no_augmentation_is_valid():
    check_augmentation(None)
    check_augmentation({"kind": "mixed", "max_strength": {"gaussian_noise": 0.2, "jpeg": 70}, "p": 0.5})
