#!/usr/bin/env bash
# The CT shortcut study (issue #14): baseline vs IFM encoders, read-out of every ground-truth latent of the
# synthetic cohort, on every GPU (paper scale) or CPU core (tiny / small scale), then the report.
#
#   pipelines/ct_shortcut.sh SCALE [extra `copd-ifm study shortcut` flags, e.g. --seeds 5 --eps 0.1,0.5]
#
# SCALE: tiny | small | paper. One process per GPU or CPU core (pipelines/shards.sh); the first builds the
# shared cohort and patch store while the others wait for it. Finished runs are skipped and an interrupted
# pretraining resumes from its last epoch, so rerunning the same command resumes the study.
# Environment: OUT (study folder; default outputs/studies/shortcut-SCALE), BIN (folder holding copd-ifm,
# default .venv/bin), PROCS.
set -euo pipefail
scale=${1:?usage: pipelines/ct_shortcut.sh SCALE [flags]}
shift
cd "$(dirname "$0")/.."
args=(study shortcut --scale "$scale" "$@")
if [ -n "${OUT:-}" ]; then
    args+=(--out "$OUT")
fi
exec pipelines/shards.sh "${args[@]}"
