#!/usr/bin/env bash
# The recipe of the embedded default model (safire/weights/safire-tiny-default.pt), on CPU.
#
#   bash scripts/train_default_model.sh [WORK_DIR]      (default: data/ and runs/ in the repo)
#
# Every step is a `safire` subcommand; all are seeded. The shipped model was made with these
# steps, but its first stage was interrupted and resumed with a different schedule length (see
# the model card in the README), so a re-run gives a model of the same kind, not the same bytes.
# About 3 hours on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-.}
S=".venv/bin/safire"
T=${SAFIRE_THREADS:-2}

# 1. data: 12,000 training composites from the training photos, held-out sets from the 3 val photos
$S synth --out "$W/data/synth-train" --n 12000 --sources 1-4 --authentic-fraction 0.2 --seed 1 --split train --workers 2
for k in 1 2 3 4; do
  $S synth --out "$W/data/synth-val-k$k" --n 100 --sources $k --seed $((10 + k)) --split val
done
$S synth --out "$W/data/synth-val-mix" --n 96 --sources 1-4 --authentic-fraction 0.25 --seed 20 --split val
.venv/bin/python - "$W/data/synth-train" <<'PY'
import json, os, sys
root = sys.argv[1]
names = [json.load(open(os.path.join(root, "meta", f)))["name"] for f in sorted(os.listdir(os.path.join(root, "meta")))
         if json.load(open(os.path.join(root, "meta", f)))["num_sources"] >= 2]
open(os.path.join(root, "splits", "forged.txt"), "w").write("\n".join(names) + "\n")
PY

# 2. point-prompt training from random weights, with the contrastive loss as an auxiliary term
$S train --data "$W/data/synth-train" --val "$W/data/synth-val-mix" --out-dir "$W/runs/stage-a" --variant tiny \
  --steps 2250 --batch-size 8 --num-pairs 3 --lr 3e-4 --warmup-steps 300 --r2r-weight 0.05 --trainable all \
  --val-every 1000 --val-limit 48 --workers 1 --threads "$T" --seed 2024 --device cpu

# 3. region-to-region contrastive pretraining of the encoder on the forged composites
$S pretrain --data "$W/data/synth-train" --split forged --init-checkpoint "$W/runs/stage-a/last.pt" \
  --out-dir "$W/runs/pretrain" --steps 1500 --batch-size 16 --lr 5e-4 --warmup-steps 100 --workers 1 \
  --threads "$T" --seed 2024 --device cpu

# 4. point-prompt training again, from the pretrained encoder
$S train --data "$W/data/synth-train" --val "$W/data/synth-val-mix" --init-checkpoint "$W/runs/pretrain/last.pt" \
  --out-dir "$W/runs/stage-b" --steps 3000 --batch-size 8 --num-pairs 3 --lr 2e-4 --warmup-steps 100 \
  --r2r-weight 0.1 --trainable all --val-every 1000 --val-limit 32 --workers 1 --threads "$T" --seed 2025 \
  --model-version safire-tiny-synth-v1 --device cpu

# 5. calibrate the automatic number of sources on the validation mix, store as float16
$S calibrate --checkpoint "$W/runs/stage-b/last.pt" --data "$W/data/synth-val-mix" --out "$W/runs/default.pt" --half

# 6. held-out metrics (the model card's table)
$S evaluate --checkpoint "$W/runs/default.pt" --data "$W/data/synth-val-k1" "$W/data/synth-val-k2" \
  "$W/data/synth-val-k3" "$W/data/synth-val-k4" --json "$W/runs/default-eval.json"
echo "copy $W/runs/default.pt to safire/weights/safire-tiny-default.pt to ship it"
