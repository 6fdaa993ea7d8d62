#!/usr/bin/env bash
# Proxy sample-quality score for CIFAR-10 runs (no Inception weights needed). Usage:
#   bash scripts/classifier_fd.sh train --data-root ../shared/data [--minutes 8]
#   bash scripts/classifier_fd.sh score <folder of PNGs | images.npz> [--json out.json]
source "$(dirname "$0")/_env.sh"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PY" scripts/classifier_fd.py "$@"
