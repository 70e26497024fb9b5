#!/usr/bin/env bash
# Real-data distillation check (benchmark, not CI): the fine-tuned MPNet teacher from
# scripts/bench/finetune_real_data.sh -> MiniLM-L6 student (different tokenizer), against the same student
# fine-tuned alone for the same steps; plus a 3-layer student, and KD epoch time with / without the
# teacher cache. Prints one JSON line per run.
#   scripts/bench/distill_real_data.sh MODELS_DIR DATA_DIR [FINETUNE_DIR] [OUT_DIR]
set -euo pipefail
MODELS=${1:?MODELS_DIR}; DATA=${2:?DATA_DIR}; FT=${3:-results/finetune}; OUT=${4:-results/distill}
ROWS=${ROWS-4000}          # SST-2 training rows (same as the teacher's; empty = all)
CONLL_ROWS=${CONLL_ROWS-5000}
EPOCHS=${EPOCHS:-1}        # student epochs (plain and KD alike)
VAL=${VAL-1.0}             # SST-2 validations per epoch (0.25: four, as the full-data fine-tune in finetune_real_data.sh)
RUNS=${RUNS:-sst2-plain sst2-kd sst2-kd-again sst2-kd-nocache sst2-kd-3layer conll-plain conll-kd}
# variants: EXTRA is appended to every run's arguments and SUFFIX to its name, e.g.
#   RUNS=conll-kd SUFFIX=-hidden EXTRA="--model.hidden_weight 1.0" or SUFFIX=-seed1 EXTRA="--seed_everything 1"
read -ra EXTRA <<< "${EXTRA:-}"
SUFFIX=${SUFFIX:-}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1
mkdir -p "$OUT"
MINILM="$MODELS/all-MiniLM-L6-v2"; MPNET="$MODELS/all-mpnet-base-v2"
best() { python -c "from lightning_modules.artifacts.checkpoints import best_checkpoint_in; print(best_checkpoint_in('$1/checkpoints'))"; }
SST2=(--data.num_workers 1 --data.data_files "{train: $DATA/sst2/train.tsv, validation: $DATA/sst2/dev.tsv}"
      ${ROWS:+--data.max_train_samples $ROWS} --trainer.max_epochs "$EPOCHS" --trainer.val_check_interval "$VAL")
CONLL=(--data.num_workers 1 --data.tag_column 3 ${CONLL_ROWS:+--data.max_train_samples $CONLL_ROWS} --trainer.max_epochs "$EPOCHS"
       --data.data_files "{train: $DATA/conll2003/train.txt, validation: $DATA/conll2003/valid.txt, test: $DATA/conll2003/test.txt}")

run() {  # name, config, args...
  local name=$1 config=$2; shift 2
  [[ " $RUNS " == *" $name "* ]] || return 0
  set -- "$@" ${EXTRA[@]+"${EXTRA[@]}"}
  local id="$name$SUFFIX"
  local dir="$OUT/$id" start end
  start=$(date +%s.%N)
  shrink fit --config "$config" "$@" --out_dir "$dir" > "$dir.fit.log" 2>&1
  end=$(date +%s.%N)
  shrink test --config "$config" "$@" --out_dir "$dir" --ckpt_path best > "$dir.test.log" 2>&1
  python - "$dir" "$id" "$start" "$end" <<'PY'
import json, sys
d, name, start, end = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
m = json.load(open(f"{d}/test_metrics.json"))
line = {"run": name, **{k: round(v, 4) for k, v in m.items() if k in ("test/accuracy", "test/f1")},
        "fit_seconds": round(end - start, 1)}
print(json.dumps(line)); open(f"{d}/../summary.jsonl", "a").write(json.dumps(line) + "\n")
PY
}

if [[ " $RUNS " == *" sst2"* ]]; then
  T=$(best "$FT/mpnet-sst2")
  KD=(--model.teacher "$T" --model.student_model_name_or_path "$MINILM" --data.tokenizer "$MINILM" --data.teacher_tokenizer "$MPNET")
  run sst2-plain configs/sst2/finetune.yaml "${SST2[@]}" --model.model_name_or_path "$MINILM" --model.learning_rate 5e-5
  run sst2-kd configs/sst2/distill.yaml "${SST2[@]}" "${KD[@]}" --model.learning_rate 5e-5
  run sst2-kd-again configs/sst2/distill.yaml "${SST2[@]}" "${KD[@]}" --model.learning_rate 5e-5  # cache reused
  run sst2-kd-nocache configs/sst2/distill.yaml "${SST2[@]}" "${KD[@]}" --model.learning_rate 5e-5 --model.teacher_cache false
  run sst2-kd-3layer configs/sst2/distill.yaml "${SST2[@]}" "${KD[@]}" --model.learning_rate 1e-4 --model.student_layers "[0, 2, 4]"
fi
if [[ " $RUNS " == *" conll"* ]]; then
  T=$(best "$FT/mpnet-conll")
  KD=(--model.teacher "$T" --model.student_model_name_or_path "$MINILM" --data.tokenizer "$MINILM" --data.teacher_tokenizer "$MPNET")
  run conll-plain configs/conll2003/finetune.yaml "${CONLL[@]}" --model.model_name_or_path "$MINILM" --model.learning_rate 1e-4
  run conll-kd configs/conll2003/distill.yaml "${CONLL[@]}" "${KD[@]}" --model.learning_rate 1e-4
fi
