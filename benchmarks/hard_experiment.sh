#!/usr/bin/env bash
# The HARD experiments behind benchmarks/results/hard.md (Nix, Burg & Sinz 2023), 3 seeds each.
#   1. equivariance toy: a shift-robust CNN teacher, an MLP student on centred 40x40 canvases,
#      tested on translated images (KD, KD + random shifts, KD + HARD affine, full and random strength);
#   2. CNN students on Fashion-MNIST (300 images per class): KD, KD + crop/flip, KD + mixup,
#      KD + HARD affine (full and random strength), KD + HARD VAE, in-domain and on shifted / rotated / noisy / blurred test sets
#      (the VAE recipe recipes/hard/vae.yaml is trained once, the first time it is needed).
# Usage: bash benchmarks/hard_experiment.sh [toy|cnn|all] [OUTPUT_DIR] [extra compare options]
set -euo pipefail
which=${1:-all}
out=${2:-runs/benchmarks/hard}
shift 2 || shift $# || true
r=recipes/hard
export GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296
if [[ $which == toy || $which == all ]]; then
  softdistill compare $r/toy-kd.yaml $r/toy-kd-shift.yaml $r/toy-hard.yaml $r/toy-hard-random.yaml \
    --seeds 3 --output "$out" --report "$out/report-toy" --baseline toy-kd --quiet "$@"
fi
if [[ $which == cnn || $which == all ]]; then
  softdistill compare $r/cnn-kd.yaml $r/cnn-kd-cropflip.yaml $r/cnn-kd-mixup.yaml $r/cnn-hard-affine.yaml \
    $r/cnn-hard-affine-random.yaml $r/cnn-hard-vae.yaml --seeds 3 --output "$out" --report "$out/report-cnn" --baseline cnn-kd --quiet "$@"
fi
