#!/usr/bin/env bash
# The real-data benchmark of the README (not CI): teacher fp32 vs student fp32 vs student PTQ int8 vs
# student QAT int8, PyTorch and ONNX Runtime, SST-2 dev and CoNLL-2003 test, 1 thread.
# Needs the runs of finetune_real_data.sh (teachers: FT/mpnet-*), the students (STUDENTS/minilm-*:
# fine-tuned or distilled) and qat_real_data.sh (QAT/*-ptq, *-qat, *-qat-self). A model whose run is
# missing is left out of the table.
#   scripts/bench/benchmark_real_data.sh DATA_DIR [FINETUNE_DIR] [QAT_DIR] [OUT_DIR] [STUDENTS_DIR]
set -euo pipefail
DATA=${1:?DATA_DIR}; FT=${2:-results/finetune}; QAT=${3:-results/qat}; OUT=${4:-results/benchmark}
STUDENTS=${5:-$FT}
THREADS=${THREADS:-1}
TASKS=${TASKS:-sst2 conll}
export HF_HUB_OFFLINE=1
best() { python -c "from lightning_modules.artifacts.checkpoints import best_checkpoint_in; print(best_checkpoint_in('$1/checkpoints'))"; }
for task in $TASKS; do
  if [[ $task == sst2 ]]; then
    config=configs/sst2/qat.yaml split=validation
    files="{train: $DATA/sst2/train.tsv, validation: $DATA/sst2/dev.tsv}"
  else
    config=configs/conll2003/qat.yaml split=test
    files="{train: $DATA/conll2003/train.txt, validation: $DATA/conll2003/valid.txt, test: $DATA/conll2003/test.txt}"
  fi
  models=()
  [[ -d $FT/mpnet-$task ]] && models+=(--model "teacher MPNet fp32=$(best "$FT/mpnet-$task")")
  models+=(--model "student MiniLM fp32=$(best "$STUDENTS/minilm-$task")")
  for run in "ptq:student PTQ int8" "qat-self:student QAT int8 (self-KD)" "qat:student QAT int8 (CE)"; do
    ckpt="$QAT/$task-${run%%:*}/int8.ckpt"
    [[ -f $ckpt ]] && models+=(--model "${run#*:}=$ckpt")
  done
  shrink benchmark --data "$config" --set "data_files=$files" --split $split --onnx \
    --threads "$THREADS" --out "$OUT/$task" --title "$task $split, ${THREADS} CPU thread(s)" "${models[@]}"
done
