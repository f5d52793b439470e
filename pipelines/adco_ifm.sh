#!/usr/bin/env bash
# The IFM paper's Table 1 grid for MoCo-v2 and AdCo: each method at ε ∈ {0, 0.05, 0.1, 0.2}, then the linear
# read-out of every run and one table.
#
#   pipelines/adco_ifm.sh [CONFIG] [extra `copd-ifm vision pretrain` flags, e.g. --data-root DIR --seed 1]
#
# CONFIG: a MoCo config in configs/vision or a YAML path (default imagenet100_moco: ResNet-50, 200 epochs;
# `cpu_tiny` for a smoke test). AdCo runs use the AdCo config of the same dataset (DATASET_adco beside a
# DATASET_moco config: the official AdCo settings, bank, ad_init), else CONFIG itself with --method adco (its
# `adco:` section). A finished run is not retrained; an interrupted one is resumed.
# Environment: OUT (default outputs/adco-ifm-CONFIG), BIN (folder holding copd-ifm, default .venv/bin),
# EPS (space-separated grid, default "0 0.05 0.1 0.2"), METHODS (default "moco adco"), DEVICE (auto | cpu | cuda),
# NPROC (processes per run under torchrun; default 1: plain copd-ifm).
set -euo pipefail
config=${1:-imagenet100_moco}
shift || true
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-outputs/adco-ifm-$(basename "$config" .yaml)}
device=${DEVICE:-auto}
if [ "${NPROC:-1}" -gt 1 ]; then
    export LAUNCH="$BIN/torchrun --standalone --nproc_per_node $NPROC -m copd_ifm"
fi
adco_config=$config
candidate=${config/_moco/_adco}
if [ "$candidate" != "$config" ] && { [ -f "$candidate" ] || [ -f "configs/vision/$candidate.yaml" ]; }; then
    adco_config=$candidate
fi
runs=()
for method in ${METHODS:-moco adco}; do
    method_config=$config
    [ "$method" = adco ] && method_config=$adco_config
    for eps in ${EPS:-0 0.05 0.1 0.2}; do
        run="$OUT/${method}_eps$eps"
        runs+=("$run")
        BIN=$BIN DEVICE=$device pipelines/pretrain_once.sh "$run" --config "$method_config" --method "$method" \
            --ifm-eps "$eps" "$@"
        [ -f "$run/linear.json" ] || "$BIN/copd-ifm" vision linear --run "$run" --device "$device"
    done
done
"$BIN/python" - "${runs[@]}" <<'PY'
import json, sys
from copd_ifm.contrastive.rundir import recorded_epsilon
print("| run | method | ε | linear top-1 % | read-out |")
print("|---|---|---|---|---|")
for run in sys.argv[1:]:
    s = json.load(open(f"{run}/summary.json", encoding="utf-8"))
    top1 = [f"{v:.2f}" for per_label in s["linear"].values() for v in per_label.values()]
    print(f"| {run} | {s['method']} | {recorded_epsilon(s):g} | {', '.join(top1)} | "
          f"{'; '.join(s['linear_readout'].values())} |")
PY
