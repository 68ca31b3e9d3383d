#!/usr/bin/env bash
# GPU check (one GPU, a few minutes): training throughput in captions/s at batch 128 on
# precomputed features for fp32, bf16 and fp16, with peak GPU memory, plus a 2-step distributed
# smoke run through torchrun on the GPU (nccl). Results: benchmarks/results/train_throughput_cuda*.json
#
#   bash benchmarks/gpu_check.sh            (from the repository root, .venv set up)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
$py -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
for precision in fp32 bf16 fp16; do
  timeout 150 $py benchmarks/train_throughput.py --device cuda --precision "$precision" --steps 50
done
for f in benchmarks/results/train_throughput_cuda*.json; do
  $py - "$f" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['precision']:>5}: {r['captions_per_s']:10.0f} captions/s  step {1000 * r['median_step_s']:.1f} ms  peak {r['peak_gpu_memory_mib']:.0f} MiB")
PY
done
