#!/usr/bin/env bash
# Interpolation strips: stage one's top latent groups (refiner noise fixed), and the refiner's initial noise
# (stage-one image fixed). Usage:
#   bash scripts/interpolate.sh <refiner checkpoint.ckpt> [overrides, e.g. interpolation.groups=2 interpolation.points=10]
source "$(dirname "$0")/_env.sh"
need_checkpoint "bash scripts/interpolate.sh <refiner checkpoint.ckpt> [overrides]" "$@"
ckpt="$1"; shift
exec "$PY" main/test_ddpm.py "checkpoint=$ckpt" tasks='[interpolation]' out_name=interpolation "$@"
