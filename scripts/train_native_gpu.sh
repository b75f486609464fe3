#!/usr/bin/env bash
# The default model's recipe on one GPU, in at most 10 minutes of GPU time (CUDA, bf16 autocast).
#
#   bash scripts/train_native_gpu.sh [WORK_DIR] [SECONDS]      (defaults: /tmp/safire-gpu, 480)
#
# Data are generated on the fly by every CPU core but one (`synth:train?...` reader: DataLoader
# workers run the synthetic generator), so no dataset is written first. Generation, not the GPU, is
# the bottleneck (about 0.15 s of one core per composite against well under a millisecond of GPU per
# crop), so every composite is used REPEAT (default 4) times, as different 384-px crops with
# different prompts, in batches of the same worker (training/repeat.py). The cosine schedule follows
# the time budget (--time-schedule), so the run anneals fully whatever the machine's throughput.
# Starts from the shipped default model (INIT=none: from random weights). Writes
# WORK_DIR/runs/gpu/last.pt (resumable) and WORK_DIR/runs/gpu/model.pt (weights only, 8 MB); then
# calibrate and ship it as the CPU recipe does:
#
#   safire calibrate --checkpoint WORK_DIR/runs/gpu/model.pt --data data/val-mix --out default.pt --half
#
# Validation during the run uses held-out photos (VAL=none skips it: on a machine that was given
# only the training photos, e.g. a pool packed by scripts/pack_photo_pool.py). Needs `make photos`
# (or SAFIRE_PHOTO_DIR pointing at a packed pool); else only the 16 bundled photos are used.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/safire-gpu}
SECONDS_BUDGET=${2:-480}
if [ -z "${PY:-}" ]; then [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; fi
WORKERS=${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))}
INIT=${INIT:-safire/weights/safire-native-default.pt}
VAL=${VAL:-$W/val-mix}
# one thread per data worker: 15 workers x 16 BLAS/OpenMP threads would thrash the cores
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
mkdir -p "$W"
val_args=(--val-every 1000000)
if [ "$VAL" != none ]; then
  [ -f "$VAL/manifest.json" ] || $PY -m training.synth --out "$VAL" --n 64 --sources 1-4 \
    --authentic-fraction 0.25 --seed 201 --split val --size-min 320 --size-max 768 --workers "$WORKERS" --quiet
  val_args=(--val "$VAL" --val-every 500 --val-limit 32)
fi
init_args=()
[ "$INIT" != none ] && init_args=(--init-checkpoint "$INIT")
$PY -m training.train --data "synth:train?n=1000000&seed=${SEED:-7}&sources=1-4&authentic=0.2&size=384-800" \
  "${val_args[@]}" --out-dir "$W/runs/gpu" --variant native "${init_args[@]}" \
  --device ${DEVICE:-cuda} --amp --batch-size ${BATCH:-64} --crop-size 384 --repeat ${REPEAT:-4} --num-pairs 4 \
  --lr ${LR:-8e-4} --warmup-steps 100 --steps 1000000 --time-schedule --max-seconds "$SECONDS_BUDGET" \
  --r2r-weight 0.1 --pool-prob 0.25 --trainable all --workers "$WORKERS" \
  --save-every 500 --log-every 50 --model-version ${VERSION:-safire-native-gpu} --resume
# weights only (no optimizer state): what calibrate and ship read
$PY scripts/weights_only.py "$W/runs/gpu/last.pt" "$W/runs/gpu/model.pt"
