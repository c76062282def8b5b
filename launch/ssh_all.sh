#!/usr/bin/env bash
# Runs one shell command on every TPU worker (every slice too): data copies, checks, debugging.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/ssh_all.sh --name NAME --zone ZONE [options] -- COMMAND...

Runs COMMAND (joined into one shell command line) on every worker of every slice, in the login
user's home directory. The words after -- are quoted, so shell operators must be one word:
  launch/ssh_all.sh --name dit-xl2 --zone us-east5-a -- \
      'mkdir -p ~/data && gcloud storage cp -r gs://my-bucket/latents256 ~/data/'
  launch/ssh_all.sh --name dit-xl2 --zone us-east5-a -- df -h /

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
((${#EXTRA_ARGS[@]})) || die "give the command after --, e.g. -- 'df -h ~'"
if ((${#EXTRA_ARGS[@]} == 1)); then
  on_workers "${EXTRA_ARGS[0]}"
else
  on_workers "$(quote_cmd "${EXTRA_ARGS[@]}")"
fi
