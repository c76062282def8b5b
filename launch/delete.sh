#!/usr/bin/env bash
# Deletes the TPU VM or the queued resource (with all its slices). Billing stops here.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/delete.sh --name NAME --zone ZONE [options]

Deletes the TPU without asking for confirmation. A queued resource is deleted with --force,
which also deletes its TPU VMs (every slice). The gs:// workdir is not touched.

Options:
  --name NAME        TPU VM / queued resource name (as given to create.sh)
  --zone ZONE        its zone
  --project PROJECT  default: gcloud's configured project
  --num_slices N     slices of a multislice resource (implies --queued)
  --queued           the TPU was created as a queued resource
  --dry_run          print the gcloud command instead of running it
USAGE
}

ALLOWED="--name --zone --project --num_slices --queued --dry_run"
parse_args "$@"
check_tpu_args
if ((QUEUED)); then
  run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$NAME" "${LOCATION[@]}" --quiet
fi
