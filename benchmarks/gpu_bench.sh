#!/usr/bin/env bash
# Issue 14's GPU matrix in one run on a bare H100/H200 machine (no internet; see
# ../docs/benchmarks.md "GPU"): XL/2 256 bf16 train step at batch BATCH (default 256, profiled),
# the same step in PyTorch (diffusers DiT + torch.compile) side by side, then the levers still
# open and 250-step guided sampling. About 8 minutes; every part runs under a timeout and writes
# JSON as it goes.
#
# Before: on a machine with pip, from the repository root (ignored folder .whl/):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     ml-collections diffusers importlib_metadata zipp
# Then on the GPU machine, from the repository root:  OUT=results bash benchmarks/gpu_bench.sh
set -euo pipefail
OUT=${OUT:-gpu_bench_results}
BUDGET_S=${BUDGET_S:-555}  # the whole script; the last lever runs get what is left
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
C=${CONFIG:-configs/imagenet.py:variant=XL/2,res=256}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
cat "$OUT/gpu.txt"
log() { tee -a "$OUT/run.log"; }

B=${BATCH:-256}  # the fastest batch measured on an H200 (use 128 on an 80 GB H100)
echo "== dit_jax default, batch $B, profiled" | log
timeout 170 python3 -m dit_jax.bench_matrix --config "$C" --json "$OUT/jax_default.json" \
  --profile /tmp/profile --run "default:$B" 2>&1 | log || echo "(exit $?)" | log
python3 -c "import json,sys; json.dump(json.load(open(sys.argv[1]))[0], open(sys.argv[2], 'w'))" \
  "$OUT/jax_default.json" /tmp/jax_default_one.json || true

echo "== PyTorch diffusers DiT, torch.compile, batch $B" | log
timeout 200 python3 -m dit_jax.bench_torch --config "$C" --batch_per_device "$B" --steps 10 \
  --json "$OUT/torch.json" --compare /tmp/jax_default_one.json 2>&1 | log || echo "(exit $?)" | log

LEFT=$((BUDGET_S - SECONDS))
echo "== dit_jax levers and sampling (${LEFT} s left)" | log
timeout "$LEFT" python3 -m dit_jax.bench_matrix --config "$C" --json "$OUT/jax_levers.json" \
  --run "adam_mu_bf16:$B:adam_mu_dtype=bfloat16" \
  --run "remat_named:$((2 * B)):model.remat_policy=qkv_attention_mlp_saveable" \
  --run sample:32:mode=sample 2>&1 | log || echo "(exit $?)" | log

for TRACE in /tmp/profile/plugins/profile/*/perfetto_trace.json.gz; do
  if [ -f "$TRACE" ]; then cp "$TRACE" "$OUT/perfetto_trace.json.gz"; fi
done
grep -h "^\[\|ratio\|images/s" "$OUT/run.log" | tail -40 || true
