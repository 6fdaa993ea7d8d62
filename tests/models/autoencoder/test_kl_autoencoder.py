"""Our KL autoencoder for latent-space stage one: shapes, its loss against an independent computation, width checks."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from main.models.autoencoder import KLAutoencoder
from main.utils.errors import UserError


def unit_images(n=2, channels=3, size=8, seed=0) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("mults, factor", [([1, 2], 2), ([1, 2, 2], 4)])
def test_kl_autoencoder_shapes_follow_the_downsampling(mults, factor):
    ae = KLAutoencoder(image_channels=3, latent_channels=4, base_channels=8, channel_mults=mults)
    mean, logvar = ae.encode(unit_images(2, size=16))
    assert ae.downsample_factor == factor
    assert mean.shape == logvar.shape == (2, 4, 16 // factor, 16 // factor)
    assert ae.decode(mean).shape == (2, 3, 16, 16)


def test_kl_autoencoder_loss_terms_match_an_independent_computation():
    torch.manual_seed(0)
    ae = KLAutoencoder(image_channels=1, base_channels=8)
    x = unit_images(3, channels=1)
    terms = ae.loss(x, kl_weight=0.5, generator=torch.Generator().manual_seed(1))
    mean, logvar = ae.encode(x)
    expected_kl = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(terms["kl"], expected_kl)
    torch.testing.assert_close(terms["loss"], terms["mse"] + 0.5 * terms["kl"])
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(terms["mse"], ((ae.decode(mean + (0.5 * logvar).exp() * eps) - x) ** 2).mean())


def test_kl_autoencoder_rejects_widths_the_norm_cannot_split():
    with pytest.raises(UserError, match="multiples of norm_groups"):
        KLAutoencoder(image_channels=3, base_channels=12, norm_groups=8)
