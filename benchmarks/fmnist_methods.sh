#!/usr/bin/env bash
# The Fashion-MNIST method comparison behind benchmarks/results/tfkd.md and wsl.md.
# One output folder: the ResNet-8 teacher and the MLP baseline are trained once and shared.
# Usage: bash benchmarks/fmnist_methods.sh [OUTPUT_DIR] [extra compare options, e.g. -o train.threads=1]
set -euo pipefail
out=${1:-runs/benchmarks/fmnist}
shift || true
q=recipes/quickstart
softdistill compare $q/baseline.yaml $q/ls.yaml $q/kd.yaml $q/tfkd-self.yaml $q/tfkd-reg.yaml \
  $q/tfkd-reg-reference.yaml recipes/tfkd/dekd.yaml $q/wsl.yaml --seeds 3 --output "$out" \
  --report "$out/report-mlp" --quiet "$@"
# Re-KD: a CNN student taught by the (weaker) MLP baseline, against the CNN trained alone.
softdistill compare recipes/tfkd/rekd-baseline.yaml recipes/tfkd/rekd.yaml --seeds 3 --output "$out" \
  --report "$out/report-rekd" --quiet "$@"
