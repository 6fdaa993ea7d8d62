"""OpenAI's VDVAE state dicts (github.com/openai/vdvae: ``*-model.th``, ``*-model-ema.th``) to and from ours.

Our HierarchicalVAE computes the same function as VDVAE's ``VAE`` for its RGB, 8-bit presets (checked by
running both on the same images), so a conversion only renames tensors; none is permuted or rescaled:

  VDVAE                                   ours
  encoder.in_conv.*                       encoder.in_conv.*
  encoder.enc_blocks.<i>.c1..c4.*         encoder.blocks.<i>.c1..c4.*
  decoder.dec_blocks.<i>.enc.*            decoder.blocks.<i>.posterior.*
  decoder.dec_blocks.<i>.prior|z_proj|resnet.*   decoder.blocks.<i>.prior|z_proj|resnet.*
  decoder.bias_xs.<j>                     decoder.bias_states.<r>  (r: the j-th smallest resolution with a bias)
  decoder.gain, decoder.bias              decoder.gain, decoder.bias
  decoder.out_net.out_conv.*              likelihood.out_conv.*  (same channel layout: K logits, then per colour
                                                                  channel K means, K log-scales, K coefficients)

What renaming cannot carry is the data preprocessing, hard-coded per data set in VDVAE's data.py; the
importer writes VDVAE's values into the model config (`VDVAE_PIXEL_STATS`).
"""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

import torch

from main.models.vdvae.blocks import BlockSpec, parse_block_string, parse_widths
from main.models.vdvae.vae import HierarchicalVAE
from main.utils.checkpoint import load_tensors_only
from main.utils.errors import UserError

# VDVAE normalises encoder inputs as (x + shift) * scale with per-data-set constants (data.py); as our
# (x - pixel_mean) / pixel_std on 0..255 pixels. FFHQ-1024 works on x / 255, hence the factor 255.
VDVAE_PIXEL_STATS: dict[str, tuple[float, float]] = {
    "cifar10": (120.63838, 64.16736),
    "imagenet32": (116.2373, 69.37404),
    "imagenet64": (115.92961967, 69.37404),
    "ffhq256": (112.8666757481, 69.84780273),
    "ffhq1024": (0.4387 * 255, 0.2743 * 255),
}

_RENAMES = [  # ours -> VDVAE, applied in order; bias_states are renamed separately (they are indexed, not keyed, in VDVAE)
    (re.compile(r"^encoder\.blocks\."), "encoder.enc_blocks."),
    (re.compile(r"^decoder\.blocks\.(\d+)\.posterior\."), r"decoder.dec_blocks.\1.enc."),
    (re.compile(r"^decoder\.blocks\."), "decoder.dec_blocks."),
    (re.compile(r"^likelihood\.out_conv\."), "decoder.out_net.out_conv."),
]
_BIAS_STATE = re.compile(r"^decoder\.bias_states\.(\d+)$")


def check_convertible(model: dict) -> None:
    """Refuse models VDVAE's code cannot express, or whose likelihood differs from VDVAE's.

    Low-bit data (ffhq256, 5 bits): VDVAE scores the targets floor(x / 8) * 8 / 127.5 - 1; the same weights
    give VDVAE's bits/dim only with that level grid (``level_grid: floor``), not with levels spread over [-1, 1].
    """
    if model["channels"] != 3:
        raise UserError(f"VDVAE models RGB images only; this model has {model['channels']} channel(s)")
    if model.get("num_classes", 0):
        raise UserError("VDVAE models are unconditional; this model is class-conditional (its label embeddings have no VDVAE name)")
    if model.get("bits", 8) != 8 and model.get("level_grid", "spread") != "floor":
        raise UserError(
            f"a {model['bits']}-bit model with levels spread over [-1, 1] is not VDVAE's: VDVAE puts them at 8*floor(x/8)/127.5 - 1 "
            "(vae.model.level_grid=floor), so the same weights would give different bits/dim"
        )
    widths = parse_widths(model["width"], model.get("custom_widths"))
    if widths[model["image_size"]] != model["width"]:
        raise UserError(
            f"VDVAE's input conv and output layer use `width` ({model['width']}) channels, but custom_widths gives "
            f"{widths[model['image_size']]} at the image size {model['image_size']}"
        )


