#!/usr/bin/env bash
# The IFM paper's Fig. 8 (Sec. 4.3): robust vs non-robust features of SimCLR vs IFM-SimCLR on the same data.
#
#   pipelines/robust.sh [CONFIG] [extra `copd-ifm vision pretrain` flags, e.g. --data-root DIR --epochs 50]
#
# CONFIG: a name in configs/vision or a YAML path (default cifar10_simclr). Two runs share the config and
# seed and differ only in the IFM budget: ε = 0 (SimCLR) and ε = $EPS (IFM-SimCLR). Each is then read out by
# `copd-ifm vision robust` (probes on D, D_R, D_NR; clean test top-1) and the two robust.json are tabulated.
# A finished run is not retrained; an interrupted one is resumed.
# Environment: OUT (default outputs/robust-CONFIG), BIN (folder holding copd-ifm, default .venv/bin),
# EPS (default 0.1), FGSM_EPS (default 0.01), MAX_STEPS (default 20), DEVICE (auto | cpu | cuda).
set -euo pipefail
config=${1:-cifar10_simclr}
shift || true
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-outputs/robust-$(basename "$config" .yaml)}
device=${DEVICE:-auto}
runs=()
for eps in 0 "${EPS:-0.1}"; do
    run="$OUT/simclr_eps$eps"
    runs+=("$run")
    BIN=$BIN DEVICE=$device pipelines/pretrain_once.sh "$run" --config "$config" --method simclr --ifm-eps "$eps" "$@"
    "$BIN/copd-ifm" vision robust --run "$run" --fgsm-eps "${FGSM_EPS:-0.01}" --max-steps "${MAX_STEPS:-20}" \
        --device "$device"
done
"$BIN/python" - "${runs[@]}" <<'PY'
import json, sys
print("| run | D % | D_R % | D_NR % | flipped | never flipped |")
print("|---|---|---|---|---|---|")
for run in sys.argv[1:]:
    r = json.load(open(f"{run}/robust/robust.json", encoding="utf-8"))
    print(f"| {run} | {r['D']:.2f} | {r['D_R']:.2f} | {r['D_NR']:.2f} | {r['flipped']} | {r['not_flipped']} |")
PY
