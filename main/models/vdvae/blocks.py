"""Block strings, per-resolution widths and the bottleneck residual block of VDVAE.

Block strings describe a network one entry per comma:
  ``RxN``  N blocks at resolution R (encoder and decoder);
  ``RdK``  encoder: one block at R, then average-pool by K;
  ``RmS``  decoder: one block at R whose input is the state at resolution S upsampled (nearest) to R;
  ``R``    one block at R.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from main.utils.errors import UserError

_ENTRY = re.compile(r"^(\d+)(?:([xdm])(\d+))?$")


@dataclass(frozen=True)
class BlockSpec:
    """One block: its resolution, and for encoders the pool factor, for decoders the source resolution."""

    resolution: int
    down_rate: int | None = None  # encoder: average-pool by this factor after the block
    mixin: int | None = None  # decoder: upsample the state of this resolution into this block


def parse_block_string(spec: str, kind: str) -> list[BlockSpec]:
    """Parse an ``enc_blocks`` (kind="encoder") or ``dec_blocks`` (kind="decoder") string."""
    if not isinstance(spec, str):  # e.g. a list, when the string was written as [..]
        raise UserError(f"{kind} blocks {spec!r} are not a block string: write one like '32x3,32d2' (quoted on the command line)")
    blocks: list[BlockSpec] = []
    for entry in spec.replace(" ", "").split(","):
        match = _ENTRY.match(entry)
        if not match:
            raise UserError(f"bad {kind} block string entry {entry!r} in {spec!r}: use RxN, RdK (encoder) or RmS (decoder), e.g. 32x3,32d2")
        res, op, num = int(match[1]), match[2], int(match[3]) if match[3] else None
        if res < 1 or (num is not None and num < 1):
            raise UserError(f"bad {kind} block string entry {entry!r}: resolutions and counts must be positive")
        if op == "x":
            blocks += [BlockSpec(res) for _ in range(num)]
        elif op == "d":
            if kind != "encoder":
                raise UserError(f"decoder block string entry {entry!r} uses 'd' (downsample): decoders use RmS to upsample")
            if res % num:
                raise UserError(f"encoder block {entry!r}: resolution {res} is not divisible by {num}")
            blocks.append(BlockSpec(res, down_rate=num))
        elif op == "m":
            if kind != "decoder":
                raise UserError(f"encoder block string entry {entry!r} uses 'm' (upsample): encoders use RdK to downsample")
            if res % num or num >= res:
                raise UserError(f"decoder block {entry!r}: resolution {res} must be a multiple of, and above, {num}")
            blocks.append(BlockSpec(res, mixin=num))
        else:
            blocks.append(BlockSpec(res))
    return blocks


def check_encoder_blocks(blocks: list[BlockSpec], image_size: int) -> None:
    """Each encoder block must run at the resolution its predecessor produced."""
    res = image_size
    for b in blocks:
        if b.resolution != res:
            raise UserError(
                f"encoder block at resolution {b.resolution} follows resolution {res}: "
                f"enc_blocks must start at the image size ({image_size}) and follow each RdK with blocks at R/K"
            )
        if b.down_rate:
            res //= b.down_rate


def check_decoder_blocks(blocks: list[BlockSpec], image_size: int, encoder_resolutions: set[int]) -> None:
    """Decoder blocks need encoder activations at their resolution, and must end at the image size."""
    seen: set[int] = set()
    for b in blocks:
        if b.resolution not in encoder_resolutions:
            raise UserError(
                f"decoder block at resolution {b.resolution} has no encoder activation at that resolution: "
                f"encoder resolutions are {sorted(encoder_resolutions)}"
            )
        if b.mixin is not None and b.mixin not in seen:
            raise UserError(f"decoder block {b.resolution}m{b.mixin} upsamples resolution {b.mixin}, which no earlier block produced")
        seen.add(b.resolution)
    if blocks[-1].resolution != image_size:
        raise UserError(f"dec_blocks end at resolution {blocks[-1].resolution}, but images are {image_size}x{image_size}")


def parse_widths(width: int, custom: str | None) -> dict[int, int]:
    """Per-resolution widths: ``"512:32,256:64"`` overrides ``width`` at those resolutions."""
    widths: dict[int, int] = {}
    for entry in (custom or "").replace(" ", "").split(","):
        if not entry:
            continue
        try:
            res, w = (int(v) for v in entry.split(":"))
        except ValueError:
            raise UserError(f"bad custom_widths entry {entry!r}: use resolution:width pairs, e.g. 512:32,256:64") from None
        widths[res] = w
    if width < 1 or any(w < 1 for w in widths.values()):
        raise UserError(f"widths must be positive: width={width}, custom_widths={custom!r}")
    return _DefaultWidths(width, widths)


class _DefaultWidths(dict):
    def __init__(self, default: int, overrides: dict[int, int]):
        super().__init__(overrides)
        self.default = default

    def __missing__(self, res: int) -> int:
        return self.default


def conv(in_ch: int, out_ch: int, kernel: int) -> nn.Conv2d:
    """A same-padded conv with zero-initialised bias (as VDVAE initialises every conv)."""
    layer = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
    nn.init.zeros_(layer.bias)
    return layer


def scale_(layer: nn.Conv2d, factor: float) -> nn.Conv2d:
    """Scale a conv's initial weights in place (VDVAE scales residual outputs by sqrt(1/depth))."""
    with torch.no_grad():
        layer.weight.mul_(factor)
    return layer


class Bottleneck(nn.Module):
    """GELU -> 1x1 -> GELU -> 3x3 -> GELU -> 3x3 -> GELU -> 1x1, optionally residual and pooled.

    The 3x3 convolutions become 1x1 at resolutions 1 and 2, where a 3x3 would only see padding.
    """

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        out_ch: int,
        resolution: int,
        residual: bool = False,
        down_rate: int | None = None,
        zero_last: bool = False,
        last_scale: float = 1.0,
    ):
        super().__init__()
        k = 3 if resolution > 2 else 1
        self.c1 = conv(in_ch, mid_ch, 1)
        self.c2 = conv(mid_ch, mid_ch, k)
        self.c3 = conv(mid_ch, mid_ch, k)
        self.c4 = conv(mid_ch, out_ch, 1)
        if zero_last:
            nn.init.zeros_(self.c4.weight)
            nn.init.zeros_(self.c4.bias)
        elif last_scale != 1.0:
            scale_(self.c4, last_scale)
        self.residual = residual
        self.down_rate = down_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.gelu(x))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        out = x + h if self.residual else h
        if self.down_rate:
            out = F.avg_pool2d(out, self.down_rate)
        return out


def depth_scale(n_blocks: int) -> float:
    """Initial scale of residual-branch outputs, sqrt(1 / number of blocks)."""
    return math.sqrt(1.0 / n_blocks)
