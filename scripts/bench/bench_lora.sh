#!/usr/bin/env bash
# LoRA vs full fine-tuning of one model at the same steps (benchmark, not CI): peak memory (max RSS
# of the process), training time per step (Lightning's Timer: fit minus validation, over the steps; so
# start-up and model loading are out), checkpoint size and dev accuracy, SST-2 from local files.
#   scripts/bench/bench_lora.sh MODEL_DIR DATA_DIR [OUT_DIR]      (MODEL_DIR: e.g. all-mpnet-base-v2)
#   STEPS=60 BATCH=16 LORA="{r: 8, lora_alpha: 16, target_modules: [q, v]}" (MPNet's names) pick the work.
set -euo pipefail
MODEL=${1:?MODEL_DIR}; DATA=${2:?DATA_DIR}; OUT=${3:-results/lora}
STEPS=${STEPS:-60}; BATCH=${BATCH:-16}; LORA=${LORA:-"{r: 8, lora_alpha: 16, target_modules: [q, v]}"}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1
mkdir -p "$OUT"
common=(--config configs/sst2/finetune.yaml --model.model_name_or_path "$MODEL" --data.tokenizer "$MODEL"
        --data.data_files "{train: $DATA/sst2/train.tsv, validation: $DATA/sst2/dev.tsv}" --data.num_workers 1
        --data.batch_size "$BATCH" --trainer.max_steps "$STEPS" --trainer.val_check_interval 1.0
        --trainer.max_epochs -1 --data.max_train_samples $((STEPS * BATCH))
        --trainer.callbacks+=lightning.pytorch.callbacks.Timer)
for run in ${RUNS:-full lora}; do
  extra=(); lr=3e-5
  [[ $run == lora ]] && extra=(--model.lora "$LORA") && lr=3e-4   # adapters take a higher rate
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$OUT/$run.time" shrink fit "${common[@]}" "${extra[@]}" --model.learning_rate $lr \
    --out_dir "$OUT/$run" > "$OUT/$run.log" 2>&1
  end=$(date +%s.%N)
  python - "$OUT" "$run" "$start" "$end" "$STEPS" <<'PY'
import json, os, re, sys
out, run, start, end, steps = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{out}/{run}.time").read()).group(1))
card = open(f"{out}/{run}/model/README.md").read()
accuracy = float(re.search(r"\| val/accuracy \| ([0-9.]+) \|", card).group(1))
ckpt = os.path.getsize(f"{out}/{run}/checkpoints/last.ckpt")
import torch  # the Timer's state in the last checkpoint (saved after the end-of-run validation)
timer = next(v for k, v in torch.load(f"{out}/{run}/checkpoints/last.ckpt", map_location="cpu", weights_only=True)["callbacks"].items()
             if k.startswith("Timer"))["time_elapsed"]
train = timer["train"] - timer.get("validate", 0.0)
line = {"run": run, "steps": steps, "peak_rss_gb": round(rss / 1e6, 2), "wall_s": round(end - start, 1),
        "train_s_per_step": round(train / steps, 3), "last_ckpt_mb": round(ckpt / 1e6, 1), "dev_accuracy": accuracy}
print(json.dumps(line)); open(f"{out}/summary.jsonl", "a").write(json.dumps(line) + "\n")
PY
done