def original_name(ours: str, bias_resolutions: list[int]) -> str:
    """VDVAE's name of one of our HierarchicalVAE's state-dict entries."""
    bias = _BIAS_STATE.match(ours)
    if bias:
        return f"decoder.bias_xs.{bias_resolutions.index(int(bias[1]))}"
    for pattern, replacement in _RENAMES:
        if pattern.match(ours):
            return pattern.sub(replacement, ours)
    return ours


def name_map(model: dict) -> dict[str, tuple[str, torch.Size]]:
    """{VDVAE name: (our name, shape)} for a model config (read-only: it is cached)."""
    return _name_map(tuple(sorted(model.items())))


@functools.lru_cache(maxsize=8)
def _name_map(model: tuple) -> dict[str, tuple[str, torch.Size]]:
    """Built on the meta device: no memory, and half a second for a 100M-parameter preset."""
    with torch.device("meta"):
        vae = HierarchicalVAE(**dict(model))
    state = vae.state_dict()
    bias_resolutions = sorted(int(r) for r in vae.decoder.bias_states)
    return {original_name(name, bias_resolutions): (name, tensor.shape) for name, tensor in state.items()}


def original_shapes(model: dict) -> dict[str, torch.Size]:
    """The names and shapes of the state dict VDVAE's code would save for this model config."""
    return {original: shape for original, (_, shape) in name_map(model).items()}


def to_original(vae: HierarchicalVAE) -> dict[str, torch.Tensor]:
    """Our weights as the state dict VDVAE saves (what ``--restore_ema_path`` loads)."""
    bias_resolutions = sorted(int(r) for r in vae.decoder.bias_states)
    return {original_name(name, bias_resolutions): tensor for name, tensor in vae.state_dict().items()}


def from_original(state: dict[str, torch.Tensor], model: dict) -> dict[str, torch.Tensor]:
    """VDVAE's state dict as ours; `check_fits` must have passed."""
    return {ours: state[original] for original, (ours, _) in name_map(model).items()}


