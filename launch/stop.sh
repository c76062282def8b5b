#!/usr/bin/env bash
# Stops the training process started by launch/train.sh on every TPU worker (the TPU stays up).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/stop.sh --name NAME --zone ZONE [options]

Sends SIGTERM to the process whose id launch/train.sh recorded in ~/dit_jax_train.pid on every
worker, waits for it to exit (SIGKILL after 60 s), and frees the TPU for the next run. The
last checkpoint in the workdir stays; launch/train.sh with the same --workdir resumes from it.

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
pid="\$(cat ~/$REMOTE_PID)"
stop="if [ ! -f ~/$REMOTE_PID ]; then echo \"\$(hostname): no dit_jax.train process recorded\"; exit 0; fi"
stop+="; kill $pid 2>/dev/null || true"
stop+="; for _ in \$(seq 60); do kill -0 $pid 2>/dev/null || break; sleep 1; done"
stop+="; if kill -0 $pid 2>/dev/null; then kill -9 $pid; fi; rm -f ~/$REMOTE_PID; echo \"\$(hostname): stopped\""
on_workers "$stop"
