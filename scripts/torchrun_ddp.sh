#!/usr/bin/env bash
# Multi-GPU / multi-node DDP with torchrun (Kubernetes, cloud VMs, elastic jobs). On every node:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/torchrun_ddp.sh configs/sst2/finetune.yaml [overrides...]
# Lightning reads torchrun's environment (TorchElasticEnvironment). A SIGTERM (spot reclaim,
# pod eviction) makes shrink write last.ckpt and exit with 143; torchrun's --max-restarts, or the
# orchestrator's restart policy, starts it again and --ckpt_path last resumes exactly.
set -euo pipefail
CONFIG=${1:?usage: scripts/torchrun_ddp.sh CONFIG.yaml [shrink overrides...]}; shift
GPUS=${GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
torchrun --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$GPUS" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" --max-restarts "${MAX_RESTARTS:-3}" \
  "$(dirname "$0")/train.py" fit --config "$CONFIG" "$@" \
  --trainer.strategy ddp --trainer.num_nodes "${NNODES:-1}" --trainer.devices "$GPUS" --ckpt_path last
