"""Evaluation writes into an out_dir that is empty (or new), or overwrite=true: a folder holding the user's files, with or
without an earlier results.json, is refused in one line and left as it was."""

from __future__ import annotations

import pytest
from helpers import compose_config, tiny_refiner_config, tiny_train_config, user_error

from main import control
from main.evaluation import stage_one, stage_two
from main.train_ae import train as train_stage_one
from main.train_ddpm import train as train_refiner

ONE_STEP = ["trainer.max_steps=1", "trainer.val_check_interval=1"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    vae = train_stage_one(tiny_train_config(root / "vae", *ONE_STEP))
    return {"vae": vae, "refiner": train_refiner(tiny_refiner_config(root / "refiner", vae, *ONE_STEP))}


# entry point: (run it on a config, its config name, the checkpoint it takes, settings of a small run)
ENTRY_POINTS = {
    "test_ae": (stage_one.evaluate, "test_ae", "vae", ["tasks=[samples]", "samples.n=2", "device=cpu"]),
    "test_ddpm": (stage_two.evaluate, "test_ddpm", "refiner", ["tasks=[samples]", "samples.n=2", "sampler.steps=2"]),
    "control": (control.run, "control", "refiner", ["task=variation", "n=1", "variation.n=2", "sampler.steps=2", "device=cpu"]),
}


def run(entry: str, checkpoints, out_dir, *overrides: str):
    evaluate, config, stage, settings = ENTRY_POINTS[entry]
    cfg = compose_config(config, [f"checkpoint={checkpoints[stage]}", f"out_dir={out_dir}", "num_workers=0", *settings, *overrides])
    return evaluate(cfg)


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_an_out_dir_holding_the_users_files_is_refused_then_kept_with_overwrite(entry, checkpoints, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "samples.npz").write_bytes(b"the user's own samples")
    message = user_error(run, entry, checkpoints, out)
    assert f"'{out}' already holds results or other files: pass overwrite=true" in message
    assert [p.name for p in out.iterdir()] == ["samples.npz"]
    run(entry, checkpoints, out, "overwrite=true")
    assert (out / "results.json").is_file()


def test_an_interrupted_runs_staging_folder_does_not_count(checkpoints, tmp_path):
    """Hidden entries are the .<name>.partial folders an interrupted (or a parallel rank's) evaluation writes first."""
    out = tmp_path / "eval"
    (out / ".samples.partial").mkdir(parents=True)
    run("test_ae", checkpoints, out)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["000000.png", "000001.png"]
    assert not (out / ".samples.partial").exists()
