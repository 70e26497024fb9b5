#!/usr/bin/env bash
# Real-data QAT check (benchmark, not CI): the fp32 MiniLM-L6 students of the earlier stages
# -> QAT int8 (torchao) and PTQ int8 (no training), each scored by `shrink test` on SST-2 dev /
# CoNLL-2003 test with the same metric. QAT runs with the plain task loss (*-qat) and guided by the
# fp32 student itself as teacher (*-qat-self: alpha 1, the int8 model learns to match its fp32 self).
# *-fp32-more is the control: the same extra training in fp32 (no fake quantization), scored in fp32. Prints one JSON line per run; the side-by-side latency /
# size table is shrink benchmark.
#   scripts/bench/qat_real_data.sh MODELS_DIR DATA_DIR [STUDENTS_DIR] [OUT_DIR]
set -euo pipefail
MODELS=${1:?MODELS_DIR}; DATA=${2:?DATA_DIR}; STUDENTS=${3:-results/finetune}; OUT=${4:-results/qat}
ROWS=${ROWS-8000}           # SST-2 QAT training rows (empty = all 67k)
CONLL_ROWS=${CONLL_ROWS-5000}
LR=${LR-}                   # QAT learning rate (empty = the config's 1e-5)
RUNS=${RUNS:-sst2-qat sst2-qat-self sst2-ptq sst2-fp32-more conll-qat conll-qat-self conll-ptq conll-fp32-more}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1
mkdir -p "$OUT"
MINILM="$MODELS/all-MiniLM-L6-v2"
best() { python -c "from lightning_modules.artifacts.checkpoints import best_checkpoint_in; print(best_checkpoint_in('$1/checkpoints'))"; }
SST2=(--data.num_workers 1 --data.tokenizer "$MINILM" --data.data_files "{train: $DATA/sst2/train.tsv, validation: $DATA/sst2/dev.tsv}"
      ${ROWS:+--data.max_train_samples $ROWS} --trainer.val_check_interval 0.5 ${LR:+--model.learning_rate $LR})
CONLL=(--data.num_workers 1 --data.tokenizer "$MINILM" --data.tag_column 3 ${CONLL_ROWS:+--data.max_train_samples $CONLL_ROWS}
       ${LR:+--model.learning_rate $LR} --data.data_files "{train: $DATA/conll2003/train.txt, validation: $DATA/conll2003/valid.txt, test: $DATA/conll2003/test.txt}")

score() {  # name, config, int8 checkpoint, args...
  local name=$1 config=$2 ckpt=$3; shift 3
  shrink test --config "$config" "$@" --out_dir "$OUT/$name" --ckpt_path "$ckpt" > "$OUT/$name.test.log" 2>&1
  python - "$OUT/$name" "$name" <<'PY'
import json, sys
d, name = sys.argv[1], sys.argv[2]
m = json.load(open(f"{d}/test_metrics.json"))
line = {"run": name, **{k: round(v, 4) for k, v in m.items() if k in ("test/accuracy", "test/f1")}}
print(json.dumps(line)); open(f"{d}/../summary.jsonl", "a").write(json.dumps(line) + "\n")
PY
}
want() { [[ " $RUNS " == *" $1 "* ]]; }

for task in sst2 conll; do
  config=configs/$task/qat.yaml; args=("${SST2[@]}")
  [[ $task == conll ]] && config=configs/conll2003/qat.yaml && args=("${CONLL[@]}")
  student=$(best "$STUDENTS/minilm-$task")
  if want "$task-qat"; then
    shrink fit --config "$config" "${args[@]}" --model.model_name_or_path "$student" --out_dir "$OUT/$task-qat" \
      > "$OUT/$task-qat.fit.log" 2>&1
    score "$task-qat" "$config" "$OUT/$task-qat/int8.ckpt" "${args[@]}" --model.model_name_or_path "$student"
  fi
  if want "$task-qat-self"; then
    shrink fit --config "$config" "${args[@]}" --model.model_name_or_path "$student" --model.teacher "$student" \
      --model.alpha 1.0 --out_dir "$OUT/$task-qat-self" > "$OUT/$task-qat-self.fit.log" 2>&1
    score "$task-qat-self" "$config" "$OUT/$task-qat-self/int8.ckpt" "${args[@]}" --model.model_name_or_path "$student"
  fi
  if want "$task-fp32-more"; then
    ft=configs/$task/finetune.yaml; [[ $task == conll ]] && ft=configs/conll2003/finetune.yaml
    # the QAT config's learning rate unless LR is set (args carries it then)
    lr=$(grep -m1 "learning_rate:" "$config" | awk '{print $2}')
    shrink fit --config "$ft" "${args[@]}" --model.model_name_or_path "$student" --model.learning_rate "$lr" ${LR:+--model.learning_rate $LR} \
      --trainer.max_epochs 1 --out_dir "$OUT/$task-fp32-more" > "$OUT/$task-fp32-more.fit.log" 2>&1
    score "$task-fp32-more" "$ft" best "${args[@]}" --model.model_name_or_path "$student"
  fi
  if want "$task-ptq"; then
    shrink export ptq --model "$student" --out "$OUT/$task-ptq/int8.ckpt" --overwrite > "$OUT/$task-ptq.log" 2>&1
    score "$task-ptq" "$config" "$OUT/$task-ptq/int8.ckpt" "${args[@]}" --model.model_name_or_path "$student"
  fi
done
