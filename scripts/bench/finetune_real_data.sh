#!/usr/bin/env bash
# Real-data fine-tuning check (benchmark, not CI): teacher and student on SST-2 and CoNLL-2003
# from local files, bf16-mixed. Prints one line per run: dev/test scores, wall time, samples/s.
#   scripts/bench/finetune_real_data.sh MODELS_DIR DATA_DIR [OUT_DIR]
# MODELS_DIR holds all-mpnet-base-v2/ and all-MiniLM-L6-v2/ (the shared tools folder's get-offline-models puts them there);
# DATA_DIR holds sst2/{train,dev}.tsv and conll2003/{train,valid,test}.txt.
# Sizes fit a 2-core CPU in about an hour; on a GPU use full data: TEACHER_ROWS= CONLL_ROWS= EPOCHS=3.
#   RUNS="minilm-sst2 mpnet-conll" picks runs (default: all four).
set -euo pipefail
MODELS=${1:?MODELS_DIR}; DATA=${2:?DATA_DIR}; OUT=${3:-results/finetune}
TEACHER_ROWS=${TEACHER_ROWS-4000}   # SST-2 rows for the 110M teacher (empty = all 67,349)
CONLL_ROWS=${CONLL_ROWS-5000}       # CoNLL-2003 training sentences (empty = all 14,041)
EPOCHS=${EPOCHS:-1}
RUNS=${RUNS:-minilm-sst2 minilm-conll mpnet-sst2 mpnet-conll}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1
mkdir -p "$OUT"
SST2=(--config configs/sst2/finetune.yaml --data.num_workers 1
      --data.data_files "{train: $DATA/sst2/train.tsv, validation: $DATA/sst2/dev.tsv}")
CONLL=(--config configs/conll2003/finetune.yaml --data.num_workers 1 --data.tag_column 3
       --data.data_files "{train: $DATA/conll2003/train.txt, validation: $DATA/conll2003/valid.txt, test: $DATA/conll2003/test.txt}")

run() {  # name, rows_per_epoch, epochs, args...
  local name=$1 rows=$2 epochs=$3; shift 3
  [[ " $RUNS " == *" $name "* ]] || return 0
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

limit() { [[ -n $1 ]] && echo "--data.max_train_samples $1"; true; }
MINILM="$MODELS/all-MiniLM-L6-v2"; MPNET="$MODELS/all-mpnet-base-v2"
# shellcheck disable=SC2046
run minilm-sst2 67349 "$EPOCHS" "${SST2[@]}" --model.model_name_or_path "$MINILM" --model.learning_rate 5e-5
# shellcheck disable=SC2046
run minilm-conll "${CONLL_ROWS:-14041}" "$EPOCHS" "${CONLL[@]}" --model.model_name_or_path "$MINILM" \
  --model.learning_rate 1e-4 $(limit "$CONLL_ROWS")
# shellcheck disable=SC2046
run mpnet-sst2 "${TEACHER_ROWS:-67349}" "$EPOCHS" "${SST2[@]}" --model.model_name_or_path "$MPNET" \
  --model.learning_rate 3e-5 --trainer.val_check_interval 0.5 $(limit "$TEACHER_ROWS")
# shellcheck disable=SC2046
run mpnet-conll "${CONLL_ROWS:-14041}" "$((EPOCHS + 1))" "${CONLL[@]}" --model.model_name_or_path "$MPNET" \
  --model.learning_rate 1e-4 $(limit "$CONLL_ROWS")   # 5e-5 x 1 epoch of 5,000 sentences reached only 0.30 F1
