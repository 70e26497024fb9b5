#!/usr/bin/env bash
# Real-data fine-tuning check (benchmark, not CI): teacher and student on SST-2 and CoNLL-2003
# from local files, bf16-mixed. Prints one line per run: dev/test scores, wall time, samples/s.
#   scripts/finetune_real_data.sh MODELS_DIR DATA_DIR [OUT_DIR]
# MODELS_DIR holds all-mpnet-base-v2/ and all-MiniLM-L6-v2/ (see ../shared/tools/get-offline-models);
# DATA_DIR holds sst2/{train,dev}.tsv and conll2003/{train,valid,test}.txt.
# Sizes are chosen for a 2-core CPU; set SST2_TEACHER_ROWS= (empty) and EPOCHS_* for full runs on a GPU.
set -euo pipefail
MODELS=${1:?MODELS_DIR}; DATA=${2:?DATA_DIR}; OUT=${3:-results/finetune}
SST2_TEACHER_ROWS=${SST2_TEACHER_ROWS-8000}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1
mkdir -p "$OUT"
SST2=(--config configs/sst2/finetune.yaml --data.num_workers 1
      --data.data_files "{train: $DATA/sst2/train.tsv, validation: $DATA/sst2/dev.tsv}")
CONLL=(--config configs/conll2003/finetune.yaml --data.num_workers 1 --data.tag_column 3
       --data.data_files "{train: $DATA/conll2003/train.txt, validation: $DATA/conll2003/valid.txt, test: $DATA/conll2003/test.txt}")

run() {  # name, rows_per_epoch, epochs, args...
  local name=$1 rows=$2 epochs=$3; shift 3
  local dir="$OUT/$name" start end
  start=$(date +%s)
  shrink fit "$@" --out_dir "$dir" --trainer.max_epochs "$epochs" > "$dir.fit.log" 2>&1
  end=$(date +%s)
  shrink test "$@" --out_dir "$dir" --ckpt_path best > "$dir.test.log" 2>&1
  python - "$dir" "$name" "$rows" "$epochs" "$((end - start))" <<'PY'
import json, sys
d, name, rows, epochs, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
m = json.load(open(f"{d}/test_metrics.json"))
score = {k: round(v, 4) for k, v in m.items() if k in ("test/accuracy", "test/f1", "test/f1_macro")}
line = {"run": name, **score, "fit_seconds": secs, "train_samples_per_sec": round(rows * epochs / secs, 1)}
print(json.dumps(line)); open(f"{d}/../summary.jsonl", "a").write(json.dumps(line) + "\n")
PY
}

run minilm-sst2 67349 1 "${SST2[@]}" --model.model_name_or_path "$MODELS/all-MiniLM-L6-v2" --model.learning_rate 5e-5
run minilm-conll 14041 2 "${CONLL[@]}" --model.model_name_or_path "$MODELS/all-MiniLM-L6-v2" --model.learning_rate 8e-5
rows=${SST2_TEACHER_ROWS:-67349}
run mpnet-sst2 "$rows" 1 "${SST2[@]}" --model.model_name_or_path "$MODELS/all-mpnet-base-v2" --model.learning_rate 2e-5 \
  ${SST2_TEACHER_ROWS:+--data.max_train_samples $SST2_TEACHER_ROWS} --trainer.val_check_interval 0.5
run mpnet-conll 14041 1 "${CONLL[@]}" --model.model_name_or_path "$MODELS/all-mpnet-base-v2" --model.learning_rate 5e-5
