#!/usr/bin/env bash
# Issue 14's open GPU matrix on a bare H100/H200 machine (no internet; see ../docs/benchmarks.md
# "GPU"), in PARTS order so that a short budget measures the most important first: jax = the
# dit_jax default XL/2 256 bf16 train step at batch BATCH (default 256) and 250-step guided
# sampling; flags = XLA GPU flags, one process each (XLA_FLAGS is read once per process);
# torch_sample / torch_train = PyTorch (diffusers DiT + torch.compile) side by side; levers = the
# open model/optimizer levers. On the H200 one process with one XL/2 run took 80-130 s (2026-11-27),
# so the whole matrix needs more than one 9-minute call: PARTS and FLAG_LIST pick what a call runs
# (a second call on the same warm machine runs the rest). Every part runs under a timeout within
# BUDGET_S, writes JSON as it goes; a part that fails or times out is logged and the next starts.
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
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
cat "$OUT/gpu.txt"
log() { tee -a "$OUT/run.log"; }
FLAG_DIR=$(mktemp -d)  # this call's flag runs only (a warm machine keeps /tmp between calls)

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

PARTS=${PARTS:-jax flags torch_sample levers torch_train}  # a later call can run the rest
# The flags not measured yet (2026-11-27: triton_gemm=false -1.8%, cublaslt=true +0.0%; the two
# below timed out at 90 s, so each now gets 150 s).
FLAG_LIST=${FLAG_LIST:-"--xla_gpu_experimental_enable_fusion_block_level_rewriter=true \
  --xla_gpu_enable_cudnn_layer_norm=true --xla_gpu_enable_command_buffer="}
wanted() { [[ " $PARTS " == *" $1 "* ]]; }

if wanted jax; then
  part "dit_jax default: train batch $B, sampling batch $SAMPLE_B" 240 \
    python3 -m dit_jax.bench_matrix --config "$C" --json "$OUT/jax_default.json" \
    --run "default:$B" --run "sample:$SAMPLE_B:mode=sample"
  python3 - "$OUT/jax_default.json" <<'EOF' || true
import json, sys
for r in json.load(open(sys.argv[1])):
  if "error" not in r:
    json.dump(r, open(f"/tmp/jax_{r['mode']}.json", "w"))
EOF
fi

if wanted torch_train; then
  part "PyTorch diffusers DiT, torch.compile, train batch $B" 170 \
    python3 -m dit_jax.bench_torch --config "$C" --batch_per_device "$B" --steps 10 \
    --json "$OUT/torch_train.json" --compare="$(existing /tmp/jax_train.json)"
fi

# Each flag of FLAG_LIST in its own process (XLA_FLAGS is read once per process).
if wanted flags; then
  for FLAG in $FLAG_LIST; do
    NAME=$(echo "$FLAG" | sed 's/^--xla_gpu_//; s/^experimental_//; s/=$/_off/; s/=/_/')
    XLA_FLAGS=$FLAG part "XLA_FLAGS=$FLAG, train batch $B" 150 \
      python3 -m dit_jax.bench_matrix --config "$C" --json "$FLAG_DIR/$NAME.json" \
      --run "flag_$NAME:$B"
  done
  # One file for all flag runs (the machine returns at most 8 files).
  python3 -c "import glob, json, sys; json.dump([r for f in sorted(glob.glob(sys.argv[1] + '/*.json'))
    for r in json.load(open(f))], open(sys.argv[2], 'w'), indent=1)" "$FLAG_DIR" "$OUT/flags.json" || true
fi

if wanted levers; then
  part "dit_jax levers, train batch $B" 240 \
    python3 -m dit_jax.bench_matrix --config "$C" --json "$OUT/jax_levers.json" \
    --run "adam_mu_bf16:$B:adam_mu_dtype=bfloat16" \
    --run "remat_named:$B:model.remat_policy=qkv_attention_mlp_saveable"
fi

if wanted torch_sample; then
  part "PyTorch sampling, batch $SAMPLE_B" 200 \
    python3 -m dit_jax.bench_torch --config "$C" --mode sample --batch_per_device "$SAMPLE_B" \
    --steps 1 --warmup 0 --json "$OUT/torch_sample.json" --compare="$(existing /tmp/jax_sample.json)"
fi

grep -h "^==\|^\[\|x (\|images/s \|exit" "$OUT/run.log" | tail -40 || true
