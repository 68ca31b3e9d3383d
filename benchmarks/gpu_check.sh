#!/usr/bin/env bash
# The GPU check of issue 12 in one run (< 8 minutes on one GPU): the cuda-marked tests, a
# 2-process torchrun on the GPU with nccl (1 process when the device refuses two ranks),
# captions/s and peak memory of the GRU model at batch 128 for fp32/bf16/fp16, photo
# fine-tuning photos/s with DataLoader workers, and fp32 GPU == CPU loss to 1e-4.
# One JSON: benchmarks/results/gpu_check.json (or the path given as the first argument).
#
#   bash benchmarks/gpu_check.sh [OUT.json]        (from anywhere; PYTHON=... picks the interpreter)
#
# Without a GPU it runs the CPU parts (tests skip, 2 gloo processes, a tiny fine-tuning smoke
# run, the CPU loss) and the JSON says "gpu": null, "complete": false: not a GPU result.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=$(command -v python3); fi
fi
out=${1:-benchmarks/results/gpu_check.json}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import torch; print('torch', torch.__version__, '| CUDA device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU parts only)')"
# Each section has its own time limit inside; this one bounds the whole check.
timeout 480 "$py" benchmarks/gpu_check.py --out "$out"
"$py" - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"device {r['device']} ({r['gpu'] or 'no GPU'}), complete: {r['complete']}, {r['wall_s']} s")
for name, s in r["sections"].items():
    note = s.get("error") or (s["skipped"] if isinstance(s.get("skipped"), str) else "")
    print(f"  {name:14s} ok={s.get('ok')}  {note}")
for t in (r["sections"].get("throughput") or {}).get("results", []):
    print(f"  {t['precision']:>5}: {t['captions_per_s']:10.0f} captions/s  step {t['median_step_ms']:.1f} ms  peak {t['peak_gpu_memory_mib']:.0f} MiB")
PY
