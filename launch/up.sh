#!/usr/bin/env bash
# Zero to a running job: create the TPU, set up every worker, start training (the three scripts).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/up.sh --name NAME --zone ZONE --accelerator_type TYPE --config CONFIG \
    --workdir gs://BUCKET/DIR [options] [-- TRAIN_FLAGS...]

Runs launch/create.sh (with --wait when queued), launch/setup.sh and launch/train.sh in turn,
passing each the options it takes. See those scripts' --help for the options.

Options: --name --zone --project --accelerator_type --runtime_version --num_slices --queued
         --spot --reserved --repo --ref --python --config --workdir --dry_run

Example (XL/2 on two v5p-128 slices):
  launch/up.sh --name dit-xl2 --zone us-east5-a --accelerator_type v5p-128 --num_slices 2 \
      --config configs/imagenet.py:variant=XL/2,res=256 --workdir gs://my-bucket/dit-xl2-256 \
      -- --config.data.data_dir=gs://my-bucket/latents256
USAGE
}

ALLOWED="--name --zone --project --accelerator_type --runtime_version --num_slices --queued --spot --reserved --repo --ref --python --config --workdir --dry_run"
parse_args "$@"
check_tpu_args
[[ -n "$ACCELERATOR_TYPE" ]] || die "--accelerator_type is required (e.g. v5p-128)"
[[ -n "$CONFIG" ]] || die "--config is required, e.g. configs/imagenet.py:variant=XL/2,res=256"
[[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// path that every worker can reach (got '$WORKDIR')"

here="$(dirname "${BASH_SOURCE[0]}")"
target=("${TPU_FLAGS[@]}")
((DRY_RUN)) && target+=(--dry_run)

create=("${target[@]}" --accelerator_type "$ACCELERATOR_TYPE")
[[ -z "$RUNTIME_VERSION" ]] || create+=(--runtime_version "$RUNTIME_VERSION")
((SPOT)) && create+=(--spot)
((RESERVED)) && create+=(--reserved)
((QUEUED)) && create+=(--wait)
setup=("${target[@]}" --python "$PYTHON_VERSION")
[[ -z "$REPO_URL" ]] || setup+=(--repo "$REPO_URL" --ref "$REF")

bash "$here/create.sh" "${create[@]}"
bash "$here/setup.sh" "${setup[@]}"
bash "$here/train.sh" "${target[@]}" --config "$CONFIG" --workdir "$WORKDIR" \
  -- ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
