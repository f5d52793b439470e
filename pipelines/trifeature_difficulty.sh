#!/usr/bin/env bash
# Study 1, the IFM paper's Fig. 3: Trifeature read-out vs temperature τ and hard-negative β.
#   pipelines/trifeature_difficulty.sh [small|paper] [extra flags]
set -euo pipefail
scale=${1:-small}
shift || true
exec "$(dirname "$0")/study.sh" difficulty "$scale" --dataset trifeature "$@"
