"""A census of the bad inputs a user can give: each one, through the command line, prints ONE line naming the
problem and the fix, and exits with status 2.

The entry points run in this process (as `python main/<entry>.py ...` would run them, `__main__` block
included) to keep the census fast; tests/entrypoints/test_cli.py runs a few as real processes.
"""

from __future__ import annotations

import sys

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
    (root / "samples_out" / "samples").mkdir(parents=True)
    (root / "samples_out" / "samples" / "000000.png").write_bytes(b"an earlier sample")
    return {"vae": vae, "refiner": refiner, "root": root}


class Exploit:
    """A pickle that would run code when loaded."""

    def __reduce__(self):
        return (print, ("this ran code",))


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
