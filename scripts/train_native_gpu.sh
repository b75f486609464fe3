#!/usr/bin/env bash
# The default model's recipe on one GPU, in at most 10 minutes of GPU time (CUDA, bf16 autocast).
#
#   bash scripts/train_native_gpu.sh [WORK_DIR] [SECONDS]      (defaults: /tmp/safire-gpu, 540)
#
# Data are generated on the fly by every CPU core but one (`synth:train?...` reader: DataLoader
# workers run the synthetic generator), so no dataset is written first; validation uses held-out
# photos only. STEPS (default 1000, about what 15 data workers feed in 9 minutes) sets the
# cosine schedule; the time budget stops it in any case. Starts from the shipped default model (INIT=none: from random weights) and stops at
# the time budget with WORK_DIR/runs/gpu/last.pt; then calibrate and ship it as the CPU recipe does:
#
#   safire calibrate --checkpoint WORK_DIR/runs/gpu/last.pt --data WORK_DIR/val-mix --out default.pt --half
#
# Needs `make photos` for the 700-photo pool (else the 16 bundled photos are used).
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/safire-gpu}
SECONDS_BUDGET=${2:-540}
PY=${PY:-.venv/bin/python}
WORKERS=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))
INIT=${INIT:-safire/weights/safire-native-default.pt}
mkdir -p "$W"
[ -f "$W/val-mix/manifest.json" ] || $PY -m training.synth --out "$W/val-mix" --n 64 --sources 1-4 \
  --authentic-fraction 0.25 --seed 201 --split val --size-min 320 --size-max 768 --workers "$WORKERS" --quiet
init_args=()
[ "$INIT" != none ] && init_args=(--init-checkpoint "$INIT")
$PY -m training.train --data "synth:train?n=1000000&seed=7&sources=1-4&authentic=0.2&size=320-720" \
  --val "$W/val-mix" --out-dir "$W/runs/gpu" --variant native "${init_args[@]}" \
  --device cuda --amp --batch-size 64 --num-pairs 3 --lr 1e-3 --warmup-steps 100 --steps ${STEPS:-1000} \
  --r2r-weight 0.1 --pool-prob 0.25 --trainable all --workers "$WORKERS" --max-seconds "$SECONDS_BUDGET" \
  --val-every 1000 --val-limit 32 --save-every 250 --log-every 50 --model-version safire-native-gpu
