#!/usr/bin/env bash
# Creates a Cloud TPU VM slice, a queued resource (waits for capacity), or a multislice job.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/create.sh --name NAME --zone ZONE --accelerator_type TYPE [options]

Creates the TPU. Without --queued this is a plain TPU VM (fails at once when the zone has no
capacity); with --queued a queued resource (waits in Cloud TPU's queue); with --num_slices N > 1
a multislice queued resource whose slices are named NAME-0 .. NAME-(N-1).

Options:
  --name NAME               TPU VM / queued resource name (lowercase letters, digits, hyphens)
  --zone ZONE               e.g. us-east5-a (v5p), us-central2-b (v4), us-east1-d (v6e)
  --project PROJECT         default: gcloud's configured project
  --accelerator_type TYPE   slice type, e.g. v5p-128, v4-32, v5litepod-16, v6e-64
  --runtime_version VER     TPU software image (default chosen from the accelerator type)
  --num_slices N            number of slices (multislice over DCN; implies --queued)
  --queued                  create through a queued resource
  --spot                    spot capacity (preemptible; cheaper)
  --reserved                use the project's reservation
  --wait                    with --queued: poll until the resource is ACTIVE
  --dry_run                 print the gcloud commands instead of running them

Example (the paper's XL/2 on one v5p-128 slice, then two slices):
  launch/create.sh --name dit-xl2 --zone us-east5-a --accelerator_type v5p-128 --queued --wait
  launch/create.sh --name dit-xl2-ms --zone us-east5-a --accelerator_type v5p-128 --num_slices 2
USAGE
}

ALLOWED="--name --zone --project --accelerator_type --runtime_version --num_slices --queued --spot --reserved --wait --dry_run"
parse_args "$@"
check_tpu_args
[[ -n "$ACCELERATOR_TYPE" ]] || die "--accelerator_type is required (e.g. v5p-128)"
((SPOT && RESERVED)) && die "--spot and --reserved exclude each other; pick one"
RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime_version "$ACCELERATOR_TYPE")}"

capacity=()
((SPOT)) && capacity+=(--spot)
((RESERVED)) && capacity+=(--reserved)

if ((QUEUED)); then
  if ((NUM_SLICES > 1)); then
    nodes=(--node-count="$NUM_SLICES" --node-prefix="$NAME")
  else
    nodes=(--node-id="$NAME")
  fi
  run gcloud compute tpus queued-resources create "$NAME" "${LOCATION[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$RUNTIME_VERSION" \
    "${nodes[@]}" ${capacity[@]+"${capacity[@]}"}
  describe=(gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}"
    --format="value(state.state)")
  if ((WAIT)); then
    echo "Waiting for queued resource $NAME to become ACTIVE (Ctrl-C stops waiting, not the request)."
    if ((DRY_RUN)); then
      run "${describe[@]}"
    else
      until [[ "$(run "${describe[@]}" | tail -n 1)" == "ACTIVE" ]]; do
        sleep 30
      done
    fi
  else
    echo "Queued. Check with: $(quote_cmd "${describe[@]}")"
  fi
else
  ((WAIT)) && die "--wait needs --queued (a plain TPU VM create returns when it is ready)"
  run gcloud compute tpus tpu-vm create "$NAME" "${LOCATION[@]}" \
    --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    ${capacity[@]+"${capacity[@]}"}
fi
