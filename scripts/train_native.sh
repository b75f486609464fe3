#!/usr/bin/env bash
# The recipe of the embedded default model (safire/weights/safire-native-default.pt): the native-
# resolution variant, trained on native-resolution crops of synthetic composites, on CPU.
#
#   bash scripts/train_native.sh STAGE [WORK_DIR]        STAGE: data | a | b | c | d | all   (WORK_DIR default: data)
#
#   data  synthetic training sets (bundled photos: synth-a; the installed pool, `make photos`:
#         synth-b) and held-out validation/test sets (held-out photos only)
#   a     point-prompt training from random weights on synth-a (resumable: run it again)
#   b     continue from a (or from the shipped model with INIT=...) on synth-b (resumable)
#   c     continue from the widened stage-b weights (INIT=...; e.g. INIT=safire/weights/safire-native-default.pt
#         to continue the shipped model) on synth-a + synth-b (resumable); then ship with
#         safire calibrate --checkpoint WORK_DIR/runs/c/last.pt --data WORK_DIR/val-mix --out X.pt --half
#   d     (needs only the validation set, not synth-a/b) continue the shipped model (or INIT=...) on the CPU with the GPU recipe's data: composites of
#         generator v2 made on the fly by one worker, each used for REPEAT=4 random 384-px native crops,
#         batches of 8; lr 5e-5 cosine over MAX_SECONDS (default 6600) of wall time (resumable: run it
#         again; RUN=name writes WORK_DIR/runs/name); then
#         make calibrate CHECKPOINT=WORK_DIR/runs/d/model.pt OUT=X.pt
#         The GPU stage used lr 8e-4 with batches of 64; by the linear scaling rule batches of 8 want
#         about 1e-4 at most, and a converged model less: a first try at 2e-4 made every validation
#         number worse after 800 steps (val-mix 32: pmIoU K 0.492 -> 0.455, image AUC 0.860 -> 0.807).
#         ACCUM=8 accumulates 8 batches per optimizer step (effective batch 64, the GPU stage's; steps,
#         VAL_EVERY and the schedule then count optimizer steps).
#
# Every run checkpoints to WORK_DIR/runs/<stage>/last.pt every 250 steps and resumes from it, so a
# killed run loses at most 250 steps. Seeds are fixed. SAFIRE_THREADS (default 2) sets torch
# threads; AMP=--no-amp turns bf16 autocast off. On a GPU use scripts/train_native_gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-all}
W=${2:-data}
PY=.venv/bin/python
T=${SAFIRE_THREADS:-2}
AMP=${AMP:---amp}
STEPS_A=${STEPS_A:-3000}
STEPS_B=${STEPS_B:-6000}
COMMON=(--variant native --batch-size 8 --num-pairs 3 --r2r-weight 0.1 --pool-prob 0.25 --trainable all
        --val-every 1000 --val-limit 32 --save-every 250 --log-every 50 --workers 1 --threads "$T" --device cpu "$AMP")

val_data() {
  [ -f "$W/val-mix/manifest.json" ] || $PY -m training.synth --out "$W/val-mix" --n 64 --sources 1-4 \
    --authentic-fraction 0.25 --seed 201 --split val --size-min 320 --size-max 768 --quiet
}

data() {
  [ -f "$W/synth-a/manifest.json" ] || $PY -m training.synth --out "$W/synth-a" --n 3000 --sources 1-4 \
    --authentic-fraction 0.2 --seed 101 --split train --size-min 320 --size-max 640 --workers 2 --quiet
  [ -f "$W/synth-b/manifest.json" ] || $PY -m training.synth --out "$W/synth-b" --n 3000 --sources 1-4 \
    --authentic-fraction 0.2 --seed 301 --split train --size-min 320 --size-max 720 --workers 2 --quiet
  val_data
}

stage_a() {
  $PY -m training.train --data "$W/synth-a" --val "$W/val-mix" --out-dir "$W/runs/a" --steps "$STEPS_A" \
    --lr 6e-4 --warmup-steps 200 --seed 2026 --model-version safire-native-a "${COMMON[@]}" --resume
}

stage_b() {
  local init=${INIT:-$W/runs/a/last.pt}
  $PY -m training.train --data "$W/synth-a" "$W/synth-b" --val "$W/val-mix" --out-dir "$W/runs/b" --steps "$STEPS_B" \
    --init-checkpoint "$init" --lr 4e-4 --warmup-steps 100 --seed 2027 --model-version safire-native-synth-v2 \
    --max-seconds "${MAX_SECONDS:-0}" \
    "${COMMON[@]}" --resume
}

stage_c() {
  local init=${INIT:-$W/runs/c/init.pt}
  $PY -m training.train --data "$W/synth-a" "$W/synth-b" --val "$W/val-mix" --out-dir "$W/runs/c" \
    --steps "${STEPS_C:-2300}" --init-checkpoint "$init" --lr 4e-4 --warmup-steps 50 --seed 2028 \
    --model-version safire-native-synth-v2 --max-seconds "${MAX_SECONDS:-0}" "${COMMON[@]}" --resume
}

stage_d() {
  local init=${INIT:-safire/weights/safire-native-default.pt}
  local out="$W/runs/${RUN:-d}"
  $PY -m training.train --data "synth:train?n=1000000&seed=${SEED:-11}&sources=1-4&authentic=0.2&size=384-800" \
    --val "$W/val-mix" --val-every "${VAL_EVERY:-800}" --val-limit 32 --out-dir "$out" --variant native \
    --init-checkpoint "$init" --device cpu "$AMP" --batch-size 8 --accum-steps "${ACCUM:-1}" \
    --crop-size 384 --repeat "${REPEAT:-4}" --num-pairs 4 --lr "${LR:-5e-5}" --warmup-steps 20 --steps 1000000 --time-schedule \
    --max-seconds "${MAX_SECONDS:-6600}" --r2r-weight 0.1 --pool-prob 0.25 --trainable all --workers 1 \
    --threads "$T" --save-every 100 --log-every 25 --model-version "${VERSION:-safire-native-cpu-d}" --resume
  $PY scripts/weights_only.py "$out/last.pt" "$out/model.pt"
}

case "$STAGE" in
  data) data ;;
  a) data; stage_a ;;
  b) data; stage_b ;;
  c) data; stage_c ;;
  d) val_data; stage_d ;;
  all) data; stage_a; stage_b ;;
  *) echo "unknown stage $STAGE (data | a | b | c | d | all)" >&2; exit 2 ;;
esac
