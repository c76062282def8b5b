#!/usr/bin/env bash
# Issue 14's open GPU matrix on a bare H100/H200 machine (no internet; see ../docs/benchmarks.md
# "GPU"), in PARTS order so that a short budget measures the most important first:
#   levers        the dit_jax default XL/2 256 bf16 train step at batch BATCH (default 256), then
#                 every open lever, XLA flags included, in ONE process: bench_matrix hands each
#                 run's xla_* options to that run's compile, so a flag no longer costs a process
#                 start (on the H200 a process took 80-130 s, a run in a warm process 50-60 s);
#   jax_sample    250-step guided sampling, batch SAMPLE_BATCH;
#   torch_sample, torch_train   PyTorch (diffusers DiT + torch.compile) side by side.
# Every part runs under a timeout within BUDGET_S and writes JSON as it goes; a part that fails
# or times out is logged and the next one starts.
#
# Before: on a machine with pip, from the repository root (ignored folder .whl/):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     ml-collections diffusers importlib_metadata zipp
# Then on the GPU machine, from the repository root:  OUT=results bash benchmarks/gpu_bench.sh
set -euo pipefail
OUT=${OUT:-gpu_bench_results}
BUDGET_S=${BUDGET_S:-540}  # the whole script; each part gets at most what is left
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
C=${CONFIG:-configs/imagenet.py:variant=XL/2,res=256}
B=${BATCH:-256}          # the fastest batch measured on an H200 (use 128 on an 80 GB H100)
SAMPLE_B=${SAMPLE_BATCH:-32}
PARTS=${PARTS:-levers jax_sample torch_sample torch_train}  # a later call can run the rest
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
cat "$OUT/gpu.txt"
log() { tee -a "$OUT/run.log"; }
wanted() { [[ " $PARTS " == *" $1 "* ]]; }

# FILE if it exists (a dit_jax result of an earlier part or call), else "": bench_torch's --compare
# then has nothing to compare with instead of failing after its run.
existing() { if [ -f "$1" ]; then echo "$1"; fi; }

# part NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, what is left) seconds.
part() {
  local name=$1 limit=$2 left=$((BUDGET_S - SECONDS))
  shift 2
  if [ "$left" -lt 30 ]; then echo "== $name: skipped (${left} s left)" | log; return; fi
  if [ "$limit" -gt "$left" ]; then limit=$left; fi
  echo "== $name (limit ${limit} s, ${left} s left)" | log
  timeout "$limit" "$@" 2>&1 | log || echo "(exit ${PIPESTATUS[0]})" | log
}

# The default first (this call's baseline), one lever per run after it, the slowest compile last.
# Measured before (2026-11-27): triton_gemm=false -1.8%, cublaslt=true +0.0%; the block-level
# rewriter and cuDNN LayerNorm processes did not finish within 90 s.
if wanted levers; then
  part "dit_jax default and levers, train batch $B" 450 \
    python3 -m dit_jax.bench_matrix --config "$C" --json "$OUT/jax_levers.json" \
    --run "default:$B" \
    --run "adam_mu_bf16:$B:adam_mu_dtype=bfloat16" \
    --run "no_cuda_graphs:$B:xla_gpu_enable_command_buffer=" \
    --run "latency_hiding_scheduler:$B:xla_gpu_enable_latency_hiding_scheduler=True" \
    --run "cudnn_layer_norm:$B:xla_gpu_enable_cudnn_layer_norm=True" \
    --run "remat_named:$B:model.remat_policy=qkv_attention_mlp_saveable" \
    --run "scan_blocks:$B:model.scan_blocks=True" \
    --run "block_level_rewriter:$B:xla_gpu_experimental_enable_fusion_block_level_rewriter=True"
  python3 -c "import json, sys; [json.dump(r, open('/tmp/jax_train.json', 'w'))
    for r in json.load(open(sys.argv[1])) if r['name'] == 'default' and 'error' not in r]" \
    "$OUT/jax_levers.json" || true
fi

if wanted jax_sample; then
  part "dit_jax sampling, batch $SAMPLE_B" 150 \
    python3 -m dit_jax.bench --config "$C" --mode sample --batch_per_device "$SAMPLE_B" \
    --steps 1 --json "$OUT/jax_sample.json"
fi

if wanted torch_sample; then
  part "PyTorch sampling, batch $SAMPLE_B" 200 \
    python3 -m dit_jax.bench_torch --config "$C" --mode sample --batch_per_device "$SAMPLE_B" \
    --steps 1 --warmup 0 --json "$OUT/torch_sample.json" --compare="$(existing "$OUT/jax_sample.json")"
fi

if wanted torch_train; then
  part "PyTorch diffusers DiT, torch.compile, train batch $B" 170 \
    python3 -m dit_jax.bench_torch --config "$C" --batch_per_device "$B" --steps 10 \
    --json "$OUT/torch_train.json" --compare="$(existing /tmp/jax_train.json)"
fi

grep -h "^==\|^\[\|x (\|images/s \|exit" "$OUT/run.log" | tail -40 || true
