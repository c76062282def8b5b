#!/usr/bin/env bash
# Shows (or follows) the training log of TPU workers.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/logs.sh --name NAME --zone ZONE [--worker W] [--node S] [--follow] [options]

Prints the last lines of ~/dit_jax_train.log. Worker 0 of slice 0 (the default) logs the
metrics; other workers matter when one of them fails (--worker all shows every worker).

Options:
  --name NAME        TPU VM / queued resource name (as given to create.sh)
  --zone ZONE        its zone
  --project PROJECT  default: gcloud's configured project
  --num_slices N     slices of a multislice resource (implies --queued)
  --queued           the TPU was created as a queued resource
  --worker W         worker index or "all" (default 0)
  --node S           slice index or "all" for a queued resource (default 0)
  --lines N          how many lines to show (default 100)
  --follow           keep following the log (tail -f) until Ctrl-C
  --dry_run          print the gcloud command instead of running it
USAGE
}

ALLOWED="--name --zone --project --num_slices --queued --worker --node --lines --follow --dry_run"
parse_args "$@"
check_tpu_args
[[ "$LINES" =~ ^[0-9]+$ ]] || die "--lines must be a number, got '$LINES'"
tail_cmd="tail -n $LINES"
((FOLLOW)) && tail_cmd+=" -F"
on_workers "$tail_cmd ~/$REMOTE_LOG" "$WORKER" "$NODE"
