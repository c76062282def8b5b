#!/usr/bin/env bash
# Starts `python -m dit_jax.train` in the background on every TPU worker, same arguments everywhere.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/train.sh --name NAME --zone ZONE --config CONFIG --workdir gs://BUCKET/DIR [options] [-- TRAIN_FLAGS...]

Runs, on every worker of every slice at once:
  cd ~/dit_jax && nohup ~/dit_jax_venv/bin/python -m dit_jax.train --config=CONFIG \
      --workdir=WORKDIR TRAIN_FLAGS... > ~/dit_jax_train.log 2>&1 &
JAX finds its peers itself on Cloud TPU (jax.distributed needs no flags there). The workdir must
be on GCS: every worker writes checkpoints and logs to the same place. With --num_slices N > 1,
--config.mesh.dcn_data=N is added (data parallelism across slices) unless TRAIN_FLAGS set a
dcn_* size. Refuses to start where a previous run is still alive (launch/stop.sh stops it).

Options:
  --name NAME          TPU VM / queued resource name (as given to create.sh)
  --zone ZONE          its zone
  --project PROJECT    default: gcloud's configured project
  --num_slices N       slices of a multislice resource (implies --queued)
  --queued             the TPU was created as a queued resource
  --config CONFIG      config file and argument, e.g. configs/imagenet.py:variant=XL/2,res=256
  --workdir DIR        gs://BUCKET/DIR for checkpoints, TensorBoard events and samples
  --dry_run            print the gcloud commands instead of running them
  -- TRAIN_FLAGS       passed to dit_jax.train unchanged, e.g. --config.data.data_dir=gs://B/latents

Example:
  launch/train.sh --name dit-xl2 --zone us-east5-a --config configs/imagenet.py:variant=XL/2,res=256 \
      --workdir gs://my-bucket/dit-xl2-256 -- --config.data.data_dir=gs://my-bucket/latents256
USAGE
}

ALLOWED="--name --zone --project --num_slices --queued --config --workdir --dry_run"
parse_args "$@"
check_tpu_args
[[ -n "$CONFIG" ]] || die "--config is required, e.g. configs/imagenet.py:variant=XL/2,res=256"
[[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// path that every worker can reach (got '$WORKDIR')"

train=(-m dit_jax.train --config="$CONFIG" --workdir="$WORKDIR")
if ((NUM_SLICES > 1)) && [[ " ${EXTRA_ARGS[*]-} " != *"--config.mesh.dcn_"* ]]; then
  train+=(--config.mesh.dcn_data="$NUM_SLICES")
fi
train+=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})

start="if [ -f ~/$REMOTE_PID ] && kill -0 \$(cat ~/$REMOTE_PID) 2>/dev/null; then"
start+=" echo \"\$(hostname): dit_jax.train is already running (pid \$(cat ~/$REMOTE_PID)); run launch/stop.sh first\" >&2; exit 1; fi"
start+="; cd ~/$REMOTE_REPO && nohup ~/$REMOTE_VENV/bin/python $(quote_cmd "${train[@]}") > ~/$REMOTE_LOG 2>&1 < /dev/null &"
start+=" echo \$! > ~/$REMOTE_PID"
on_workers "$start"
echo "Started. Follow with: launch/logs.sh $(tpu_flags) --follow"
