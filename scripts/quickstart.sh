#!/usr/bin/env bash
# The first run: train stage one on scikit-learn's digits (no download), evaluate it, sample it.
# About 10 minutes on 2 CPU cores. Outputs go to outputs/quickstart (an earlier one is moved aside).
source "$(dirname "$0")/_env.sh"
out=outputs/quickstart
if [ -e "$out" ]; then
  old="$out-$(date +%Y%m%d-%H%M%S)"
  mv "$out" "$old"
  echo "moved the previous quickstart to $old"
fi
"$PY" main/train_ae.py dataset=digits vae=digits run_dir="$out/train" num_workers=0 \
  trainer.max_steps="${QUICKSTART_STEPS:-2000}" trainer.max_time=00:00:08:00 trainer.val_check_interval=500 samples.every_n_steps=500 "$@"
"$PY" main/test_ae.py checkpoint="$out/train/checkpoints/last.ckpt" out_dir="$out" num_workers=0 \
  tasks='[bpd,samples,class_samples,reconstructions]' samples.n=100
"$PY" - "$out/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m, t = r["metrics"], r["timings"]
print(f"\nquickstart done: test {m['test_bpd']:.3f} bits/dim, {m['n_params']:,} parameters, trained {t['train_seconds']:.0f} s")
PY
echo "results: $out/results.json   samples: $out/samples_grid.png   reconstructions: $out/reconstructions_grid.png"
