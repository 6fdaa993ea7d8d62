#!/usr/bin/env bash
# Speed, memory and time-to-quality benchmarks, printed as JSON.
# Usage: bash scripts/bench.sh stage1|stage2|latent|memory|presets|precision|time_to_quality|refiner_time_to_quality [--quick]
source "$(dirname "$0")/_env.sh"
exec "$PY" scripts/bench.py "$@"
