#!/usr/bin/env bash
# Refine stage-one reconstructions of test images corrupted by noise, blur and JPEG; PSNR/SSIM of y and refined. Usage:
#   bash scripts/noisy_conditioning.sh <refiner checkpoint.ckpt> [overrides, e.g. n=500 sampler.steps=50 corruptions.blur='[0,1,2]']
source "$(dirname "$0")/_env.sh"
need_checkpoint "bash scripts/noisy_conditioning.sh <refiner checkpoint.ckpt> [overrides]" "$@"
ckpt="$1"; shift
exec "$PY" main/noisy_conditioning.py "checkpoint=$ckpt" "$@"
