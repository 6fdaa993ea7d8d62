#!/usr/bin/env bash
# Controllable synthesis with stage one's latent groups, through the refiner too when given a refiner checkpoint. Usage:
#   bash scripts/control.sh <refiner or stage-one checkpoint.ckpt> [overrides, e.g. task=class_swap k=2 n=16]
#   tasks: attribute (attribute.attribute=<class id>, or attribute.attributes_file=<csv|npy> attribute.attribute=<column>),
#          class_swap, variation
source "$(dirname "$0")/_env.sh"
need_checkpoint "bash scripts/control.sh <refiner or stage-one checkpoint.ckpt> [overrides]" "$@"
ckpt="$1"; shift
exec "$PY" main/control.py "checkpoint=$ckpt" "$@"
