#!/usr/bin/env bash
# Run one feature-suppression study across every GPU (paper scale) or CPU core (small scale), then aggregate.
#
#   pipelines/study.sh STUDY SCALE [extra `copd-ifm vision study` flags, e.g. --dataset stl-digits --seeds 3]
#
# STUDY: difficulty | ifm | correlation;  SCALE: small | paper.
# One process per GPU or CPU core (pipelines/shards.sh).
# Finished runs are skipped, so rerunning the same command resumes an interrupted study.
# Environment: OUT (study folder; default outputs/studies/STUDY-DATASET-SCALE), BIN (folder holding copd-ifm,
# default .venv/bin), PROCS.
set -euo pipefail
study=${1:?usage: pipelines/study.sh STUDY SCALE [flags]}
scale=${2:?usage: pipelines/study.sh STUDY SCALE [flags]}
shift 2
cd "$(dirname "$0")/.."
args=(vision study "$study" --scale "$scale" "$@")
if [ -n "${OUT:-}" ]; then
    args+=(--out "$OUT")
fi

exec pipelines/shards.sh "${args[@]}"
