#!/usr/bin/env bash
# Run any study command on every GPU (paper scale) or CPU core (small scales), one shard each, then its report.
#
#   pipelines/shards.sh COPD-IFM-ARGS...     e.g. PROCS=2 pipelines/shards.sh study shortcut --scale small
#
# The study commands (each takes --shard K/N, --device and --report-only; extra flags pass through, e.g. --out):
#   study shortcut | outcomes --scale tiny|small|paper
#   vision study difficulty | ifm | correlation --scale small|paper [--dataset trifeature|stl-digits|digits-standin]
#   vision study table1 | robust --scale tiny|paper
# One process per GPU (CUDA_VISIBLE_DEVICES=K, --shard K/N); without GPUs one single-threaded process per
# CPU core (PROCS, default: all cores), which on a small CPU beats one process with many threads.
# Finished runs are skipped, so rerunning the same command resumes an interrupted study.
# Environment: BIN (folder holding copd-ifm, default .venv/bin), PROCS.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
args=("$@")

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
pids=()
if [ "$gpus" -gt 0 ]; then
    for ((k = 0; k < gpus; k++)); do
        CUDA_VISIBLE_DEVICES=$k "$BIN/copd-ifm" "${args[@]}" --shard "$k/$gpus" --device cuda &
        pids+=($!)
    done
else
    procs=${PROCS:-$(nproc)}
    for ((k = 0; k < procs; k++)); do
        OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 "$BIN/copd-ifm" "${args[@]}" --shard "$k/$procs" --device cpu &
        pids+=($!)
    done
fi
status=0
for pid in "${pids[@]}"; do
    wait "$pid" || status=$?
done
"$BIN/copd-ifm" "${args[@]}" --report-only
exit "$status"
