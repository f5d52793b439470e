#!/usr/bin/env bash
# Study 3, the IFM paper's Fig. 2: final InfoNCE loss vs read-out error, on Trifeature and on STL-digits.
# STL-digits needs STL10 and MNIST under the data root (DATA_ROOT/stl10_binary, DATA_ROOT/MNIST/raw); without
# them the offline stand-in (scikit-learn digits on scikit-learn's photos) is used instead.
#   pipelines/correlation.sh [small|paper] [extra `copd-ifm vision study` flags]
# Environment: DATA_ROOT (default $COPD_IFM_HOME/vision, COPD_IFM_HOME defaulting to ~/.cache/copd-ifm: the
# studies' default; when set it is passed on as --data-root), and pipelines/shards.sh's BIN, PROCS.
set -euo pipefail
scale=${1:-small}
shift || true
here="$(dirname "$0")"
root=${DATA_ROOT:-${COPD_IFM_HOME:-$HOME/.cache/copd-ifm}/vision}
flags=(--scale "$scale")
[ -n "${DATA_ROOT:-}" ] && flags+=(--data-root "$DATA_ROOT")
"$here/shards.sh" vision study correlation "${flags[@]}" --dataset trifeature "$@"
if [ -f "$root/stl10_binary/train_X.bin" ] && [ -d "$root/MNIST/raw" ]; then
    digits=stl-digits
else
    digits=digits-standin
    echo "STL10/MNIST not found under $root: using the offline digits-standin"
fi
"$here/shards.sh" vision study correlation "${flags[@]}" --dataset "$digits" "$@"
