#!/usr/bin/env bash
# One shot on a lent GPU (≤ 8 minutes on one H200-class device): ResNet-50 (l1-filter 0.5) lean, dense weights and
# 2:4 (enforce-2to4), each as fp16 and int8 (trt-s8: precision in the graph, as TensorRT 11 needs it), built with
# the TensorRT target (--sparsity for the 2:4 ones), which layers TensorRT reports sparse, and the four engines
# timed interleaved. Everything lands in $OUT (default ./gpu-out): build and compare JSON, logs, summary.json.
#
#   OUT=/tmp/gpu-out benchmarks/gpu.sh          # needs TensorRT ≥ 10 and a CUDA torch in the environment
#
# Prints a table at the end; exits non-zero at the first step that fails (its log is in $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
SC=("$PY" -m sparsecut)
log() { printf '%s %s\n' "$(date +%T)" "$*" | tee -a "$OUT/steps.log"; }

"$PY" - <<'EOF' 2>&1 | tee "$OUT/environment.txt"
import sys
try:
    import tensorrt
except ImportError as exc:
    sys.exit(f"gpu.sh needs TensorRT >= 10 in this Python ({exc}); nothing was run")
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh needs a CUDA device and a CUDA build of torch (torch {torch.__version__}); nothing was run")
print("tensorrt", tensorrt.__version__, "| torch", torch.__version__, "|", torch.cuda.get_device_name(0))
EOF

log "checkpoint and export"
"${SC[@]}" models make resnet50 --recipe l1-filter --amount 0.5 -o "$OUT/r50.pt" > "$OUT/make.log"
"${SC[@]}" export "$OUT/r50.pt" --arch resnet50 -o "$OUT/r50.onnx" --json "$OUT/export.json" > "$OUT/export.log"
log "lean (dense weights) and lean 2:4"
"${SC[@]}" optimize "$OUT/r50.onnx" -o "$OUT/lean.onnx" --json "$OUT/lean.json" > "$OUT/lean.log"
"${SC[@]}" optimize "$OUT/r50.onnx" -o "$OUT/lean24.onnx" --enforce-2to4 --json "$OUT/lean24.json" > "$OUT/lean24.log"

for model in lean lean24; do
  for precision in fp16 int8; do
    name="$model-$precision"
    sparsity=(); [ "$model" = lean24 ] && sparsity=(--sparsity)
    log "build $name"
    # int8: quantized first in TensorRT's format (symmetric, outputs kept int8); random calibration is enough to
    # time (said loudly in the log)
    "${SC[@]}" build "$OUT/$model.onnx" --target tensorrt --precision "$precision" "${sparsity[@]}" --no-measure \
      -o "$OUT/$name.plan" --timing-cache "$OUT/timing.cache" --json "$OUT/$name.build.json" > "$OUT/$name.build.log" 2>&1
  done
done

log "time the four engines interleaved"
"${SC[@]}" compare "$OUT/lean-fp16.plan" "$OUT/lean-int8.plan" "$OUT/lean24-fp16.plan" "$OUT/lean24-int8.plan" \
  --target tensorrt --rounds 20 --iterations 400 --json "$OUT/compare.json" > "$OUT/compare.log" 2>&1

"$PY" - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
compare = json.loads((out / "compare.json").read_text())
summary = {"device": compare["device"], "engines": []}
print(f"device: {compare['device']}")
print(f"{'engine':<14} {'p50 ms':>8} {'p90 ms':>8} {'vs lean-fp16 (95 % interval)':>30} {'sparse layers':>14}")
for v in compare["variants"]:
    name = Path(v["model"]).stem
    build = json.loads((out / f"{name}.build.json").read_text())
    s = v["speedup"]
    row = {"engine": name, "p50_ms": v["latency"]["p50_ms"], "p90_ms": v["latency"]["p90_ms"],
           "speedup": s, "sparse_layers": build.get("sparse_layers", []), "notes": build.get("notes", [])}
    summary["engines"].append(row)
    print(f"{name:<14} {row['p50_ms']:>8.3f} {row['p90_ms']:>8.3f} "
          f"{s['value']:>12.2f}× ({s['low']:.2f}–{s['high']:.2f})      {len(row['sparse_layers']):>8}")
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
EOF
log "done: $OUT/summary.json"