def read_original(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a VDVAE weights file without unpickling code; DDP's ``module.`` prefixes are dropped, as VDVAE's loader does."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"VDVAE weights '{path}' do not exist: pass the path of a *-model-ema.th or *-model.th file")
    loaded = load_tensors_only(path, "VDVAE weights", "download it again")
    if isinstance(loaded, dict) and "state_dict" in loaded:
        raise UserError(f"'{path}' is a checkpoint of this project, not VDVAE weights: use it as it is")
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise UserError(
            f"'{path}' is not a VDVAE state dict (tensors named like 'encoder.in_conv.weight'): "
            "pass *-model-ema.th or *-model.th, not *-opt.th"
        )
    return {str(name).removeprefix("module."): tensor for name, tensor in loaded.items()}


def mismatch(file_shapes: dict[str, torch.Size], expected: dict[str, torch.Size]) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, reshaped) names of a file against the expected names and shapes."""
    missing = sorted(set(expected) - set(file_shapes), key=_natural)
    unexpected = sorted(set(file_shapes) - set(expected), key=_natural)
    reshaped = sorted((k for k in set(expected) & set(file_shapes) if expected[k] != file_shapes[k]), key=_natural)
    return missing, unexpected, reshaped


def check_fits(state: dict[str, torch.Tensor], model: dict, source: str, preset: str) -> None:
    """Refuse, in one line, a file whose tensor names or shapes are not those of the model config."""
    file_shapes = {k: v.shape for k, v in state.items()}
    expected = original_shapes(model)
    missing, unexpected, reshaped = mismatch(file_shapes, expected)
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if reshaped:
        name = reshaped[0]
        parts.append(f"{len(reshaped)} of another shape (e.g. {name}: {list(file_shapes[name])} in the file, {list(expected[name])} here)")
    raise UserError(f"'{source}' does not fit VDVAE's {preset} model: {', '.join(parts)}")


def closest_preset(state: dict[str, torch.Tensor], candidates: dict[str, dict]) -> str:
    """Which of the candidate configs (preset name -> model config) the file fits, or comes closest to, in words."""
    file_shapes = {k: v.shape for k, v in state.items()}
    differing = {name: sum(map(len, mismatch(file_shapes, original_shapes(model)))) for name, model in candidates.items()}
    best = min(differing, key=differing.get)
    if differing[best] == 0:
        return f"it fits preset={best}"
    return f"no VDVAE preset fits it; the closest is preset={best} ({differing[best]} tensors differ)"


def fit_encoder_blocks(state: dict[str, torch.Tensor], model: dict) -> str:
    """The model's enc_blocks, with the number of blocks per resolution changed to what the file holds.

    Released files can differ from VDVAE's published hyperparameters in encoder depth (FFHQ-1024). An
    encoder block's weights give its width and kernel, not its resolution, so a changed count is placed
    only where it is unambiguous: a run of blocks of one width and kernel that spans a single resolution.
    Returns the model's own string when the file's encoder is not a recount of it (the name check then says
    what differs); raises when the extra blocks could belong to several resolutions.
    """
    widths = parse_widths(model["width"], model.get("custom_widths"))
    by_resolution: dict[int, list[BlockSpec]] = {}
    for block in parse_block_string(model["enc_blocks"], "encoder"):
        by_resolution.setdefault(block.resolution, []).append(block)
    runs = [(signature, list(group)) for signature, group in itertools.groupby(by_resolution, key=lambda r: (widths[r], 3 if r > 2 else 1))]
    file_runs = [(signature, len(list(group))) for signature, group in itertools.groupby(_encoder_signatures(state))]
    if [signature for signature, _ in runs] != [signature for signature, _ in file_runs]:
        return model["enc_blocks"]
    counts = {r: len(specs) for r, specs in by_resolution.items()}
    for (signature, resolutions), (_, file_count) in zip(runs, file_runs):
        count = sum(counts[r] for r in resolutions)
        if count == file_count:
            continue
        if len(resolutions) > 1:
            raise UserError(
                f"the file has {file_count} encoder blocks of width {signature[0]} where enc_blocks={model['enc_blocks']} has {count}, "
                f"at resolutions {resolutions}; the weights do not say at which resolution the difference is: "
                f"pass an enc_blocks with {file_count} blocks there, as overrides=[vae.model.enc_blocks=...]"
            )
        counts[resolutions[0]] = file_count
    if all(counts[r] == len(specs) for r, specs in by_resolution.items()):
        return model["enc_blocks"]
    entries = []
    for r, specs in by_resolution.items():
        down = specs[-1].down_rate  # the block that pools is the last one at its resolution
        plain = counts[r] - (1 if down else 0)
        entries += [f"{r}x{plain}"] if plain else []
        entries += [f"{r}d{down}"] if down else []
    return ",".join(entries)


def _encoder_signatures(state: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """(width, kernel size) of each encoder block in a VDVAE state dict, in order."""
    signatures = []
    while all(f"encoder.enc_blocks.{len(signatures)}.{conv}.weight" in state for conv in ("c1", "c2")):
        prefix = f"encoder.enc_blocks.{len(signatures)}"
        signatures.append((state[f"{prefix}.c1.weight"].shape[1], state[f"{prefix}.c2.weight"].shape[-1]))
    return signatures


def _natural(name: str) -> list:
    """Sort key that puts block 2 before block 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
