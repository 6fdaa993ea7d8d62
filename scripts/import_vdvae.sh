#!/usr/bin/env bash
# Import OpenAI's VDVAE weights as a stage-one checkpoint (or export one back). Arguments are Hydra overrides, e.g.
#   bash scripts/import_vdvae.sh preset=imagenet64 weights=imagenet64-iter-1600000-model-ema.th out=outputs/vdvae-imagenet64/checkpoints/last.ckpt
#   bash scripts/import_vdvae.sh export=outputs/run/checkpoints/last.ckpt out=exported/run   # run-model.th, run-model-ema.th
source "$(dirname "$0")/_env.sh"
exec "$PY" main/import_vdvae.py "$@"
