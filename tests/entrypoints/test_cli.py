"""The command lines: a user's mistake prints one line naming the fix and exits with status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT


def run(script: str, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, f"main/{script}", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("script", "overrides", "message"),
    [
        ("train_ae.py", ["vae.model.enc_blocks=8y3"], "error: bad encoder block string entry '8y3'"),
        ("train_ae.py", ["dataset=cifar10", "vae=cifar10_cpu", "dataset.root=/nonexistent/cifar"], "/nonexistent/cifar' does not exist"),
        ("test_ae.py", ["checkpoint=/nonexistent/last.ckpt"], "error: checkpoint '/nonexistent/last.ckpt' does not exist"),
        ("train_ddpm.py", ["stage_one=/nonexistent/vae.ckpt"], "error: checkpoint '/nonexistent/vae.ckpt' does not exist"),
        ("train_ddpm.py", ["stage_one=null"], "error: formulation 'form1' needs stage-one checkpoint"),
        ("test_ddpm.py", ["checkpoint=/nonexistent/last.ckpt"], "error: checkpoint '/nonexistent/last.ckpt' does not exist"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, script, overrides, message):
    where = f"run_dir={tmp_path}" if script.startswith("train_") else f"out_dir={tmp_path}"
    result = run(script, f"hydra.run.dir={tmp_path}", where, *overrides)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
