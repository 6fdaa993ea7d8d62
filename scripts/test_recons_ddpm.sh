#!/usr/bin/env bash
# Real test images -> stage-one reconstructions -> refined reconstructions, with per-image MSE/PSNR. Usage:
#   bash scripts/test_recons_ddpm.sh <refiner checkpoint.ckpt> [overrides, e.g. reconstructions.n=100 reconstructions.k=2]
source "$(dirname "$0")/_env.sh"
need_checkpoint "bash scripts/test_recons_ddpm.sh <refiner checkpoint.ckpt> [overrides]" "$@"
ckpt="$1"; shift
exec "$PY" main/test_ddpm.py "checkpoint=$ckpt" tasks='[reconstructions]' out_name=recons_ddpm "$@"
