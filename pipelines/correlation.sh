#!/usr/bin/env bash
# Study 3, the IFM paper's Fig. 2: final InfoNCE loss vs read-out error, on Trifeature and on STL-digits.
# STL-digits needs STL10 and MNIST under the data root (DATA_HOME/vision/stl10_binary, .../MNIST/raw); without
# them the offline stand-in (scikit-learn digits on scikit-learn's photos) is used instead.
#   pipelines/correlation.sh [small|paper] [extra flags]
set -euo pipefail
scale=${1:-small}
shift || true
here="$(dirname "$0")"
"$here/study.sh" correlation "$scale" --dataset trifeature "$@"
root=$(cd "$here/.." && "${BIN:-.venv/bin}/python" -c \
    "from natural_images.config import DataConfig; print(DataConfig().root_path)")
if [ -f "$root/stl10_binary/train_X.bin" ] && [ -d "$root/MNIST/raw" ]; then
    digits=stl-digits
else
    digits=digits-standin
    echo "STL10/MNIST not found under $root: using the offline digits-standin"
fi
"$here/study.sh" correlation "$scale" --dataset "$digits" "$@"
