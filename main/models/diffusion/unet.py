"""The denoiser: a UNet in improved-diffusion's layout (as DiffuseVAE uses it), with presets.

Layout: 3x3 conv stem; per level l (resolution image_size / 2^l, channels model_channels * channel_mult[l])
``num_res_blocks`` ResBlocks (each followed by attention if the level's resolution is listed), then a
stride-2 downsample except at the last level; a middle ResBlock-Attention-ResBlock (always with attention);
a mirrored decoder with num_res_blocks + 1 ResBlocks per level fed with the skip connections; GroupNorm,
SiLU and a zero-initialised 3x3 conv to ``out_channels``. The step t enters through a sinusoidal embedding
and a 2-layer MLP (width 4 * model_channels), plus an optional learned class embedding.

``attention_resolutions`` are PIXEL resolutions (e.g. 16 means "at the 16x16 feature maps"), not the
downsample factors improved-diffusion's UNetModel takes.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from main.models.checkpointing import run_block
from main.models.diffusion.unet_blocks import AttentionBlock, Downsample, EmbedSequential, ResBlock, Upsample, timestep_embedding
from main.utils.errors import UserError


class UNet(nn.Module):
    """eps/v network: forward(x [N, in_channels, H, W], t [N], class_labels [N] | None) -> [N, out_channels, H, W].

    Args:
        image_size: H = W of the inputs, needed to place attention by pixel resolution.
        in_channels: image channels, or 2x that when y is concatenated (form1/form2).
        out_channels: image channels.
        model_channels, channel_mult, num_res_blocks: base width, per-level width multipliers, ResBlocks per level.
        attention_resolutions: pixel resolutions that get attention after each ResBlock (middle block always has it).
        num_heads, dropout, use_scale_shift_norm: as in improved-diffusion.
        num_classes: if set, adds nn.Embedding(num_classes + 1, 4 * model_channels); index num_classes is the
            null class used when class_labels is None.
        activation_checkpointing: in training, keep only each input, middle and output block's inputs and recompute
            the rest in the backward pass (same gradients, much less memory, more time).
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        out_channels: int,
        model_channels: int = 128,
        channel_mult=(1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions=(16,),
        num_heads: int = 1,
        dropout: float = 0.0,
        use_scale_shift_norm: bool = False,
        num_classes: int | None = None,
        conv_resample: bool = True,
        norm_groups: int = 32,
        activation_checkpointing: bool = False,
    ):
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        channel_mult = tuple(int(m) for m in channel_mult)
        levels = len(channel_mult)
        if image_size % 2 ** (levels - 1):
            raise UserError(f"image_size {image_size} is not divisible by 2^{levels - 1}: use fewer channel_mult levels")
        widths = [model_channels] + [m * model_channels for m in channel_mult]
        if model_channels < 1 or any(w % norm_groups for w in widths):  # GroupNorm splits every width into norm_groups
            raise UserError(
                f"UNet widths {widths} (ddpm.unet.model_channels x channel_mult) must be positive multiples of "
                f"ddpm.unet.norm_groups={norm_groups}"
            )
        resolutions = [image_size // 2**level for level in range(levels)]
        bad = sorted(set(int(r) for r in attention_resolutions) - set(resolutions))
        if bad:
            raise UserError(f"attention_resolutions {bad} are not feature-map sizes of this UNet (pixels): choose from {resolutions}")
        attn = set(int(r) for r in attention_resolutions)
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.model_channels, self.num_classes = model_channels, num_classes
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

        def res(c_in, c_out):
            return ResBlock(c_in, emb_dim, c_out, dropout, use_scale_shift_norm, norm_groups)

        def attention(c):
            return AttentionBlock(c, num_heads, norm_groups)

        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch = model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if resolutions[level] in attn:
                    layers.append(attention(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_channels.append(ch)
            if level != levels - 1:
                self.input_blocks.append(EmbedSequential(Downsample(ch, conv_resample)))
                skip_channels.append(ch)
        self.middle_block = EmbedSequential(res(ch, ch), attention(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_channels.pop(), channel_mult[level] * model_channels)]
                ch = channel_mult[level] * model_channels
                if resolutions[level] in attn:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch, conv_resample))
                self.output_blocks.append(EmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(norm_groups, ch), nn.SiLU(), nn.Conv2d(ch, out_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.label_emb is not None:
            if class_labels is None:
                class_labels = torch.full((x.shape[0],), self.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.label_emb(class_labels)
        elif class_labels is not None:
            raise ValueError("this UNet has no class embedding (num_classes is None)")
        checkpointed = self.activation_checkpointing and self.training
        skips = []
        h = x
        for block in self.input_blocks:
            h = run_block(block, h, emb, checkpointed=checkpointed)
            skips.append(h)
        h = run_block(self.middle_block, h, emb, checkpointed=checkpointed)
        for block in self.output_blocks:
            h = run_block(with_skip, block, h, skips.pop(), emb, checkpointed=checkpointed)
        return self.out(h)


def with_skip(block: EmbedSequential, h: torch.Tensor, skip: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """An output block on its input concatenated with the skip connection (checkpointed, the concatenation is not kept)."""
    return block(SkipConcat.apply(h, skip), emb)


class SkipConcat(torch.autograd.Function):
    """torch.cat([h, skip], dim=1) whose backward gives the skip connection a gradient of its own.

    cat's own backward returns both gradients as views of one buffer. The skip's gradient waits until the backward pass
    reaches the input block that made the skip, so the view would keep the whole concatenated gradient alive that long:
    at batch 16 of the cifar10 UNet, 56 MB more at the peak of a checkpointed step (scripts/bench.py, suite memory).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        ctx.split = h.shape[1]
        return torch.cat([h, skip], dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad[:, : ctx.split], grad[:, ctx.split :].clone()


@dataclasses.dataclass(frozen=True)
class UNetPreset:
    """Architecture of a DiffuseVAE denoiser; attention_resolutions in pixels."""

    image_size: int
    channel_mult: tuple[int, ...]
    model_channels: int = 128
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 8
    dropout: float = 0.1
    image_channels: int = 3


# DiffuseVAE passes attn_resolutions="16," straight to improved-diffusion's UNet, which reads it as a
# DOWNSAMPLE FACTOR: attention sits at image_size / 16 pixels (4 px at 64, 8 px at 128, 16 px at 256), and at
# no level for 32 px CIFAR-10. The cifar10 preset follows the paper's 35.75M model (attention at 16 px);
# "cifar10_no_attn" is what their code builds (34.43M).
UNET_PRESETS: dict[str, UNetPreset] = {
    "cifar10": UNetPreset(32, (1, 2, 2, 2), dropout=0.3, attention_resolutions=(16,)),
    "cifar10_no_attn": UNetPreset(32, (1, 2, 2, 2), dropout=0.3, attention_resolutions=()),
    "celeba64": UNetPreset(64, (1, 2, 2, 2, 4), attention_resolutions=(4,)),
    "celebahq128": UNetPreset(128, (1, 2, 2, 3, 4), attention_resolutions=(8,)),
    "ffhq128": UNetPreset(128, (1, 1, 2, 3, 4), attention_resolutions=(8,)),
    "celebahq256": UNetPreset(256, (1, 1, 2, 2, 4, 4), attention_resolutions=(16,)),
    "small": UNetPreset(32, (1, 2, 2), model_channels=32, num_res_blocks=1, attention_resolutions=(16,), num_heads=1, dropout=0.0),
}


def build_unet(preset: str | UNetPreset, formulation: str = "form1", **overrides) -> UNet:
    """A UNet for a preset name (or UNetPreset); in_channels doubles for 'form1'/'form2'. overrides go to UNet."""
    return UNet(**unet_kwargs(preset, formulation, **overrides))


def unet_kwargs(preset: str | UNetPreset, formulation: str = "form1", **overrides) -> dict:
    """The full UNet arguments of a preset with overrides (None keeps the preset's value); what a checkpoint stores,
    so later preset edits cannot change a trained model."""
    if isinstance(preset, str):
        if preset not in UNET_PRESETS:
            raise UserError(f"unknown UNet preset {preset!r}: choose one of {', '.join(UNET_PRESETS)}")
        preset = UNET_PRESETS[preset]
    if formulation not in ("form1", "form2", "unconditional"):
        raise UserError(f"unknown diffusion formulation {formulation!r}: set it to 'form1', 'form2' or 'unconditional'")
    kwargs = dataclasses.asdict(preset)
    channels = overrides.pop("image_channels", kwargs.pop("image_channels"))
    kwargs.update(in_channels=channels * (1 if formulation == "unconditional" else 2), out_channels=channels)
    kwargs.update({key: value for key, value in overrides.items() if value is not None})
    for key in ("channel_mult", "attention_resolutions"):
        kwargs[key] = [int(v) for v in kwargs[key]]
    return kwargs
