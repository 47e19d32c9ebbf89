#!/usr/bin/env bash
# Multi-node training with torchrun: run this once on every node, at about the same time.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 experiments/launch/torchrun.sh CONFIG [--key value ...]   # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 experiments/launch/torchrun.sh CONFIG [--key value ...]   # on node1
#
# CONFIG is an experiment YAML (e.g. experiments/encodec/24khz_mono.yaml); experiments/launch/ddp.yaml
# is added after it (GPU, bf16-mixed, ddp_find_unused_parameters_true, num_nodes/devices: auto), and
# the remaining arguments come last, so they override both. Environment (defaults in brackets):
#   NNODES [1]  NODE_RANK [0]  NPROC_PER_NODE [gpu: one process per visible GPU]
#   MASTER_ADDR [127.0.0.1]: address of node rank 0, reachable from every node
#   MASTER_PORT [29500]      TORCHRUN [torchrun]
# Resume a stopped run with `--ckpt_path path/to/last.ckpt` (every rank continues its own part of
# the data). Run from the repository root with the project's environment active.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
config=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
exec "${TORCHRUN:-torchrun}" \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --nproc_per_node="${NPROC_PER_NODE:-gpu}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${MASTER_PORT:-29500}" \
    -m codecplatform.cli fit --config "$config" --config "$here/ddp.yaml" "$@"
