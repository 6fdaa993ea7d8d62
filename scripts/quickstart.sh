#!/usr/bin/env bash
# The first run, on scikit-learn's digits (no download): train stage one (the hierarchical VAE), evaluate
# and sample it; train stage two (the DDPM refiner) on it; draw two-stage samples.
# About 11 minutes on 2 CPU cores. Outputs go to outputs/quickstart (an earlier one is moved aside).
source "$(dirname "$0")/_env.sh"
out=outputs/quickstart
if [ -e "$out" ]; then
  old="$out-$(date +%Y%m%d-%H%M%S)"
  mv "$out" "$old"
  echo "moved the previous quickstart to $old"
fi
set -e
"$PY" main/train_ae.py dataset=digits vae=digits run_dir="$out/train" num_workers=0 \
  trainer.max_steps="${QUICKSTART_STEPS:-2000}" trainer.max_time=00:00:08:00 trainer.val_check_interval=500 samples.every_n_steps=500 "$@"
# overwrite=true: $out holds the run's train/ folder, which stage one's results go beside (they replace nothing)
"$PY" main/test_ae.py checkpoint="$out/train/checkpoints/last.ckpt" out_dir="$out" overwrite=true num_workers=0 \
  tasks='[bpd,iw_bpd,samples,class_samples,reconstructions]' samples.n=100 iw_bpd.samples=64
"$PY" main/train_ddpm.py dataset=digits ddpm=digits stage_one="$out/train/checkpoints/last.ckpt" run_dir="$out/train_ddpm" \
  num_workers=0 trainer.max_steps="${QUICKSTART_DDPM_STEPS:-1500}" trainer.max_time=00:00:06:00 trainer.val_check_interval=500 \
  samples.every_n_steps=500
"$PY" main/test_ddpm.py checkpoint="$out/train_ddpm/checkpoints/last.ckpt" out_dir="$out/two_stage" num_workers=0 \
  tasks='[samples,class_samples]' samples.n=64 class_samples.n_per_class=4
"$PY" - "$out/results.json" "$out/two_stage/results.json" <<'PY'
import json, sys
r, r2 = (json.load(open(p)) for p in sys.argv[1:])
m, t, t2 = r["metrics"], r["timings"], r2["timings"]
print(f"\nquickstart done: stage one test {m['test_bpd']:.3f} bits/dim, {m['n_params']:,} parameters, trained {t['train_seconds']:.0f} s;")
print(f"refiner {r2['metrics']['n_params_refiner']:,} parameters, trained {t2['train_seconds']:.0f} s, "
      f"two-stage sampling {t2['samples_images_per_s']:.1f} images/s ({r2['config']['sampler']['name']}, {r2['config']['sampler']['steps']} steps)")
PY
echo "stage one: $out/results.json  $out/samples_grid.png  $out/class_samples_grid.png  $out/reconstructions_grid.png"
echo "two-stage: $out/two_stage/samples_grid.png (stage-one rows above their refinements)  $out/two_stage/class_samples_grid.png"
