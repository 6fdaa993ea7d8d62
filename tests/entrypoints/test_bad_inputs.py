"""A census of the bad inputs a user can give: each one, through the command line, prints ONE line naming the
problem and the fix, and exits with status 2.

The entry points run in this process (as `python main/<entry>.py ...` would run them, `__main__` block
included) to keep the census fast; tests/entrypoints/test_cli.py runs a few as real processes.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from helpers import ROOT, TINY_DIGITS, TINY_REFINER, tiny_refiner_config, tiny_train_config
from PIL import Image

from main.train_ae import train as train_stage_one
from main.train_ddpm import train as train_refiner


def cli(script: str, *args: str, capsys, monkeypatch) -> tuple[int, str]:
    """Run main/<script> with args as its command line; returns (exit status, stderr)."""
    path = ROOT / "main" / script
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    with pytest.raises(SystemExit) as exited:
        exec(compile(path.read_text(), str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})
    return exited.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints of both stages (good and spoilt) and data files (good and spoilt) for the cases below."""
    root = tmp_path_factory.mktemp("files")
    vae = train_stage_one(tiny_train_config(root / "vae", "trainer.max_steps=1", "trainer.val_check_interval=1"))
    refiner = train_refiner(tiny_refiner_config(root / "refiner", vae, "trainer.max_steps=1", "trainer.val_check_interval=1"))
    checkpoint = torch.load(vae, weights_only=True)
    del checkpoint["state_dict"]["vae.encoder.in_conv.weight"]
    torch.save(checkpoint, root / "edited.ckpt")
    (root / "truncated.ckpt").write_bytes(vae.read_bytes()[:2000])
    torch.save({"state_dict": {}, "stage": "vae", "payload": Exploit()}, root / "crafted.ckpt")
    torch.save({"weights": torch.zeros(3)}, root / "foreign.ckpt")
    (root / "empty").mkdir()
    (root / "no_images").mkdir()
    (root / "no_images" / "notes.txt").write_text("no images here")
    (root / "corrupt" / "train").mkdir(parents=True)
    (root / "corrupt" / "test").mkdir()
    for split in ("train", "test"):
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(root / "corrupt" / split / f"{i}.png")
    (root / "corrupt" / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    np.savez(root / "small.npz", images=np.zeros((20, 16, 16, 3), dtype=np.uint8))
    np.savez(root / "gray.npz", images=np.zeros((20, 32, 32), dtype=np.uint8))
    np.savez(root / "rgba.npz", images=np.zeros((20, 32, 32, 4), dtype=np.uint8))
    np.savez(root / "three.npz", images=np.zeros((3, 32, 32, 3), dtype=np.uint8))  # 5% held out of 3 images: none
    crush_compressed_stream(root / "crushed.npz")
    np.save(root / "objects.npy", np.array([Exploit(), Exploit()], dtype=object), allow_pickle=True)
    np.save(root / "words.npy", np.array(["yes", "no"]))
    (root / "samples_out" / "samples").mkdir(parents=True)
    (root / "samples_out" / "samples" / "000000.png").write_bytes(b"an earlier sample")
    return {"vae": vae, "refiner": refiner, "root": root}


class Exploit:
    """A pickle that would run code when loaded."""

    def __reduce__(self):
        return (print, ("this ran code",))


def crush_compressed_stream(path):
    """An np.savez_compressed archive whose zip entries are intact but whose deflate stream of 'images' is not."""
    np.savez_compressed(path, images=np.zeros((20, 32, 32, 3), dtype=np.uint8))
    info = zipfile.ZipFile(path).getinfo("images.npy")
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_length + extra_length  # the first bytes of the stream: a block type that does not exist
    data[start : start + 4] = b"\xff" * 4
    path.write_bytes(data)


# (entry point, command-line arguments, key words of the one line); {vae}, {refiner}, {root} name the files above.
TRAIN = [*TINY_DIGITS, "trainer.max_steps=1", "trainer.val_check_interval=1"]
IMAGES_32 = [*TRAIN, "vae=cifar10_cpu"]  # the 32-pixel model of the folder and npz presets, made tiny
CASES = {
    "unknown data set": ("train_ae.py", [*TRAIN, "dataset=mnist"], ["unknown dataset 'mnist'", "use one of", "cifar10"]),
    "unknown stage-one preset": ("train_ae.py", [*TRAIN, "vae=huge"], ["unknown vae 'huge'", "cifar10_cpu"]),
    "unknown refiner preset": ("train_ddpm.py", ["stage_one={vae}", "ddpm=huge"], ["unknown ddpm 'huge'", "cifar10_cpu"]),
    "unknown sampler": ("test_ddpm.py", ["checkpoint={refiner}", "sampler=euler"], ["unknown sampler 'euler'", "ddim"]),
    "data root missing": (
        "train_ae.py",
        [*IMAGES_32, "dataset=cifar10", "dataset.root=/nonexistent/cifar"],
        ["/nonexistent/cifar' does not exist", "set dataset.root=<path>"],
    ),
    "data root not set": ("train_ae.py", [*IMAGES_32, "dataset=folder"], ["dataset.root is not set", "dataset.root=<path>"]),
    "data root empty": ("train_ae.py", [*IMAGES_32, "dataset=folder", "dataset.root={root}/empty"], ["is empty", "put the images there"]),
    "data root without images": (
        "train_ae.py",
        [*IMAGES_32, "dataset=folder", "dataset.root={root}/no_images"],
        ["no image files", "set dataset.root to a folder of images"],
    ),
    "images of the wrong size": (
        "train_ae.py",
        [*IMAGES_32, "dataset=npz", "dataset.root={root}/small.npz"],
        ["images are 16x16 but dataset.image_size=32", "set dataset.image_size=16"],
    ),
    "images with the wrong channel count": (
        "train_ae.py",
        [*IMAGES_32, "dataset=npz", "dataset.root={root}/gray.npz"],
        ["images have 1 channel(s) but dataset.channels=3", "set dataset.channels=1"],
    ),
    "unreadable image file": (
        "train_ae.py",
        [*IMAGES_32, "dataset=folder", "dataset.root={root}/corrupt"],
        ["1 unreadable image file(s) in the train split", "broken.png", "dataset.on_bad_file=skip"],
    ),
    "bad on_bad_file setting": (
        "train_ae.py",
        [*IMAGES_32, "dataset=folder", "dataset.root={root}/corrupt", "dataset.on_bad_file=ignore"],
        ["dataset.on_bad_file='ignore' is not valid", "use skip or error"],
    ),
    "labels beyond num_classes": (
        "train_ae.py",
        [*TRAIN, "dataset.num_classes=5"],
        ["labels go up to 9 but dataset.num_classes=5", "set dataset.num_classes=10"],
    ),
    "invalid block string": ("train_ae.py", [*TRAIN, "vae.model.enc_blocks=8y3"], ["bad encoder block string entry '8y3'", "RxN"]),
    "blocks that do not reach the data's resolution": (
        "train_ae.py",
        [*TRAIN, "vae.model.dec_blocks='1x1,4m1,4x3'"],
        ["dec_blocks end at resolution 4, but images are 8x8"],
    ),
    "block string with unquoted commas": (
        "train_ae.py",
        [*TRAIN, "vae.model.dec_blocks=1x1,4m1,4x3"],
        ["the commas would make several runs", "vae.model.dec_blocks='1x1,4m1,4x3'"],
    ),
    "override Hydra cannot parse": (
        "train_ae.py",
        [*TRAIN, "trainer.max_steps=[1"],
        ["cannot read 'trainer.max_steps=[1'", "override_grammar"],
    ),
    "stage one for another resolution than the data": (
        "train_ddpm.py",
        [*TINY_REFINER, "stage_one={vae}", "dataset=cifar10", "ddpm=digits"],
        ["models 1x8x8 images but data set 'cifar10' has 3x32x32", "use the data set stage one was trained on"],
    ),
    "training steps out of range": ("train_ae.py", [*TRAIN, "trainer.max_steps=-5"], ["max_steps", "must be a non-negative integer or -1"]),
    "validation interval out of range": (
        "train_ddpm.py",
        [*TINY_REFINER, "stage_one={vae}", "trainer.val_check_interval=0"],
        ["val_check_interval"],
    ),
    "batch size out of range": ("train_ae.py", [*TRAIN, "vae.batch_size=0"], ["batch_size=0", "positive"]),
    "sample temperature out of range": (
        "test_ae.py",
        ["checkpoint={vae}", "tasks=[samples]", "samples.temperature=-1", "out_dir={tmp}"],
        ["temperature values must be in [0, 10]"],
    ),
    "sampler steps out of range": (
        "test_ddpm.py",
        ["checkpoint={refiner}", "sampler.steps=0", "samples.n=2", "out_dir={tmp}"],
        ["number of sampling steps must be an integer in [1, 100]"],
    ),
    "16-mixed on the CPU": (
        "train_ae.py",
        [*TRAIN, "trainer.precision=16-mixed"],
        ["trainer.precision=16-mixed", "needs a GPU", "use trainer.precision=bf16-mixed or 32"],
    ),
    "seed numpy cannot take": ("train_ae.py", [*TRAIN, "seed=-1"], ["seed=-1 is not a seed", "use a whole number from 0 to 4294967295"]),
    "unknown accelerator": (
        "train_ae.py",
        [*TRAIN, "trainer.accelerator=banana"],
        ["trainer.accelerator=banana is not an accelerator", "use one of auto, gpu, cpu, cuda, mps, tpu"],
    ),
    "accelerator the machine lacks": (
        "train_ddpm.py",
        [*TINY_REFINER, "stage_one={vae}", "trainer.accelerator=tpu"],
        ["trainer.accelerator=tpu cannot run on this machine", "use trainer.accelerator=auto or cpu"],
    ),
    "16-mixed on the CPU, autoencoder": (
        "train_autoencoder.py",
        ["dataset=digits", "trainer.max_steps=1", "trainer.precision=16-mixed"],
        ["trainer.precision=16-mixed", "needs a GPU"],
    ),
    "stage-one checkpoint not given": ("train_ddpm.py", [*TINY_REFINER], ["stage_one is not set", "stage_one=<value>"]),
    "stage-one checkpoint missing": (
        "train_ddpm.py",
        [*TINY_REFINER, "stage_one=/nonexistent/vae.ckpt"],
        ["checkpoint '/nonexistent/vae.ckpt' does not exist", "pass the path of a .ckpt file"],
    ),
    "refiner checkpoint given as stage one": (
        "train_ddpm.py",
        [*TINY_REFINER, "stage_one={refiner}"],
        ["is of stage 'ddpm', but this command needs a 'vae' checkpoint"],
    ),
    "stage-one checkpoint given to the refiner's sampling": (
        "test_ddpm.py",
        ["checkpoint={vae}", "out_dir={tmp}"],
        ["is of stage 'vae', but this command needs a 'ddpm' checkpoint"],
    ),
    "checkpoint of another architecture": (
        "test_ae.py",
        ["checkpoint={root}/edited.ckpt", "out_dir={tmp}"],
        ["does not match the architecture its config describes", "1 missing"],
    ),
    "truncated checkpoint": ("test_ae.py", ["checkpoint={root}/truncated.ckpt", "out_dir={tmp}"], ["is truncated or corrupt"]),
    "checkpoint that would run code": (
        "test_ae.py",
        ["checkpoint={root}/crafted.ckpt", "out_dir={tmp}"],
        ["holds objects other than tensors and plain data", "loading it could run code"],
    ),
    "file that is no checkpoint of ours": (
        "test_ae.py",
        ["checkpoint={root}/foreign.ckpt", "out_dir={tmp}"],
        ["is not a checkpoint of this project"],
    ),
    "output folder already holds samples": (
        "test_ae.py",
        ["checkpoint={vae}", "tasks=[samples]", "samples.n=2", "out_dir={root}/samples_out"],
        ["already holds results", "pass overwrite=true"],
    ),
    "run folder already holds checkpoints": ("train_ae.py", [*TRAIN, "run_dir={root}/vae"], ["already holds checkpoints", "resume=true"]),
    "resume without a checkpoint": ("train_ae.py", [*TRAIN, "resume=true"], ["resume=true but", "does not exist"]),
    "npz corrupt inside its compressed stream": (
        "train_ae.py",
        [*IMAGES_32, "dataset=npz", "dataset.root={root}/crushed.npz"],
        ["cannot read array 'images'", "invalid block type", "replace it with a valid .npz file"],
    ),
    "npz of RGBA images": (
        "train_ae.py",
        [*IMAGES_32, "dataset=npz", "dataset.root={root}/rgba.npz"],
        ["images have 4 channel(s)", "save them as RGB or grayscale", "images[..., :3]"],
    ),
    "npz too small for its held-out splits": (
        "train_ae.py",
        [*IMAGES_32, "dataset=npz", "dataset.root={root}/three.npz"],
        ["has 3 images, split into 3 train, 0 val, 0 test", "set dataset.val_size=1 dataset.test_size=1"],
    ),
    "attributes .npy of objects (not unpickled)": (
        "control.py",
        ["checkpoint={vae}", "attribute.attributes_file={root}/objects.npy", "attribute.n_images=2", "out_dir={tmp}"],
        ["cannot read", "objects.npy", "Object arrays cannot be loaded", "save the attributes with np.save as numbers"],
    ),
    "attributes .npy of words": (
        "control.py",
        ["checkpoint={vae}", "attribute.attributes_file={root}/words.npy", "attribute.n_images=2", "out_dir={tmp}"],
        ["holds a 1-D <U3 array", "save 0/1 numbers"],
    ),
    "no samples asked": (
        "test_ae.py",
        ["checkpoint={vae}", "tasks=[samples]", "samples.n=0", "out_dir={tmp}"],
        ["samples.n=0 is not valid"],
    ),
    "evaluation batch size 0": ("test_ddpm.py", ["checkpoint={refiner}", "samples.n=2", "batch_size=0", "out_dir={tmp}"], ["batch_size=0"]),
    "negative learning rate (stage one)": ("train_ae.py", [*TRAIN, "vae.optim.lr=-1"], ["vae.optim.lr=-1 is not valid", "positive"]),
    "negative learning rate (refiner)": (
        "train_ddpm.py",
        [*TINY_REFINER, "stage_one={vae}", "ddpm.optim.lr=-0.1"],
        ["ddpm.optim.lr=-0.1 is not valid", "positive"],
    ),
    "negative gradient clip (would train backwards)": ("train_ae.py", [*TRAIN, "vae.optim.grad_clip=-1"], ["vae.optim.grad_clip=-1"]),
    "no grid images asked": ("train_ae.py", [*TRAIN, "samples.every_n_steps=1", "samples.n=0"], ["samples.n=0", "samples.every_n_steps=0"]),
    "block string written as a list": ("train_ae.py", [*TRAIN, "vae.model.enc_blocks=[8,4]"], ["are not a block string", "'32x3,32d2'"]),
    "UNet width GroupNorm cannot split": (
        "train_ddpm.py",
        [*TINY_REFINER, "stage_one={vae}", "ddpm.unet.model_channels=12"],
        ["UNet widths [12, 12, 24]", "multiples of ddpm.unet.norm_groups=8"],
    ),
    "reconstruction k that is no number": (
        "test_ae.py",
        ["checkpoint={vae}", "tasks=[reconstructions]", "reconstructions.k=[two]", "out_dir={tmp}"],
        ["reconstructions.k='two'", "use 'all', an integer 0..10", "'<R>px'"],
    ),
    "bits/dim on a split it does not score": (
        "test_ae.py",
        ["checkpoint={vae}", "tasks=[bpd]", "bpd.split=train", "out_dir={tmp}"],
        ["use test or val"],
    ),
    "evaluation seed numpy cannot take": (
        "test_ddpm.py",
        ["checkpoint={refiner}", "seed=abc", "out_dir={tmp}"],
        ["seed=abc is not a seed", "use a whole number from 0 to 4294967295"],
    ),
    "device that does not exist": ("test_ae.py", ["checkpoint={vae}", "device=tpu", "out_dir={tmp}"], ["device='tpu' is not a device"]),
    "CUDA device the machine lacks": (
        "control.py",
        ["checkpoint={vae}", "device=cuda:99", "out_dir={tmp}"],
        ["device=cuda:99 is not on this machine"],
    ),
    "no interpolation pairs": (
        "test_ddpm.py",
        ["checkpoint={refiner}", "tasks=[interpolation]", "interpolation.pairs=0", "out_dir={tmp}"],
        ["interpolation.pairs=0"],
    ),
    "no example rows": ("noisy_conditioning.py", ["checkpoint={refiner}", "n=2", "examples=0", "out_dir={tmp}"], ["examples=0"]),
    "unknown split of the attribute images": (
        "control.py",
        ["checkpoint={vae}", "attribute.split=holdout", "out_dir={tmp}"],
        ["unknown split 'holdout'", "train, val or test"],
    ),
    "sampling devices the machine lacks": (
        "test_ddpm.py",
        ["checkpoint={refiner}", "devices=0", "out_dir={tmp}"],
        ["accelerator=auto devices=0"],
    ),
}

# A misspelt key on every Hydra entry point: (entry point, its required settings, the typo, the key it names).
TYPOS = {
    "train_ae.py": ([], "trainer.max_step=5", "trainer.max_steps"),
    "train_ddpm.py": (["stage_one={vae}"], "conditioning.k=2", "ddpm.conditioning.k"),
    "train_autoencoder.py": ([], "autoencoder.optim.lrr=0.1", "autoencoder.optim.lr"),
    "test_ae.py": (["checkpoint={vae}"], "samples.tempreature=0.5", "samples.temperature"),
    "test_ddpm.py": (["checkpoint={refiner}"], "sampler.stpes=3", "sampler.steps"),
    "control.py": (["checkpoint={vae}"], "attribute.strenghts=[1]", "attribute.strengths"),
    "noisy_conditioning.py": (["checkpoint={refiner}"], "corruptions.blurr=[1]", "corruptions.blur"),
    "import_vdvae.py": (["out={tmp}/x.ckpt"], "overwrit=true", "overwrite"),
}
CASES |= {
    f"misspelt key ({script})": (script, [*required, typo], [f"unknown key '{typo.partition('=')[0]}': did you mean {key}?"])
    for script, (required, typo, key) in TYPOS.items()
}


# Gaps in files this census may not change: they fail until fixed there (strict xfail).
GAPS: dict[str, str] = {}  # cases known to fail, with the reason (none left)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.xfail(reason=GAPS[c], strict=True)) if c in GAPS else c for c in CASES])
def test_bad_input_gives_one_line_and_status_2(case, files, tmp_path, capsys, monkeypatch):
    script, args, words = CASES[case]
    names = {"vae": files["vae"], "refiner": files["refiner"], "root": files["root"], "tmp": tmp_path / "out"}
    args = [arg.format(**names) for arg in args]
    where = [f"run_dir={tmp_path / 'run'}", "name=test"] if script.startswith("train_") else []
    status, stderr = cli(script, *where, *args, f"hydra.run.dir={tmp_path}", capsys=capsys, monkeypatch=monkeypatch)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1, stderr[-2000:]
    assert "Traceback" not in stderr
    for word in words:
        assert word in errors[0], errors[0]


def test_checkpoint_paths_hydra_would_misread_work(files, tmp_path, monkeypatch):
    """'=', a comma, a quote and non-ASCII letters in the path: quoted for Hydra's grammar, so the command runs, and
    the default out_dir (beside the run's checkpoints/) is found from it."""
    run_dir = tmp_path / "lr=0.1, ü's run"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(files["vae"], run_dir / "checkpoints" / "last.ckpt")
    path = ROOT / "main" / "test_ae.py"
    args = [f"checkpoint={run_dir / 'checkpoints' / 'last.ckpt'}", "tasks=[samples]", "samples.n=2", f"hydra.run.dir={tmp_path}"]
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    exec(compile(path.read_text(), str(path), "exec"), {"__name__": "__main__", "__file__": str(path)})
    assert len(list((run_dir / "eval" / "samples").glob("*.png"))) == 2


def test_scripts_take_a_checkpoint_path_with_an_equals_sign(tmp_path):
    """scripts/_env.sh's need_checkpoint: an existing file is the checkpoint whatever its name; key=value is not."""
    checkpoint = tmp_path / "lr=0.1" / "last.ckpt"
    checkpoint.parent.mkdir()
    checkpoint.touch()
    function = re.search(r"^need_checkpoint\(\) \{$.*?^\}$", (ROOT / "scripts" / "_env.sh").read_text(), re.S | re.M)[0]

    def need_checkpoint(arg: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f'{function}\nneed_checkpoint "<usage>" "$1"', "_", arg], capture_output=True, text=True)

    assert need_checkpoint(str(checkpoint)).returncode == 0
    refused = need_checkpoint("samples.n=3")
    assert (refused.returncode, refused.stderr) == (2, "usage: <usage>\n")
