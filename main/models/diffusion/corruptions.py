"""Corruptions of the refiner's conditioning image y: Gaussian noise, Gaussian blur and JPEG compression.

Used to measure how a refiner copes with a degraded y (main/noisy_conditioning.py) and, optionally, as a
training augmentation of y (``ddpm.conditioning.corruption``). Every function takes and returns images
in [-1, 1] [N, C, H, W] and is pure: randomness comes only from the ``generator`` passed in.

Every kind has one ``strength`` where 0 means no corruption and larger is worse, so an augmentation can
draw strengths uniformly from [0, max_strength] and plots read the same way for every kind:
gaussian_noise: the noise std in [-1, 1] units; blur: the Gaussian's sigma in pixels; jpeg: 100 - quality.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.functional import gaussian_blur as _blur

from main.utils.errors import UserError
from main.utils.image_io import to_uint8, to_unit_range

KINDS = ("gaussian_noise", "blur", "jpeg")
MAX_STRENGTH = {"gaussian_noise": 10.0, "blur": 100.0, "jpeg": 99.0}  # jpeg: quality 1 is the lowest


def gaussian_noise(y: torch.Tensor, sigma: float | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """y plus N(0, sigma^2) noise (sigma: one value or one per image), clamped to [-1, 1] like any stored image."""
    sigma = torch.as_tensor(sigma, dtype=y.dtype, device=y.device).reshape(-1, *[1] * (y.dim() - 1))
    noise = torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
    return (y + sigma * noise).clamp(-1.0, 1.0)


def gaussian_blur(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """y blurred by a Gaussian of std ``sigma`` pixels (kernel 2 * ceil(3 sigma) + 1, capped by the reflect padding)."""
    if sigma <= 0:
        return y
    radius = min(math.ceil(3 * sigma), min(y.shape[-2:]) - 1)
    size = 2 * radius + 1
    return _blur(y, [size, size], [float(sigma), float(sigma)])


def jpeg(y: torch.Tensor, quality: int) -> torch.Tensor:
    """y round-tripped through JPEG at ``quality`` (1..100), via uint8 as a stored file would be."""
    decoded = decode_jpeg(encode_jpeg(list(to_uint8(y).cpu()), quality=int(quality)))
    return to_unit_range(torch.stack(decoded).to(y.device), y.dtype)


def corrupt(y: torch.Tensor, kind: str, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """y corrupted by ``kind`` at ``strength`` (0: y unchanged; see the module docstring for the units)."""
    check_strength(kind, strength)
    if strength == 0:
        return y
    if kind == "gaussian_noise":
        return gaussian_noise(y, strength, generator)
    if kind == "blur":
        return gaussian_blur(y, strength)
    return jpeg(y, round(100 - strength))


def check_strength(kind: str, strength: float) -> None:
    if kind not in KINDS:
        raise UserError(f"unknown corruption {kind!r}: use one of {list(KINDS)}")
    if not 0 <= strength <= MAX_STRENGTH[kind] or math.isnan(strength):
        raise UserError(f"{kind} strength {strength}: use 0..{MAX_STRENGTH[kind]:g} (0 = no corruption)")


def check_augmentation(spec: Mapping | None) -> None:
    """Check ``ddpm.conditioning.corruption`` when the refiner is built, so a typo fails before training starts."""
    if spec is None:
        return
    unknown = set(spec) - {"kind", "max_strength", "p"}
    if unknown or "kind" not in spec or "max_strength" not in spec:
        raise UserError(
            f"ddpm.conditioning.corruption={dict(spec)}: give kind (gaussian_noise | blur | jpeg | mixed), max_strength and "
            "optionally p, e.g. {kind: gaussian_noise, max_strength: 0.2, p: 0.5}"
        )
    if not 0 <= spec.get("p", 0.5) <= 1:
        raise UserError(f"ddpm.conditioning.corruption.p={spec['p']}: use a probability in [0, 1]")
    for kind, strength in _max_strengths(spec).items():
        check_strength(kind, strength)


def _max_strengths(spec: Mapping) -> dict[str, float]:
    """{kind: max_strength}: one kind, or for ``mixed`` a mapping of max_strength per kind."""
    kind, max_strength = spec["kind"], spec["max_strength"]
    if kind == "mixed":
        if not isinstance(max_strength, Mapping) or not max_strength:
            raise UserError("corruption kind mixed needs max_strength per kind, e.g. {gaussian_noise: 0.2, blur: 1.0, jpeg: 70}")
        return {k: float(v) for k, v in max_strength.items()}
    if isinstance(max_strength, Mapping):
        raise UserError(f"corruption kind {kind!r} takes one number as max_strength (a mapping per kind is for kind: mixed)")
    return {kind: float(max_strength)}


def random_corruption(y: torch.Tensor, spec: Mapping, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training augmentation: each image, with probability ``p`` (default 0.5), is corrupted by its kind (``mixed``:
    one of the given kinds, uniformly) at a strength drawn uniformly from [0, max_strength]."""
    kinds = _max_strengths(spec)
    names = list(kinds)
    n = len(y)
    chosen = torch.rand(n, generator=generator, device=y.device) < spec.get("p", 0.5)
    which = torch.randint(len(names), (n,), generator=generator, device=y.device)
    fraction = torch.rand(n, generator=generator, device=y.device)
    out = y.clone()
    for index, name in enumerate(names):
        rows = (chosen & (which == index)).nonzero().flatten()
        if not len(rows):
            continue
        strengths = fraction[rows] * kinds[name]
        if name == "gaussian_noise":  # vectorised: one std per image
            out[rows] = gaussian_noise(y[rows], strengths, generator)
        else:
            out[rows] = torch.cat([corrupt(y[i : i + 1], name, float(s)) for i, s in zip(rows.tolist(), strengths.tolist())])
    return out
