#!/usr/bin/env bash
# Train stage one. Arguments are Hydra overrides, e.g.
#   bash scripts/train_ae.sh dataset=cifar10 vae=cifar10_cpu dataset.root=../shared/data trainer.max_time=00:00:30:00
source "$(dirname "$0")/_env.sh"
exec "$PY" main/train_ae.py "$@"
