"""A run folder holds one run at a time, is recorded only by the run that holds it, and is refused in one line when it
cannot be written; a run that would train nothing is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import ROOT, TINY_DIGITS, tiny_train_config, user_error

from main.train_ae import train


def command(run_dir, *overrides: str) -> list[str]:
    return [sys.executable, "main/train_ae.py", *TINY_DIGITS, f"run_dir={run_dir}", "name=test", *overrides]


def one_error_line(result: subprocess.CompletedProcess) -> str:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return errors[0]


def test_a_second_run_on_a_folder_in_use_is_refused_and_records_nothing(tmp_path):
    run = tmp_path / "run"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    long_run = command(run, "trainer.max_steps=1000000", "trainer.val_check_interval=1000000", "trainer.num_sanity_val_steps=0")
    first = subprocess.Popen(long_run, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock, config, deadline = run / ".lock", run / ".hydra" / "config.yaml", time.monotonic() + 240
        while not (config.is_file() and lock.is_file() and f"pid {first.pid} " in lock.read_text()):
            assert first.poll() is None, first.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the first run did not take its folder in time"
            time.sleep(0.1)
        recorded = config.read_text()
        second = subprocess.run(command(run, "seed=7"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        message = one_error_line(second)
        assert f"run_dir '{run}' is in use by another run (pid {first.pid} on " in message and "name=<new name>" in message
        assert config.read_text() == recorded and "seed: 0" in recorded
        assert first.poll() is None  # the first run went on
    finally:
        first.kill()
        first.wait()
    from main.training import locked_run_dir

    with locked_run_dir(run) as held:  # the killed run's lock went with it
        assert held


def test_max_steps_0_is_refused(tmp_path):
    message = user_error(train, tiny_train_config(tmp_path, "trainer.max_steps=0"))
    assert "trainer.max_steps=0 would train nothing" in message
    assert not tmp_path.joinpath("checkpoints").exists()


def test_a_run_stopped_before_its_first_update_names_no_checkpoint(tmp_path, caplog):
    from main.training import train_and_report

    with caplog.at_level("INFO"):
        train_and_report(train, tiny_train_config(tmp_path, "trainer.max_time=00:00:00:00"), objective="val/bpd")
    printed = caplog.text
    assert "before the first update (trainer.max_time?): no checkpoint was written" in printed
    assert "last checkpoint" not in printed and not tmp_path.joinpath("checkpoints", "last.ckpt").exists()


@pytest.mark.parametrize("where", ["read-only file system", "a file in the way"])
def test_a_run_folder_that_cannot_be_written_is_one_line(tmp_path, where):
    if where == "a file in the way":
        (tmp_path / "file").write_text("not a folder")
        run, reason = tmp_path / "file" / "run", "Not a directory"
    else:
        run, reason = "/sys/genvae-test-run", "not permitted"  # sysfs: no new entries, not even for root
    result = subprocess.run(command(run, "trainer.max_steps=1"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    message = one_error_line(result)
    assert f"cannot write to run_dir '{run}'" in message and reason in message and "run_dir=<path>" in message
