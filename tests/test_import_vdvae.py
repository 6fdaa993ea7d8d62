"""Importing OpenAI's VDVAE weights (main/models/vdvae/original_format.py, main/import_vdvae.py).

The names and shapes of every published preset are checked against an independent description of VDVAE's
architecture; numerics use tiny models: an export/import round trip must be bit-exact. Large "files" are
stride-0 tensors of the right shapes (a few kB). Neither VDVAE's code nor its files are needed: its
agreement with ours was measured by running it (docs/stage_one.md, "Importing OpenAI's VDVAE weights").
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch
from helpers import CONFIGS, ROOT, compose_config, user_error
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from main.evaluation.stage_one import evaluate
from main.import_vdvae import IMPORTED_EMA_UPDATES, export_weights, import_weights
from main.models.vdvae import HierarchicalVAE
from main.models.vdvae.likelihood import MixtureParams
from main.models.vdvae.original_format import (
    VDVAE_PIXEL_STATS,
    check_convertible,
    check_fits,
    closest_preset,
    fit_encoder_blocks,
    original_shapes,
    read_original,
    to_original,
)
from main.systems.stage_one import load_stage_one

# VDVAE's hps.py (openai/vdvae@ea35b49): width, custom_width_str, enc_blocks, dec_blocks, num_mixtures, and the
# parameter count its code reports for each.
PUBLISHED = {
    "cifar10": (
        384, "", "32x11,32d2,16x6,16d2,8x6,8d2,4x3,4d4,1x3", "1x1,4m1,4x2,8m4,8x5,16m8,16x10,32m16,32x21", 10, 39_145_700,
    ),
    "imagenet32": (
        512, "", "32x15,32d2,16x9,16d2,8x8,8d2,4x6,4d4,1x6", "1x2,4m1,4x4,8m4,8x9,16m8,16x19,32m16,32x40", 10, 119_280_868,
    ),
    "imagenet64": (
        512, "", "64x11,64d2,32x20,32d2,16x9,16d2,8x8,8d2,4x7,4d4,1x5",
        "1x2,4m1,4x3,8m4,8x7,16m8,16x15,32m16,32x31,64m32,64x12", 10, 125_005_860,
    ),
    "ffhq256": (
        512, "", "256x3,256d2,128x8,128d2,64x12,64d2,32x17,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
        "1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x21,64m32,64x13,128m64,128x7,256m128", 10, 114_874_852,
    ),
    "ffhq1024": (
        16, "512:32,256:64,128:512,64:512,32:512,16:512,8:512,4:512,1:512",
        "1024x1,1024d2,512x3,512d2,256x5,256d2,128x7,128d2,64x10,64d2,32x14,32d2,16x7,16d2,8x5,8d2,4x5,4d4,1x4",
        "1x2,4m1,4x3,8m4,8x4,16m8,16x9,32m16,32x20,64m32,64x14,128m64,128x7,256m128,256x2,512m256,1024m512", 2, 109_366_904,
    ),
}  # fmt: skip


def block_resolutions(blocks: str) -> list[int]:
    """One resolution per block of a VDVAE block string ("RxN" is N blocks; "RdK", "RmS" and "R" one each)."""
    resolutions = []
    for entry in blocks.split(","):
        if "x" in entry:
            res, count = entry.split("x")
            resolutions += [int(res)] * int(count)
        else:
            resolutions.append(int(entry.replace("d", "m").split("m")[0]))
    return resolutions


def vdvae_shapes(width, custom_widths, enc_blocks, dec_blocks, num_mixtures, zdim=16, no_bias_above=64) -> dict[str, tuple]:
    """VDVAE's VAE(H).state_dict() names and shapes, from its architecture (vae.py, vae_helpers.py):

    Block(in, mid, out) at resolution r: c1 1x1 in->mid, c2 and c3 mid->mid (3x3 if r > 2, else 1x1), c4 1x1 mid->out,
    mid = width_r / 4. Encoder: in_conv 3x3 RGB->width, then Block(w, ., w) per entry. Decoder block: enc = Block(2w, ., 2 zdim),
    prior = Block(w, ., 2 zdim + w), z_proj 1x1 zdim->w, resnet = Block(w, ., w); bias_xs [1, w_r, r, r] for the sorted
    decoder resolutions up to no_bias_above; out_net.out_conv 1x1 width->10 * mixtures; gain and bias [1, width, 1, 1].
    """
    widths = defaultdict(lambda: width, {int(r): int(w) for r, w in (e.split(":") for e in custom_widths.split(",") if e)})
    shapes = {"encoder.in_conv.weight": (width, 3, 3, 3), "encoder.in_conv.bias": (width,)}

    def block(prefix, c_in, c_out, res):
        mid, k = widths[res] // 4, 3 if res > 2 else 1
        for name, c_i, c_o, size in [("c1", c_in, mid, 1), ("c2", mid, mid, k), ("c3", mid, mid, k), ("c4", mid, c_out, 1)]:
            shapes[f"{prefix}.{name}.weight"], shapes[f"{prefix}.{name}.bias"] = (c_o, c_i, size, size), (c_o,)

    for i, res in enumerate(block_resolutions(enc_blocks)):
        block(f"encoder.enc_blocks.{i}", widths[res], widths[res], res)
    decoder_resolutions = block_resolutions(dec_blocks)
    for i, res in enumerate(decoder_resolutions):
        w = widths[res]
        block(f"decoder.dec_blocks.{i}.enc", 2 * w, 2 * zdim, res)
        block(f"decoder.dec_blocks.{i}.prior", w, 2 * zdim + w, res)
        shapes[f"decoder.dec_blocks.{i}.z_proj.weight"], shapes[f"decoder.dec_blocks.{i}.z_proj.bias"] = (w, zdim, 1, 1), (w,)
        block(f"decoder.dec_blocks.{i}.resnet", w, w, res)
    for j, res in enumerate(r for r in sorted(set(decoder_resolutions)) if r <= no_bias_above):
        shapes[f"decoder.bias_xs.{j}"] = (1, widths[res], res, res)
    shapes["decoder.out_net.out_conv.weight"], shapes["decoder.out_net.out_conv.bias"] = (
        (10 * num_mixtures, width, 1, 1),
        (10 * num_mixtures,),
    )
    shapes["decoder.gain"] = shapes["decoder.bias"] = (1, width, 1, 1)
    return shapes


def shapes_only(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Tensors of these shapes that hold one number each (stride 0): a file of a 100M-parameter model in kB."""
    return {name: torch.zeros(()).expand(shape) for name, shape in shapes.items()}


