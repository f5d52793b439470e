#!/usr/bin/env bash
# Train one vision run to completion, once: skip it when finished, resume it when interrupted, else start it.
# Use it for one run spread over several GPUs (LAUNCH=torchrun ...); a grid of runs is a study, e.g.
# `copd-ifm vision study table1` (the paper's Table 1 grid), run through pipelines/shards.sh.
#
#   pipelines/pretrain_once.sh RUN [`copd-ifm vision pretrain` flags for a new run]
#
# Environment: BIN (folder holding copd-ifm, default .venv/bin), DEVICE (auto | cpu | cuda),
# LAUNCH (the command that runs copd-ifm; default "$BIN/copd-ifm", e.g. "$BIN/torchrun --standalone
# --nproc_per_node 8 -m copd_ifm").
set -euo pipefail
run=${1:?usage: pipelines/pretrain_once.sh RUN [pretrain flags]}
shift
BIN=${BIN:-.venv/bin}
read -r -a launch <<< "${LAUNCH:-$BIN/copd-ifm}"
device=${DEVICE:-auto}
if [ -f "$run/checkpoint.pt" ]; then
    if ! grep -q '"status": "done"' "$run/summary.json" 2>/dev/null; then
        "${launch[@]}" vision pretrain --resume --out "$run" --device "$device"
    fi
else
    "${launch[@]}" vision pretrain --out "$run" --device "$device" "$@"
fi
