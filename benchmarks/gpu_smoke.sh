#!/usr/bin/env bash
# GPU smoke test: the tiny model built in code (no download), trained and served on one CUDA GPU.
#
#   bash benchmarks/gpu_smoke.sh [OUT]          # on a machine with a CUDA GPU, cai-kit installed
#   CAI_SMOKE_CPU=1 bash benchmarks/gpu_smoke.sh  # the same steps on a CPU (to check the script itself)
#
# It checks, in under 8 minutes on one GPU: SFT and DPO of `cai train tiny` in bf16 on CUDA, a kill -9 of
# the SFT stage after its first checkpoint and a rerun that resumes from it, and the transformers engine's
# generation tokens/s (benchmarks/generate_throughput.py on the tiny model). Nothing is downloaded: with
# wheels to install first (a machine with no network), put them in $WHEELS (default: ./wheels) and they
# are installed with --no-index. It prints one line per check and exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/gpu-smoke}
WHEELS=${WHEELS:-wheels}
export HF_HUB_OFFLINE=1 CAI_KIT_CACHE=${CAI_KIT_CACHE:-$OUT/cache}
rm -rf "$OUT/run"
mkdir -p "$OUT"
if [ -d "$WHEELS" ]; then
  python -m pip install --quiet --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
fi
python - <<'PY'
import os, torch
if not torch.cuda.is_available() and not os.environ.get("CAI_SMOKE_CPU"):
    raise SystemExit("gpu_smoke: no CUDA GPU here (CAI_SMOKE_CPU=1 runs the steps on the CPU)")
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
print(f"gpu_smoke: device {name}, torch {torch.__version__}")
PY

# 1. SFT in bf16, killed after its first checkpoint, then the whole recipe rerun: it must resume.
SETS=(--set "output_dir=$OUT/run" --set stages=[generate,sft,dpo] --set sft.trl.bf16=true
      --set dpo.trl.bf16=true --set sft.trl.max_steps=60 --set sft.trl.save_steps=10)
started=$(date +%s)
setsid cai train tiny "${SETS[@]}" >"$OUT/first.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  [ -f "$OUT/run/sft/checkpoints/checkpoint-10/cai-kit-saved.json" ] && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.5
done
[ -f "$OUT/run/sft/checkpoints/checkpoint-10/cai-kit-saved.json" ] || { tail -20 "$OUT/first.log"; echo "gpu_smoke: no checkpoint-10" >&2; exit 1; }
kill -9 -- "-$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
echo "gpu_smoke: killed the SFT stage after checkpoint-10 ($(( $(date +%s) - started )) s)"
cai train tiny "${SETS[@]}" >"$OUT/rerun.log" 2>&1 || { tail -30 "$OUT/rerun.log"; exit 1; }
grep -q "sft: resuming from .*checkpoint-" "$OUT/rerun.log" || { echo "gpu_smoke: the rerun did not resume" >&2; exit 1; }
grep -h "precision" "$OUT/rerun.log" | sed 's/^/gpu_smoke: /'
echo "gpu_smoke: SFT resumed and SFT + DPO finished in bf16 ($(( $(date +%s) - started )) s in all): $OUT/run/model"

# 2. The transformers engine's generation throughput on the tiny model.
python benchmarks/generate_throughput.py --model tiny-random --prompts 64 --naive-prompts 1 --batch-size 32 \
  --max-new-tokens 64 --no-ceiling 2>&1 | tee "$OUT/throughput.log" | grep -E "tokens/s|ratio" | sed 's/^/gpu_smoke: /'
echo "gpu_smoke: ok"
