#!/usr/bin/env bash
# Study 2, the IFM paper's Fig. 6: IFM (ε = 0.1) vs baseline on Trifeature at τ ∈ {0.05, 0.2, 0.5}, 3 seeds.
#   pipelines/trifeature_ifm.sh [small|paper] [extra flags]
set -euo pipefail
scale=${1:-small}
shift || true
exec "$(dirname "$0")/study.sh" ifm "$scale" --dataset trifeature "$@"
