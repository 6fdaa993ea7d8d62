"""Top-down decoder: one latent group per block, a prior from the state and a posterior from the state
plus the encoder's activation at the same resolution."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from main.models.checkpointing import run_block
from main.models.vdvae.blocks import BlockSpec, Bottleneck, conv, depth_scale, scale_
from main.models.vdvae.encoder import match_width
from main.models.vdvae.gaussian import gaussian_kl, gaussian_log_ratio, gaussian_sample, guided_prior
from main.utils.errors import UserError


@dataclass
class GroupChoice:
    """How one latent group is drawn: from the posterior (needs encoder activations) or the prior."""

    use_posterior: bool
    temperature: float = 1.0  # scales the std of whichever distribution the group is drawn from (0: its mean)
    noise: torch.Tensor | None = None  # fixed eps for this group (figures, interpolation)
    latent: torch.Tensor | None = None  # fixed z for this group (editing latents); overrides drawing


class DecoderBlock(nn.Module):
    def __init__(self, spec: BlockSpec, width: int, zdim: int, bottleneck_multiple: float, n_blocks: int, num_labels: int):
        super().__init__()
        self.resolution = spec.resolution
        self.mixin = spec.mixin
        self.zdim = zdim
        mid = int(width * bottleneck_multiple)
        self.posterior = Bottleneck(2 * width, mid, 2 * zdim, spec.resolution)
        self.prior = Bottleneck(width, mid, 2 * zdim + width, spec.resolution, zero_last=True)
        self.z_proj = scale_(conv(zdim, width, 1), depth_scale(n_blocks))
        self.resnet = Bottleneck(width, mid, width, spec.resolution, residual=True, last_scale=depth_scale(n_blocks))
        # Class conditioning: a per-block label embedding added to the state (index num_labels - 1 is "no label").
        self.label_embedding = nn.Embedding(num_labels, width) if num_labels else None
        if self.label_embedding is not None:
            nn.init.zeros_(self.label_embedding.weight)

    def forward(
        self,
        state: torch.Tensor,
        activation: torch.Tensor | None,
        choice: GroupChoice,
        label_index: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampled_kl: bool = False,
        guidance: tuple[float, float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Returns (new state, z, KL per element or None when z came from the prior).

        The KL is analytic, or with ``sampled_kl`` log q(z) - log p(z) at the drawn z (for importance weights).
        With ``guidance`` (mean and variance weights) the batch is [conditional; unconditional] halves: one z is
        drawn from the guided prior and continues both halves.
        """
        if self.label_embedding is not None:
            state = state + self.label_embedding(label_index)[:, :, None, None]
        prior_mean, prior_logstd, prior_feature = self.prior(state).split([self.zdim, self.zdim, state.shape[1]], dim=1)
        kl = None
        if choice.use_posterior:
            post_mean, post_logstd = self.posterior(torch.cat([state, activation], dim=1)).chunk(2, dim=1)
            z = self._draw(post_mean, post_logstd, choice, generator)
            q_and_p = (post_mean.float(), post_logstd.float(), prior_mean.float(), prior_logstd.float())
            kl = gaussian_log_ratio(z.float(), *q_and_p) if sampled_kl else gaussian_kl(*q_and_p)
        elif guidance is not None:
            z = self._draw(*guided_prior(prior_mean, prior_logstd, *guidance), choice, generator)
            z = torch.cat([z, z])
        else:
            z = self._draw(prior_mean, prior_logstd, choice, generator)
        state = state + prior_feature + self.z_proj(z)
        return self.resnet(state), z, kl

    @staticmethod
    def _draw(mean: torch.Tensor, logstd: torch.Tensor, choice: GroupChoice, generator: torch.Generator | None) -> torch.Tensor:
        if choice.latent is not None:
            return choice.latent.to(mean.dtype)
        return gaussian_sample(mean, logstd, choice.temperature, choice.noise, generator)


class Decoder(nn.Module):
    def __init__(
        self,
        blocks: list[BlockSpec],
        widths: dict[int, int],
        zdim: int,
        bottleneck_multiple: float,
        no_bias_above: int,
        image_size: int,
        num_classes: int = 0,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.widths = widths
        self.activation_checkpointing = activation_checkpointing
        self.image_size = image_size
        self.num_classes = num_classes
        num_labels = num_classes + 1 if num_classes else 0  # the extra label is the null label
        self.blocks = nn.ModuleList(
            DecoderBlock(b, widths[b.resolution], zdim, bottleneck_multiple, len(blocks), num_labels) for b in blocks
        )
        resolutions = sorted({b.resolution for b in blocks})
        # Learned starting states; higher resolutions start from zeros.
        self.bias_states = nn.ParameterDict(
            {str(r): nn.Parameter(torch.zeros(1, widths[r], r, r)) for r in resolutions if r <= no_bias_above}
        )
        out_width = widths[image_size]
        self.gain = nn.Parameter(torch.ones(1, out_width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, out_width, 1, 1))

    @property
    def num_groups(self) -> int:
        return len(self.blocks)

    def label_index(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor | None:
        """Labels -> embedding indices; -1 (or no labels) selects the null label."""
        if not self.num_classes:
            return None
        if labels is None:
            return torch.full((batch,), self.num_classes, device=device, dtype=torch.long)
        return torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)

    def forward(
        self,
        choices: list[GroupChoice],
        batch: int,
        activations: dict[int, torch.Tensor] | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        sampled_kl: bool = False,
        guidance: tuple[float, float] | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor | None]]:
        """Run the top-down pass; returns (features at image size, z per group, KL per group).

        ``guidance`` (prior sampling of a class-conditional model): classifier-free guidance at every group,
        running an unconditional copy of the batch beside the conditional one.
        """
        param = self.gain
        label_index = self.label_index(labels, batch, param.device)
        if guidance is not None:
            if label_index is None or any(c.use_posterior for c in choices):
                raise UserError("guidance needs a class-conditional model sampling from its prior")
            label_index = torch.cat([label_index, torch.full_like(label_index, self.num_classes)])
            batch *= 2
        # The recomputation repeats the latent draws only when they come from the default generator (run_block).
        checkpointed = self.activation_checkpointing and self.training and generator is None
        states: dict[int, torch.Tensor] = {}
        zs, kls = [], []
        for block, choice in zip(self.blocks, choices):
            res = block.resolution
            state = states.get(res)
            if state is None:
                bias = self.bias_states[str(res)] if str(res) in self.bias_states else None
                state = (
                    bias.expand(batch, -1, -1, -1)
                    if bias is not None
                    else torch.zeros(batch, self.widths[res], res, res, device=param.device, dtype=param.dtype)
                )
            if block.mixin is not None:
                upsampled = F.interpolate(states[block.mixin], scale_factor=res // block.mixin, mode="nearest")
                state = state + match_width(upsampled, state.shape[1])
            activation = activations[res] if choice.use_posterior else None
            states[res], z, kl = run_block(
                block, state, activation, choice, label_index, generator, sampled_kl, guidance, checkpointed=checkpointed
            )
            zs.append(z[: len(z) // 2] if guidance is not None else z)
            kls.append(kl)
        features = states[self.image_size][: batch // 2] if guidance is not None else states[self.image_size]
        return features * self.gain + self.bias, zs, kls
