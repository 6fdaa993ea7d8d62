#!/usr/bin/env bash
# FID (and on request KID, IS, precision/recall) of generated images, with torch-fidelity. Usage:
#   bash scripts/fid.sh <samples folder | samples.npz> <reference folder | .npz | cifar10-train ...> [--metrics fid,kid,isc,prc] [--weights FILE]
source "$(dirname "$0")/_env.sh"
exec "$PY" main/fid.py "$@"
