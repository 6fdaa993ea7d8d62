"""The hierarchical VAE: encoder, top-down decoder and the output likelihood.

In pixel space (likelihood "dmol") images enter as uint8 [B,C,H,W]; the encoder sees them normalised by the
data set's mean and std, and a discretized mixture of logistics scores them on the [-1, 1] grid of 2**bits
levels. In latent space (likelihood "gaussian") an autoencoder's float latents enter, are normalised by the
shift and scale measured on the data, clipped, and scored by a Gaussian density. All losses are per dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from main.models.vdvae.blocks import check_decoder_blocks, check_encoder_blocks, parse_block_string, parse_widths
from main.models.vdvae.decoder import Decoder, GroupChoice
from main.models.vdvae.encoder import Encoder
from main.models.vdvae.gaussian_likelihood import GaussianOutput
from main.models.vdvae.likelihood import DiscretizedMixtureLogistics
from main.utils.errors import UserError


@dataclass
class ELBO:
    """Per-sample terms of the negative ELBO, in nats per dimension ([B] tensors)."""

    loss: torch.Tensor  # distortion + rate
    distortion: torch.Tensor  # -log p(x | z)
    rate: torch.Tensor  # sum over groups of KL(q || p)
    kl_per_group: torch.Tensor  # [B, G]

    @property
    def bits_per_dim(self) -> torch.Tensor:
        return self.loss / math.log(2)


class HierarchicalVAE(nn.Module):
    def __init__(
        self,
        image_size: int,
        channels: int,
        enc_blocks: str,
        dec_blocks: str,
        width: int,
        zdim: int,
        num_mixtures: int,
        bottleneck_multiple: float = 0.25,
        custom_widths: str | None = None,
        no_bias_above: int = 64,
        bits: int = 8,
        num_classes: int = 0,
        pixel_mean: float = 127.5,
        pixel_std: float = 127.5,
        likelihood: str = "dmol",
        clip: float = 4.0,
        level_grid: str = "spread",
        activation_checkpointing: bool = False,
    ):
        """pixel_mean / pixel_std: the input's shift and scale (pixels, or latents in latent space);
        likelihood: "dmol" (uint8 images) or "gaussian" (float latents, normalised then clipped to +-clip);
        level_grid: where low-bit levels sit in [-1, 1], "spread" evenly or VDVAE's "floor" (likelihood.py);
        activation_checkpointing: in training, keep only each encoder and decoder block's inputs and recompute the
        rest in the backward pass (same gradients, much less memory, more time)."""
        super().__init__()
        if level_grid not in ("spread", "floor"):
            raise UserError(f"unknown level_grid {level_grid!r}: use 'spread' (levels evenly over [-1, 1]) or 'floor' (VDVAE's)")
        if likelihood not in ("dmol", "gaussian"):
            raise UserError(f"unknown likelihood {likelihood!r}: use 'dmol' (pixels) or 'gaussian' (autoencoder latents)")
        if likelihood == "dmol" and channels not in (1, 3):
            raise UserError(f"images have {channels} channels: only 1 (grayscale) or 3 (RGB) are supported")
        enc = parse_block_string(enc_blocks, "encoder")
        dec = parse_block_string(dec_blocks, "decoder")
        check_encoder_blocks(enc, image_size)
        encoder_resolutions = {image_size} | {b.resolution // (b.down_rate or 1) for b in enc}
        check_decoder_blocks(dec, image_size, encoder_resolutions)
        widths = parse_widths(width, custom_widths)
        if zdim < 1 or num_mixtures < 1:
            raise UserError(f"zdim={zdim} and num_mixtures={num_mixtures} must both be at least 1")
        narrowest = min(int(widths[b.resolution] * bottleneck_multiple) for b in enc + dec)
        if narrowest < 1:
            raise UserError(
                f"width x bottleneck_multiple ({bottleneck_multiple}) leaves blocks with no channels: raise width or bottleneck_multiple"
            )
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes
        self.register_buffer("pixel_mean", torch.tensor(float(pixel_mean)), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(float(pixel_std)), persistent=False)
        self.encoder = Encoder(channels, enc, widths, bottleneck_multiple, image_size, activation_checkpointing)
        self.decoder = Decoder(dec, widths, zdim, bottleneck_multiple, no_bias_above, image_size, num_classes, activation_checkpointing)
        self.clip = clip
        self.latent_space = likelihood == "gaussian"
        self.likelihood = (
            GaussianOutput(widths[image_size], channels)
            if self.latent_space
            else DiscretizedMixtureLogistics(widths[image_size], channels, num_mixtures, bits, level_grid)
        )

    @property
    def num_groups(self) -> int:
        return self.decoder.num_groups

    # ---- data ----------------------------------------------------------------------------------
    def check_images(self, x: torch.Tensor) -> None:
        check_image_shape(x, self.channels, self.image_size)

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the likelihood's grid in [-1, 1] (dropping low bits when bits < 8); latents -> normalised."""
        if self.latent_space:
            return self._encoder_input(x)
        return self.likelihood.position(torch.div(x.long(), self.likelihood.pixel_step, rounding_mode="floor"))

    def to_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> uint8 for saving: 2**bits levels spread over 0..255, or VDVAE's kept pixel values."""
        if self.latent_space:
            raise UserError("a latent-space model outputs latents, not images: decode them with its autoencoder (LatentSpaceModel)")
        levels = self.likelihood.to_levels(x)
        if self.likelihood.level_grid == "floor":
            return (levels * self.likelihood.pixel_step).to(torch.uint8)
        return torch.round(levels * (255.0 / self.likelihood.levels)).to(torch.uint8)

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        normalised = (x.float() - self.pixel_mean) / self.pixel_std
        return normalised.clamp(-self.clip, self.clip) if self.latent_space else normalised

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        """The model's output in normalised units -> the input's units (latent space)."""
        return z * self.pixel_std + self.pixel_mean

    def latent_shapes(self, n: int) -> list[tuple[int, int, int, int]]:
        """Shape [n, zdim, res, res] of each latent group, top (coarsest) first."""
        return [(n, block.zdim, block.resolution, block.resolution) for block in self.decoder.blocks]

    def groups(self, k: int | str, key: str = "k", minimum: int = 0) -> int:
        """How many latent groups (top first) ``k`` takes from the posterior: an integer, 'all', or '<R>px' = every
        group at resolutions up to R pixels (the same choice across presets of different depths). ``key`` names the
        setting in the error; ``minimum``: the fewest groups the caller can use."""
        n, resolutions = self.num_groups, [shape[-1] for shape in self.latent_shapes(1)]
        if k == "all":
            groups = n
        elif isinstance(k, str) and k.endswith("px") and k[:-2].isdigit():
            groups = sum(r <= int(k[:-2]) for r in resolutions)
        else:
            groups = k if isinstance(k, int) and not isinstance(k, bool) else None
        if groups is None or not minimum <= groups <= n:
            raise UserError(
                f"{key}={k!r}: use 'all', an integer {minimum}..{n} (stage one has {n} latent groups) "
                f"or '<R>px' for the groups up to R pixels (resolutions {sorted(set(resolutions))})"
            )
        return groups

    def _choices(self, k: int, temperature: float | Sequence[float] = 1.0, noise=None, latents=None) -> list[GroupChoice]:
        temps = _per_group(temperature, self.num_groups, "temperature")
        noise, latents = (self._per_group_tensors(v, name) for v, name in ((noise, "noise"), (latents, "latents")))
        return [GroupChoice(i < k, t, n, z) for i, (t, n, z) in enumerate(zip(temps, noise, latents))]

    def _per_group_tensors(self, values, name: str) -> list:
        values = list(values) if values is not None else [None] * self.num_groups
        if len(values) != self.num_groups:
            raise UserError(f"{name} has {len(values)} entries but the model has {self.num_groups} latent groups")
        return values

    # ---- training and evaluation -----------------------------------------------------------------
    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> ELBO:
        """Negative ELBO of uint8 images x [B,C,H,W] (labels: class ids, -1 for none)."""
        return self._negative_elbo(x, self.encoder(self._encoder_input(x)), labels)

    def _negative_elbo(
        self,
        x: torch.Tensor,
        activations: dict[int, torch.Tensor],
        labels: torch.Tensor | None,
        sampled_kl: bool = False,
        generator: torch.Generator | None = None,
    ) -> ELBO:
        """One top-down pass through the posterior; ``sampled_kl`` scores the drawn z instead of the analytic KL."""
        features, _, kls = self.decoder(self._choices(self.num_groups), x.shape[0], activations, labels, generator, sampled_kl)
        distortion = self.likelihood.nll_per_dim(self.likelihood(features), self.targets(x))
        kl_per_group = torch.stack([kl.sum(dim=(1, 2, 3)) for kl in kls], dim=1) / x[0].numel()
        rate = kl_per_group.sum(dim=1)
        return ELBO(distortion + rate, distortion, rate, kl_per_group)

    @torch.no_grad()
    def importance_weighted_nll(
        self, x: torch.Tensor, labels: torch.Tensor | None = None, samples: int = 100, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Per-image upper bound on -log p(x) in nats per dimension, from ``samples`` posterior draws.

        -log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x): K = 1 is a one-sample ELBO, and the bound tightens
        towards -log p(x) as K grows (Burda et al., 2016). The encoder runs once; the decoder K times.
        """
        if samples < 1:
            raise UserError(f"importance sampling needs at least 1 sample, got {samples}")
        activations = self.encoder(self._encoder_input(x))
        dims = x[0].numel()  # weights are ratios of whole-image densities: total nats, not nats per dimension
        log_weights = torch.stack(
            [-self._negative_elbo(x, activations, labels, True, generator).loss.double() * dims for _ in range(samples)]
        )
        return (-(torch.logsumexp(log_weights, dim=0) - math.log(samples)) / dims).float()

    # ---- generation ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        temperature: float | Sequence[float] = 1.0,
        generator: torch.Generator | None = None,
        output: str = "sample",
        noise: Sequence[torch.Tensor | None] | None = None,
        latents: Sequence[torch.Tensor | None] | None = None,
        guidance: tuple[float, float] = (0.0, 0.0),
    ) -> torch.Tensor:
        """n images in [-1, 1] from the prior; ``temperature`` scales each group's prior std.

        ``noise``: optional standard-normal eps per group (shapes from `latent_shapes`; None entries are
        drawn), to hold some groups fixed or interpolate them. ``latents``: optional z per group, decoded as
        given (from `encode_latents`, possibly edited); None entries come from the prior. ``guidance``:
        classifier-free guidance weights (mean, variance) of every group's prior; (0, 0) is unguided.
        """
        guided = tuple(guidance) if any(guidance) else None
        features, _, _ = self.decoder(self._choices(0, temperature, noise, latents), n, None, labels, generator, guidance=guided)
        return self.render(features, output, generator)

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor, labels: torch.Tensor | None = None, temperature: float = 0.0, generator=None):
        """The posterior's z of every group (top first) for uint8 images x: its means at temperature 0, else draws."""
        activations = self.encoder(self._encoder_input(x))
        _, zs, _ = self.decoder(self._choices(self.num_groups, temperature), x.shape[0], activations, labels, generator)
        return zs

    @torch.no_grad()
    def reconstruct(
        self,
        x: torch.Tensor,
        labels: torch.Tensor | None = None,
        k: int | str | None = None,
        temperature: float | Sequence[float] = 1.0,
        generator: torch.Generator | None = None,
        output: str = "sample",
    ) -> torch.Tensor:
        """Images in [-1, 1] with the first k groups (see `groups`; None: all) drawn from the posterior of x, the rest from
        the prior at ``temperature`` (one value, or one per group of which the first k are unused). Temperature is the
        prior's, as in `sample`: posterior draws are always true samples (temperature 1)."""
        k = self.num_groups if k is None else self.groups(k)
        activations = self.encoder(self._encoder_input(x)) if k else None
        prior = _per_group(temperature, self.num_groups, "temperature")[k:]
        features, _, _ = self.decoder(self._choices(k, [1.0] * k + prior), x.shape[0], activations, labels, generator)
        return self.render(features, output, generator)

    def render(self, features: torch.Tensor, output: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder features -> image: a draw from the likelihood ("sample") or its mean ("mean")."""
        params = self.likelihood(features)
        if output == "sample":
            return self.likelihood.sample(params, generator)
        if output == "mean":
            return self.likelihood.mean(params)
        raise UserError(f"unknown output {output!r}: use 'sample' or 'mean'")


def check_image_shape(x: torch.Tensor, channels: int, image_size: int) -> None:
    expected = (channels, image_size, image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise UserError(
            f"images of shape {tuple(x.shape[1:])} do not fit a model for {expected} (C, H, W): use the data set the model was trained on"
        )


def _per_group(value: float | Sequence[float], n: int, name: str) -> list[float]:
    values = [float(value)] * n if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != n:
        raise UserError(f"{name} has {len(values)} values but the model has {n} latent groups: give one value or {n}")
    if any(not (0.0 <= v <= 10.0) or math.isnan(v) for v in values):
        raise UserError(f"{name} values must be in [0, 10], got {values if len(values) < 8 else '...'}")
    return values
