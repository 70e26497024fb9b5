#!/usr/bin/env bash
# The real-data benchmark of the README (not CI): teacher fp32 vs student fp32 vs student PTQ int8 vs
# student QAT int8 (two recipes), PyTorch and ONNX Runtime, SST-2 dev and CoNLL-2003 test, 1 thread.
# Needs the runs of finetune_real_data.sh and qat_real_data.sh (default LR, and LR=3e-6 into results/qat-lr3e-6).
#   scripts/benchmark_real_data.sh DATA_DIR [FINETUNE_DIR] [QAT_DIR] [OUT_DIR]
set -euo pipefail
DATA=${1:?DATA_DIR}; FT=${2:-results/finetune}; QAT=${3:-results/qat}; OUT=${4:-results/benchmark}
THREADS=${THREADS:-1}
export HF_HUB_OFFLINE=1
best() { python -c "from lightning_modules.cli import best_checkpoint_in; print(best_checkpoint_in('$1/checkpoints'))"; }
for task in sst2 conll; do
  if [[ $task == sst2 ]]; then
    config=configs/sst2/qat.yaml split=validation
    files="{train: $DATA/sst2/train.tsv, validation: $DATA/sst2/dev.tsv}"
  else
    config=configs/conll2003/qat.yaml split=test
    files="{train: $DATA/conll2003/train.txt, validation: $DATA/conll2003/valid.txt, test: $DATA/conll2003/test.txt}"
  fi
  teacher=$(best "$FT/mpnet-$task"); student=$(best "$FT/minilm-$task")
  python scripts/benchmark.py --data "$config" --set "data_files=$files" --split $split --onnx --threads "$THREADS" \
    --out "$OUT/$task" --title "$task $split, ${THREADS} CPU thread(s)" \
    --model "teacher MPNet fp32=$teacher" --model "student MiniLM fp32=$student" \
    --model "student PTQ int8=$QAT/$task-ptq/int8.ckpt" \
    --model "student QAT int8 (self-KD)=$QAT/$task-qat-self/int8.ckpt" \
    --model "student QAT int8 (CE)=$QAT/$task-qat/int8.ckpt"
done
