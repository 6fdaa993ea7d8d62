#!/usr/bin/env bash
# Train stage two, the DDPM refiner of a trained stage one. Arguments are Hydra overrides, e.g.
#   bash scripts/train_ddpm.sh dataset=cifar10 ddpm=cifar10_cpu stage_one=outputs/cifar10-cifar10_cpu/checkpoints/last.ckpt
source "$(dirname "$0")/_env.sh"
exec "$PY" main/train_ddpm.py "$@"
