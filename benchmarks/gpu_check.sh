#!/usr/bin/env bash
# The checks that need a CUDA device, in under 4 minutes on one GPU; prints one table.
#   amp fp16 (GradScaler) and bf16 runs of the tiny teacher recipe (digits, bundled with scikit-learn);
#   the tiny KD recipe with train.compile off and on (same accuracy within 1.5 points);
#   no host synchronisation in the training step (torch.cuda.set_sync_debug_mode, 2- against 8-step epochs)
#     for KD from an online teacher, IDA (mixup, isotonic correction, order penalty) and HARD;
#   the throughput benchmark at CUDA sizes (ResNet-56 -> ResNet-20, batch 256, short);
#   the isotonic correction on CUDA against the CPU result;
#   a 1-process NCCL launch (torchrun): all-reduce sum and min, a DDP step.
# Usage (from the repository root, softdistill installed or on PYTHONPATH):
#   bash benchmarks/gpu_check.sh [OUTPUT_DIR]        # default runs/gpu-check
set -uo pipefail
out=${1:-runs/gpu-check}
python=${PYTHON:-python}
tiny=src/softdistill/recipes/tiny
rows=()
mkdir -p "$out"

# check NAME COMMAND...: run it, keep its output in $out/NAME.log; the row shows its last line.
check() {
  local name=$1
  shift
  local start=$SECONDS status=pass
  "$@" >"$out/$name.log" 2>&1 || status=FAIL
  local detail
  detail=$(grep -v '^\s*$' "$out/$name.log" | tail -n 1 | cut -c 1-110 | tr '|' '/')
  rows+=("| $name | $status | $((SECONDS - start)) | $detail |")
}

train() {  # train RECIPE OUTPUT [overrides...]
  local recipe=$1 folder=$2
  shift 2
  local args=()
  for override in "$@"; do args+=(-o "$override"); done
  $python -m softdistill train "$recipe" --quiet -o train.device=cuda -o output_dir="$out/$folder" "${args[@]}"
}

check amp-fp16 train $tiny/teacher.yaml fp16 train.amp=fp16 epochs=3
check amp-bf16 train $tiny/teacher.yaml bf16 train.amp=bf16 epochs=3

compile_pair() {
  train $tiny/kd.yaml compile-off epochs=4 || return 1
  train $tiny/kd.yaml compile-on epochs=4 train.compile=true || return 1
  $python - "$out" <<'EOF'
import json, sys
off, on = (json.load(open(f"{sys.argv[1]}/compile-{k}/digits-kd/seed0/summary.json")) for k in ("off", "on"))
print(f"test acc compile off {off['test_acc_last']:.2f} / on {on['test_acc_last']:.2f}; "
      f"{off['seconds']:.1f} s / {on['seconds']:.1f} s (compilation included)")
sys.exit(abs(off["test_acc_last"] - on["test_acc_last"]) > 1.5)
EOF
}
check compile compile_pair

check no-host-sync $python - "$out" "$tiny" <<'EOF'
import sys, warnings
import torch
from softdistill.config import load_recipe
from softdistill.runner import build_trainer

out, tiny = sys.argv[1], sys.argv[2]
teacher = ["soft_labels.source=teacher"]
methods = {"kd": teacher, "ida": teacher + ["method.name=ida", "method.correction=add", "method.order_penalty=1",
                                           "data.augment.mix=mixup"],
           "hard": teacher + ["method.name=hard"]}


def syncs(name, overrides, batch_size):
    recipe = load_recipe(f"{tiny}/kd.yaml", overrides + [f"data.batch_size={batch_size}", "train.device=cuda",
                                                        "train.log_every=0", f"output_dir={out}/sync-{name}-{batch_size}"])
    trainer, _ = build_trainer(recipe, quiet=True)
    trainer.epoch = 1
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train_epoch()
    torch.cuda.set_sync_debug_mode("default")
    return len(trainer.train_loader), sum("synchroniz" in str(w.message) for w in caught)


failed = []
report = []
for name, overrides in methods.items():
    (short, few), (long, many) = syncs(name, overrides, 256), syncs(name, overrides, 64)
    per_step = (many - few) / (long - short)
    report.append(f"{name} {per_step:.2f}")
    if per_step > 0:
        failed.append(name)
print("syncs per step: " + ", ".join(report))
sys.exit(bool(failed))
EOF

check throughput $python benchmarks/throughput.py --device cuda --teacher resnet56 --student resnet20 \
  --batch-size 256 --batches 20 --pairs 3 --rows kd,kd-speed,ce \
  --speed "channels_last=true,teacher_dtype=bfloat16,cudnn_benchmark=true" --output "$out/throughput.md"

check isotonic-cuda $python - <<'EOF'
import torch
from softdistill.isotonic import isotonic_logits

gen = torch.Generator().manual_seed(0)
worst = 0.0
for classes in (10, 100, 1000):
    logits = 3 * torch.randn(2048, classes, generator=gen)
    a, b = torch.randint(0, classes, (2048,), generator=gen), torch.randint(0, classes, (2048,), generator=gen)
    lam = torch.rand(2048, generator=gen)
    lam[:64] = 0.5
    cpu = isotonic_logits(logits, a, b, lam)
    for check in (True, False):
        cuda = isotonic_logits(logits.cuda(), a.cuda(), b.cuda(), lam.cuda(), check=check).cpu()
        worst = max(worst, (cuda - cpu).abs().max().item())
print(f"max |cuda - cpu| = {worst:.2e}")
raise SystemExit(worst > 1e-4)
EOF

nccl_check() {
  cat >"$out/nccl_check.py" <<'EOF'
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

dist.init_process_group("nccl")
device = torch.device("cuda", 0)
torch.cuda.set_device(device)
total = torch.tensor([2.0], device=device)
low = torch.tensor([5], device=device)
dist.all_reduce(total, op=dist.ReduceOp.SUM)
dist.all_reduce(low, op=dist.ReduceOp.MIN)
model = DistributedDataParallel(torch.nn.Linear(8, 2).to(device), device_ids=[0])
model(torch.randn(4, 8, device=device)).sum().backward()
dist.barrier()
print(f"nccl {torch.cuda.nccl.version()}: sum {total.item()}, min {low.item()}, DDP step ok")
dist.destroy_process_group()
EOF
  torchrun --standalone --nproc_per_node=1 "$out/nccl_check.py"
}
check nccl-1-process nccl_check

printf '\n| check | result | seconds | detail |\n|---|---|---|---|\n'
printf '%s\n' "${rows[@]}"
echo "logs: $out/*.log"