def preset_model(preset: str) -> dict:
    return OmegaConf.to_container(compose_config("train_ae", [f"dataset={preset}", f"vae={preset}"]).vae.model, resolve=True)


# ---- names and shapes of the published presets -----------------------------------------------------------
@pytest.mark.parametrize("preset", list(PUBLISHED))
def test_every_published_preset_maps_onto_vdvaes_names_and_shapes(preset):
    width, custom, enc, dec, mixtures, n_params = PUBLISHED[preset]
    expected = vdvae_shapes(width, custom, enc, dec, mixtures)
    assert sum(math.prod(s) for s in expected.values()) == n_params  # the description itself matches VDVAE's counts
    assert original_shapes(preset_model(preset)) == expected


def test_a_file_of_another_preset_is_refused_naming_the_preset_it_fits():
    imagenet32 = shapes_only(vdvae_shapes(*PUBLISHED["imagenet32"][:5]))
    message = user_error(check_fits, imagenet32, preset_model("cifar10"), "i32.th", "cifar10")
    assert message.startswith("'i32.th' does not fit VDVAE's cifar10 model: ")
    assert "tensors missing" not in message and "unexpected (e.g. decoder.dec_blocks.43.enc.c1.bias)" in message
    assert "of another shape (e.g. decoder.bias: [1, 512, 1, 1] in the file, [1, 384, 1, 1] here)" in message
    candidates = {p: preset_model(p) for p in ("cifar10", "imagenet32", "imagenet64")}
    assert closest_preset(imagenet32, candidates) == "it fits preset=imagenet32"
    del imagenet32["decoder.gain"]
    assert closest_preset(imagenet32, candidates) == "no VDVAE preset fits it; the closest is preset=imagenet32 (1 tensors differ)"


