#!/usr/bin/env bash
# The Fashion-MNIST IDA experiment behind benchmarks/results/ida.md (about 15 minutes on 2 cores).
# Shares the ResNet-8 teacher with benchmarks/fmnist_methods.sh when given the same OUTPUT_DIR.
# Usage: bash benchmarks/ida_experiment.sh [OUTPUT_DIR] [extra compare options]
set -euo pipefail
out=${1:-runs/benchmarks/fmnist}
shift || true
r=recipes/ida
softdistill compare $r/kd-clean.yaml $r/mixup-aug.yaml $r/mixup-kdi-replace.yaml $r/mixup-kdi-add.yaml \
  $r/mixup-kdp.yaml $r/cutmix-aug.yaml $r/cutmix-kdi-replace.yaml $r/cutmix-kdi-add.yaml $r/cutmix-kdp.yaml \
  --seeds 3 --output "$out" --report "$out/report-ida" --baseline fmnist-kd-clean --quiet "$@"
python benchmarks/ida_teacher_order.py "$out/fmnist-teacher/seed0/best.pt"
