#!/usr/bin/env bash
# Train the recipes behind the pretrained models, one after the other (2 CPU cores: never in parallel).
# Each run writes runs/<name>/ (checkpoints, config.yaml, split.npz, model.pt, val|test/metrics.json) and a
# log runs/<name>.log with its wall time. Usage: bash scripts/train_recipes.sh [recipe ...]
set -euo pipefail
cd "$(dirname "$0")/.."
recipes=("$@")
if [ ${#recipes[@]} -eq 0 ]; then
  recipes=(schnet_md17_ethanol dtnn_md17_ethanol schnet_qm9_u0 dtnn_qm9_u0)
fi
mkdir -p runs
for r in "${recipes[@]}"; do
  start=$(date +%s)
  echo "== atomnet train configs/$r.yaml --set train.progress_bar=false --run-dir runs/$r  ($(date -u +%FT%TZ))" | tee "runs/$r.log"
  atomnet train "configs/$r.yaml" --set train.progress_bar=false --run-dir "runs/$r" --overwrite >> "runs/$r.log" 2>&1
  echo "== wall time $(( $(date +%s) - start )) s" | tee -a "runs/$r.log"
done