def test_output_layer_reads_vdvaes_channel_layout():
    """The importer copies out_net.out_conv unchanged, so our likelihood must read its channels as VDVAE does:
    K logits, then per colour c (R, G, B) K means, K log-scales, K coefficients (discretized_mix_logistic_loss)."""
    k = 4
    raw = torch.arange(10 * k, dtype=torch.float32).reshape(1, 10 * k, 1, 1) / 100  # channel i holds i / 100
    params = MixtureParams(raw, channels=3, num_mixtures=k)
    assert torch.equal(params.logits.flatten(), raw[0, :k, 0, 0])
    for c in range(3):
        first = k + 3 * k * c
        assert torch.equal(params.means[0, c].flatten(), raw[0, first : first + k, 0, 0])
        assert torch.equal(params.log_scales[0, c].flatten(), raw[0, first + k : first + 2 * k, 0, 0])
        assert torch.equal(params.coeffs[0, c].flatten(), torch.tanh(raw[0, first + 2 * k : first + 3 * k, 0, 0]))


# ---- FFHQ-1024: encoder depth read from the file -----------------------------------------------------------
FFHQ1024_ENC = PUBLISHED["ffhq1024"][2]


@pytest.mark.parametrize(
    ("file_enc_blocks"),
    [
        FFHQ1024_ENC,
        FFHQ1024_ENC.replace("1024x1,", "1024x3,"),  # width 16: only 1024 px
        FFHQ1024_ENC.replace("512x3,", "512x5,"),  # width 32: only 512 px
        FFHQ1024_ENC.replace("1x4", "1x6"),  # width 512 with 1x1 kernels: only 1 px
        FFHQ1024_ENC.replace("256x5,", "256x4,").replace("1x4", "1x7"),
    ],
)
def test_ffhq1024_encoder_depth_is_fitted_to_the_file_where_unambiguous(file_enc_blocks):
    width, custom, _, dec, mixtures, _ = PUBLISHED["ffhq1024"]
    released = shapes_only(vdvae_shapes(width, custom, file_enc_blocks, dec, mixtures))
    model = preset_model("ffhq1024")
    fitted = fit_encoder_blocks(released, model)
    assert fitted == file_enc_blocks
    check_fits(released, {**model, "enc_blocks": fitted}, "released.th", "ffhq1024")


def test_extra_encoder_blocks_at_an_ambiguous_resolution_ask_for_enc_blocks():
    """Blocks of width 512 with 3x3 kernels run at 128 to 4 px: the weights cannot say which."""
    width, custom, _, dec, mixtures, _ = PUBLISHED["ffhq1024"]
    released = shapes_only(vdvae_shapes(width, custom, FFHQ1024_ENC.replace("64x10,", "64x12,"), dec, mixtures))
    message = user_error(fit_encoder_blocks, released, preset_model("ffhq1024"))
    assert "56 encoder blocks of width 512" in message and "has 54, at resolutions [128, 64, 32, 16, 8, 4]" in message
    assert message.endswith("as overrides=[vae.model.enc_blocks=...]")


# ---- tiny models: import, round trip, evaluation ------------------------------------------------------------
TINY = {
    "vae.model.width": 16,
    "vae.model.zdim": 4,
    "vae.model.num_mixtures": 2,
    "vae.model.enc_blocks": "'32x1,32d2,16x1,16d2,8x1,8d2,4x1,4d4,1x1'",
    "vae.model.dec_blocks": "'1x1,4m1,4x1,8m4,8x1,16m8,16x1,32m16,32x1'",
}


def tiny_model(preset: str, tiny: dict, **changes) -> dict:
    """The model config the importer writes for a preset with these overrides (VDVAE's input normalisation)."""
    model = compose_config("train_ae", [f"dataset={preset}", f"vae={preset}", *(f"{k}={v}" for k, v in tiny.items())]).vae.model
    pixel_mean, pixel_std = VDVAE_PIXEL_STATS[preset]
    return {**OmegaConf.to_container(model, resolve=True), "pixel_mean": pixel_mean, "pixel_std": pixel_std, **changes}


def overrides(**stage_one) -> str:
    return "overrides=[" + ",".join(f'"{key}={value}"' for key, value in stage_one.items()) + "]"


