#!/usr/bin/env bash
# Evaluate (test bits/dim) and sample a stage-one checkpoint. Usage:
#   bash scripts/test_ae.sh <checkpoint.ckpt> [Hydra overrides, e.g. samples.n=10000 tasks=[samples]]
source "$(dirname "$0")/_env.sh"
if [ $# -lt 1 ] || [[ "$1" == *=* ]]; then
  echo "usage: bash scripts/test_ae.sh <checkpoint.ckpt> [overrides]" >&2
  exit 2
fi
ckpt="$1"; shift
exec "$PY" main/test_ae.py "checkpoint=$ckpt" "$@"
