#!/usr/bin/env bash
# Speed and memory benchmarks, printed as JSON. Usage: bash scripts/bench.sh stage1|stage2|latent|memory|presets|precision [--quick]
source "$(dirname "$0")/_env.sh"
exec "$PY" scripts/bench.py "$@"