def run(function, *settings: str):
    """Call import_weights / export_weights with the import_vdvae config and these overrides (inside Hydra, as the CLI)."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return function(compose("import_vdvae", list(settings)))


def perturbed(model: dict, seed: int) -> HierarchicalVAE:
    """A model with noise on every weight, so zero-initialised parts (the prior's last conv, gain, bias states) matter."""
    torch.manual_seed(seed)
    vae = HierarchicalVAE(**model)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vae.eval()


def losses(vae: HierarchicalVAE, x: torch.Tensor, seed: int = 3) -> torch.Tensor:
    """[loss, distortion, rate] x images, with the posterior draws of a seed."""
    torch.manual_seed(seed)
    with torch.no_grad():
        elbo = vae(x)
    return torch.stack([elbo.loss, elbo.distortion, elbo.rate])


BATCH = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """VDVAE-format files of two tiny models (weights with DDP's module. prefix, EMA without), imported as preset cifar10."""
    tmp = tmp_path_factory.mktemp("vdvae")
    model = tiny_model("cifar10", TINY)
    weights, ema = perturbed(model, seed=1), perturbed(model, seed=2)
    torch.save({f"module.{k}": v for k, v in to_original(weights).items()}, tmp / "tiny-model.th")
    torch.save(to_original(ema), tmp / "tiny-model-ema.th")
    ckpt = tmp / "run" / "checkpoints" / "last.ckpt"
    run(
        import_weights,
        "preset=cifar10",
        f"weights={tmp / 'tiny-model.th'}",
        f"ema_weights={tmp / 'tiny-model-ema.th'}",
        f"out={ckpt}",
        overrides(**TINY),
    )
    return {"dir": tmp, "ckpt": ckpt, "weights": weights, "ema": ema}


def test_imported_checkpoint_has_the_files_weights_and_its_config(imported):
    system, checkpoint = load_stage_one(imported["ckpt"])
    assert checkpoint["stage"] == "vae" and checkpoint["hyper_parameters"]["autoencoder"] is None  # pixel space
    expected = {"model", "optim", "data", "label_dropout", "autoencoder", "activation_checkpointing", "preview_temperature"}
    assert set(checkpoint["hyper_parameters"]) == expected and not checkpoint["hyper_parameters"]["activation_checkpointing"]
    model = checkpoint["hyper_parameters"]["model"]
    assert (model["pixel_mean"], model["pixel_std"]) == VDVAE_PIXEL_STATS["cifar10"]
    assert checkpoint["hyper_parameters"]["data"]["name"] == "cifar10"
    assert checkpoint["imported_from"]["ema_weights"].endswith("tiny-model-ema.th")
    for ours, source in [(system.vae, imported["weights"]), (system.ema_vae, imported["ema"])]:
        state, expected = ours.state_dict(), source.state_dict()
        assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
        assert torch.equal(losses(ours, BATCH), losses(source, BATCH))
    assert not torch.equal(losses(system.vae, BATCH), losses(system.ema_vae, BATCH))
    assert int(system.ema.n_averaged) == IMPORTED_EMA_UPDATES


def test_export_then_import_is_bit_exact(imported, tmp_path):
    run(export_weights, f"export={imported['ckpt']}", f"out={tmp_path / 'exported'}")
    for exported, original in [("exported-model.th", "tiny-model.th"), ("exported-model-ema.th", "tiny-model-ema.th")]:
        ours, theirs = read_original(tmp_path / exported), read_original(imported["dir"] / original)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = tmp_path / "again.ckpt"
    run(import_weights, "preset=cifar10", f"weights={tmp_path / 'exported-model-ema.th'}", f"out={again}", overrides(**TINY))
    first, _ = load_stage_one(imported["ckpt"])
    second, _ = load_stage_one(again)
    assert torch.equal(losses(second.vae, BATCH), losses(first.ema_vae, BATCH))
    assert torch.equal(losses(second.ema_vae, BATCH), losses(first.ema_vae, BATCH))


def test_imported_checkpoint_evaluates_with_test_ae(imported, tmp_path):
    """test_ae's bits/dim (EMA weights) on a small CIFAR-10-format test set, and samples."""
    images = torch.randint(0, 256, (12, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)).numpy()
    for split, n in [("train", 12), ("test", 8)]:
        np.savez(tmp_path / f"cifar10_{split}.npz", images=images[:n], labels=np.arange(n) % 10)
    cfg = compose_config(
        "test_ae",
        [f"checkpoint={imported['ckpt']}", f"out_dir={tmp_path / 'eval'}", "tasks=[bpd,samples]", "samples.n=4", "num_workers=0"]
        + ["batch_size=8", "device=cpu", f"+dataset.root={tmp_path}", "+dataset.val_size=2"],
    )
    metrics = evaluate(cfg)["metrics"]
    x = torch.from_numpy(images[:8]).permute(0, 3, 1, 2)
    draws = torch.stack([losses(imported["ema"], x, seed).mean(1)[0] / math.log(2) for seed in range(10)])  # posterior draws vary
    assert abs(metrics["test_bpd"] - float(draws.mean())) < 4 * float(draws.std())
    assert metrics["n_params"] == sum(p.numel() for p in imported["ema"].parameters())
    assert len(list((tmp_path / "eval" / "samples").glob("*.png"))) == 4


def test_ffhq1024_file_with_extra_encoder_blocks_imports_with_fitted_enc_blocks(tmp_path):
    """A tiny FFHQ-1024-shaped model (widths differ per resolution) whose file has two more 1024 px encoder blocks."""
    tiny = {
        "vae.model.width": 4,
        "vae.model.custom_widths": "'512:6,256:8,128:8,64:8,32:8,16:8,8:8,4:8,1:8'",
        "vae.model.zdim": 2,
        "vae.model.enc_blocks": "'1024x1,1024d2,512x1,512d2,256d4,64d8,8d2,4d4,1x1'",
        "vae.model.dec_blocks": "'1x1,4m1,8m4,64m8,256m64,512m256,1024m512'",
    }
    model = tiny_model("ffhq1024", tiny, enc_blocks="1024x3,1024d2,512x1,512d2,256d4,64d8,8d2,4d4,1x1")
    released = perturbed(model, seed=4)
    torch.save(to_original(released), tmp_path / "released-model-ema.th")
    run(import_weights, "preset=ffhq1024", f"weights={tmp_path / 'released-model-ema.th'}", f"out={tmp_path / 'i.ckpt'}", overrides(**tiny))
    system, checkpoint = load_stage_one(tmp_path / "i.ckpt")
    assert checkpoint["hyper_parameters"]["model"]["enc_blocks"] == model["enc_blocks"]
    assert checkpoint["imported_from"]["preset_enc_blocks"] == "1024x1,1024d2,512x1,512d2,256d4,64d8,8d2,4d4,1x1"
    state, expected = system.ema_vae.state_dict(), released.state_dict()  # same architecture and weights: the same function
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


# ---- refusals ---------------------------------------------------------------------------------------------
def test_unreadable_files_are_refused_in_one_line(imported, tmp_path):
    assert "do not exist" in user_error(read_original, tmp_path / "missing-model-ema.th")
    truncated = tmp_path / "truncated.th"
    truncated.write_bytes((imported["dir"] / "tiny-model-ema.th").read_bytes()[:5000])
    assert "is truncated or corrupt" in user_error(read_original, truncated)
    marker = tmp_path / "code-ran"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    crafted = tmp_path / "crafted-model-ema.th"
    torch.save({"encoder.in_conv.weight": RunsCode()}, crafted)
    assert "holds objects other than tensors" in user_error(read_original, crafted)
    assert not marker.exists()
    torch.save({"state": {}, "param_groups": [{"lr": 1e-4}]}, tmp_path / "opt.th")
    assert "not a VDVAE state dict" in user_error(read_original, tmp_path / "opt.th")
    assert "is a checkpoint of this project" in user_error(read_original, imported["ckpt"])


def test_models_vdvae_cannot_express_are_refused():
    model = preset_model("ffhq256")
    assert "5-bit model with levels spread over [-1, 1] is not VDVAE's" in user_error(check_convertible, model)
    check_convertible({**model, "level_grid": "floor"})  # VDVAE's 5-bit grid
    assert "RGB images only" in user_error(check_convertible, {**model, "bits": 8, "channels": 1})
    assert "unconditional" in user_error(check_convertible, {**model, "bits": 8, "num_classes": 10})
    assert "gives 64 at the image size" in user_error(check_convertible, {**model, "bits": 8, "custom_widths": "256:64"})
    check_convertible({**model, "bits": 8})


def test_cli_prints_one_error_line_and_exits_2(tmp_path):
    """A file of VDVAE's ImageNet-32 model imported as CIFAR-10: one line that names the preset it fits."""
    imagenet32 = tmp_path / "imagenet32-model-ema.th"
    torch.save(shapes_only(vdvae_shapes(*PUBLISHED["imagenet32"][:5])), imagenet32)
    result = subprocess.run(
        [sys.executable, "main/import_vdvae.py", "preset=cifar10", f"weights={imagenet32}", f"out={tmp_path / 'out.ckpt'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out.ckpt").exists()
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: '{imagenet32}' does not fit VDVAE's cifar10 model: ")
    assert error.endswith("; it fits preset=imagenet32")
