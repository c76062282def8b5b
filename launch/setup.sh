#!/usr/bin/env bash
# Puts the repository on every TPU worker and installs it with the tpu extra into a venv.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/setup.sh --name NAME --zone ZONE [--repo URL [--ref REF]] [options]

On every worker (of every slice): puts the code in ~/dit_jax, creates ~/dit_jax_venv with
Python 3.12 (uv; the TPU images ship Python 3.10, dit_jax needs >= 3.11) and runs
`pip install -e ".[tpu]"` (jax with the matching libtpu). Safe to re-run after code changes.

Code source: with --repo, every worker clones URL at REF; without it, the local checkout's
committed HEAD is packed with `git archive` and copied (uncommitted changes are NOT shipped).

Options:
  --name NAME        TPU VM / queued resource name (as given to create.sh)
  --zone ZONE        its zone
  --project PROJECT  default: gcloud's configured project
  --num_slices N     slices of a multislice resource (implies --queued)
  --queued           the TPU was created as a queued resource
  --repo URL         git URL to clone on the workers (default: ship the local HEAD)
  --ref REF          branch, tag or commit to check out with --repo (default: main)
  --python VERSION   Python version of the venv (default: 3.12)
  --dry_run          print the gcloud commands instead of running them
USAGE
}

ALLOWED="--name --zone --project --num_slices --queued --repo --ref --python --dry_run"
parse_args "$@"
check_tpu_args

if [[ -n "$REPO_URL" ]]; then
  fetch="rm -rf ~/$REMOTE_REPO && git clone -q $(quote_cmd "$REPO_URL") ~/$REMOTE_REPO"
  fetch+=" && git -C ~/$REMOTE_REPO checkout -q $(quote_cmd "$REF")"
else
  repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  archive="${TMPDIR:-/tmp}/$REMOTE_REPO-src.tar.gz"
  if [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no)" ]]; then
    echo "warning: $repo_root has uncommitted changes; only the committed HEAD is shipped." >&2
  fi
  run git -C "$repo_root" archive --format=tar.gz --output="$archive" HEAD
  copy_to_workers "$archive"
  fetch="rm -rf ~/$REMOTE_REPO && mkdir -p ~/$REMOTE_REPO"
  fetch+=" && tar -xzf ~/$(basename "$archive") -C ~/$REMOTE_REPO"
fi

install="python3 -m pip install --user -q --upgrade uv"
install+=" && ~/.local/bin/uv venv -q --allow-existing --python $(quote_cmd "$PYTHON_VERSION") ~/$REMOTE_VENV"
install+=" && cd ~/$REMOTE_REPO && ~/.local/bin/uv pip install -q --python ~/$REMOTE_VENV/bin/python -e '.[tpu]'"
check="cd ~/$REMOTE_REPO && ~/$REMOTE_VENV/bin/python -c 'import jax; print(jax.local_device_count(), jax.local_devices()[0].device_kind)'"

on_workers "set -e; $fetch && $install"
echo "Checking that every worker sees its TPU chips (prints: local device count, kind):"
on_workers "$check"
