#!/usr/bin/env bash
# Two-stage samples from a refiner checkpoint (stage-one images beside the refined ones). Usage:
#   bash scripts/test_ddpm.sh <refiner checkpoint.ckpt> [overrides, e.g. samples.n=50000 sampler=dpm_solver devices=8]
source "$(dirname "$0")/_env.sh"
need_checkpoint "bash scripts/test_ddpm.sh <refiner checkpoint.ckpt> [overrides]" "$@"
ckpt="$1"; shift
exec "$PY" main/test_ddpm.py "checkpoint=$ckpt" tasks='[samples]' "$@"
