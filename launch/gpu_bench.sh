#!/usr/bin/env bash
# Issue 14's GPU matrix in one run on a bare H100/H200 machine (no internet; see
# ../docs/benchmarks.md "GPU"): XL/2 256 bf16 train step at batch 128 (profiled), the same step
# in PyTorch (diffusers DiT + torch.compile) side by side, 250-step guided sampling, then each
# speed lever. About 8 minutes; every part runs under a timeout and writes JSON as it goes.
#
# Before: on a machine with pip, from the repository root (ignored folder .whl/):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     ml-collections diffusers importlib_metadata zipp
# Then on the GPU machine, from the repository root:  OUT=results bash launch/gpu_bench.sh
set -u
OUT=${OUT:-gpu_bench_results}
BUDGET_S=${BUDGET_S:-555}  # the whole script; the last lever runs get what is left
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
C=${CONFIG:-configs/imagenet.py:variant=XL/2,res=256}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
log() { tee -a "$OUT/run.log"; }

echo "== dit_jax default, batch 128, profiled" | log
timeout 170 python3 -m dit_jax.bench_matrix --config $C --json "$OUT/jax_default.json" \
  --profile /tmp/profile --run default:128 2>&1 | log
python3 -c "import json,sys; json.dump(json.load(open(sys.argv[1]))[0], open(sys.argv[2], 'w'))" \
  "$OUT/jax_default.json" /tmp/jax_default_one.json

echo "== PyTorch diffusers DiT, torch.compile, batch 128" | log
timeout 200 python3 -m dit_jax.bench_torch --config $C --batch_per_device 128 --steps 10 \
  --json "$OUT/torch.json" --compare /tmp/jax_default_one.json 2>&1 | log

LEFT=$((BUDGET_S - SECONDS))
echo "== dit_jax levers and sampling (${LEFT} s left)" | log
timeout $LEFT python3 -m dit_jax.bench_matrix --config $C --json "$OUT/jax_levers.json" \
  --run sample:32:mode=sample \
  --run split_qkv:128:model.split_qkv=True \
  --run batch256:256 \
  --run adam_mu_bf16:128:adam_mu_dtype=bfloat16 \
  --run all_levers_b256:256:model.split_qkv=True,adam_mu_dtype=bfloat16 \
  --run remat_named_b256:256:model.remat_policy=qkv_attention_mlp_saveable 2>&1 | log

TRACE=$(ls -t /tmp/profile/plugins/profile/*/perfetto_trace.json.gz 2>/dev/null | head -1)
[ -n "$TRACE" ] && cp "$TRACE" "$OUT/perfetto_trace.json.gz"
grep -h "^\[\|ratio\|images/s" "$OUT/run.log" | tail -40
