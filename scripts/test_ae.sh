#!/usr/bin/env bash
# Evaluate (test bits/dim) and sample a stage-one checkpoint. Usage:
#   bash scripts/test_ae.sh <checkpoint.ckpt> [Hydra overrides, e.g. samples.n=10000 tasks=[samples]]
source "$(dirname "$0")/_env.sh"
need_checkpoint "bash scripts/test_ae.sh <stage-one checkpoint.ckpt> [overrides]" "$@"
ckpt="$1"; shift
exec "$PY" main/test_ae.py "checkpoint=$ckpt" "$@"
