#!/usr/bin/env bash
# Real-data pruning benchmark (not CI): the MiniLM-L6 student pruned to 30% and 50% fewer encoder
# parameters (heads and FFN neurons, Taylor importance, KD recovery) against layer dropping at about
# the same parameter counts (4 and 3 of 6 layers, DistilBERT-style, the same KD recovery), then int8
# (PTQ) of each and shrink benchmark with ONNX Runtime (1 thread). The teacher of the recovery is
# the unpruned student (self-distillation) unless TEACHER_CKPT is set (with TEACHER_TOKENIZER when its
# tokenizer differs, e.g. an MPNet teacher); TEACHER_BENCH (optional) adds
# the teacher's fp32 PyTorch row for the full-chain figures.
#   scripts/bench/prune_real_data.sh MODELS_DIR DATA_DIR STUDENT [OUT_DIR]
# STUDENT: the fine-tuned or distilled MiniLM .ckpt / model folder of the task.
#   TASK=conll for CoNLL-2003 (default sst2); ROWS / EPOCHS size the recovery training.
#   VOCAB=20000 also prunes prune-50's vocabulary (shrink prune-vocab --keep-first 20000) and
#   benchmarks its int8 ONNX folder: the full-chain row.
set -euo pipefail
MODELS=${1:?MODELS_DIR}; DATA=${2:?DATA_DIR}; STUDENT=${3:?STUDENT}; OUT=${4:-results/prune}
TASK=${TASK:-sst2}
ROWS=${ROWS-6000}; EPOCHS=${EPOCHS:-2}; THREADS=${THREADS:-1}
RUNS=${RUNS:-prune-30 prune-50 layers-4 layers-3}
export WANDB_MODE=${WANDB_MODE:-offline} HF_HUB_OFFLINE=1
MINILM="$MODELS/all-MiniLM-L6-v2"
if [[ $TASK == sst2 ]]; then
  files="{train: $DATA/sst2/train.tsv, validation: $DATA/sst2/dev.tsv}"; folder=sst2; split=validation
  data=(--data.data_files "$files" --trainer.val_check_interval 0.5); export_data=(--set "data_files=$files")
else
  files="{train: $DATA/conll2003/train.txt, validation: $DATA/conll2003/valid.txt, test: $DATA/conll2003/test.txt}"
  folder=conll2003; split=test; data=(--data.data_files "$files" --data.tag_column 3)
  export_data=(--set "data_files=$files" --set tag_column=3)
fi
data+=(--data.num_workers 1 --data.tokenizer "$MINILM" ${ROWS:+--data.max_train_samples $ROWS})
teacher=${TEACHER_CKPT:-$STUDENT}
[[ -n ${TEACHER_TOKENIZER:-} ]] && data+=(--data.teacher_tokenizer "$TEACHER_TOKENIZER")
mkdir -p "$OUT/$TASK"
best() { python -c "from lightning_modules.artifacts.checkpoints import best_checkpoint_in; print(best_checkpoint_in('$1/checkpoints'))"; }
want() { [[ " $RUNS " == *" $1 "* ]]; }

recover() {  # name, config, args...: fit, then log the wall time
  local name=$1 config=$2 start; shift 2
  want "$name" || return 0
  start=$(date +%s)
  shrink fit --config "$config" "${data[@]}" --out_dir "$OUT/$TASK/$name" --trainer.max_epochs "$EPOCHS" \
    --model.teacher "$teacher" "$@" > "$OUT/$TASK/$name.fit.log" 2>&1
  echo "{\"run\": \"$TASK/$name\", \"fit_seconds\": $(($(date +%s) - start))}" | tee -a "$OUT/summary.jsonl"
}
recover prune-30 "configs/$folder/prune.yaml" --model.model_name_or_path "$STUDENT" --model.target_sparsity 0.3
recover prune-50 "configs/$folder/prune.yaml" --model.model_name_or_path "$STUDENT" --model.target_sparsity 0.5
recover layers-4 "configs/$folder/distill.yaml" --model.student_model_name_or_path "$STUDENT" --model.student_layers "[0, 2, 3, 5]"
recover layers-3 "configs/$folder/distill.yaml" --model.student_model_name_or_path "$STUDENT" --model.student_layers "[0, 2, 4]"

# int8 (PTQ) of each, from its best checkpoint (a pruning checkpoint becomes the smaller model)
student_ckpt=$STUDENT
if [[ -d $STUDENT ]]; then  # shrink export ptq takes a .ckpt: the student folder's run checkpoint
  student_ckpt=$(best "$(dirname "$STUDENT")")
fi
shrink export ptq --model "$student_ckpt" --out "$OUT/$TASK/student.int8.ckpt" --overwrite > /dev/null 2>&1
models=()
[[ -n ${TEACHER_BENCH:-} ]] && models+=(--model "teacher fp32=$TEACHER_BENCH")
models+=(--model "student fp32=$STUDENT" --model "student int8=$OUT/$TASK/student.int8.ckpt")
for run in prune-30 prune-50 layers-4 layers-3; do
  [[ -d $OUT/$TASK/$run/checkpoints ]] || continue
  ckpt=$(best "$OUT/$TASK/$run")
  shrink export ptq --model "$ckpt" --out "$OUT/$TASK/$run.int8.ckpt" --overwrite > /dev/null 2>&1
  models+=(--model "$run fp32=$ckpt" --model "$run int8=$OUT/$TASK/$run.int8.ckpt")
done
if [[ -n ${VOCAB:-} && -d $OUT/$TASK/prune-50/model ]]; then  # smaller embeddings, then int8 ONNX
  shrink prune-vocab --model "$OUT/$TASK/prune-50/model" --keep-first "$VOCAB" --overwrite \
    --out "$OUT/$TASK/prune-50-vocab" --data "configs/$folder/qat.yaml" "${export_data[@]}" > "$OUT/$TASK/prune-50-vocab.log" 2>&1
  shrink export onnx --model "$OUT/$TASK/prune-50-vocab" --int8 --overwrite --out "$OUT/$TASK/prune-50-vocab-onnx" \
    --data "configs/$folder/qat.yaml" "${export_data[@]}" >> "$OUT/$TASK/prune-50-vocab.log" 2>&1
  models+=(--model "prune-50 + vocabulary int8=$OUT/$TASK/prune-50-vocab-onnx")
fi
shrink benchmark --data "configs/$folder/qat.yaml" "${export_data[@]}" --split $split --onnx \
  --threads "$THREADS" --out "$OUT/$TASK/benchmark" --title "$TASK $split, pruning vs layer dropping, $THREADS CPU thread(s)" \
  "${models[@]}"
