#!/usr/bin/env bash
# Shared helpers of the launch/ scripts (sourced by them, never run on its own).
#
# What lives here: option parsing (--flag value and --flag=value), --dry_run (print every
# gcloud/ssh command instead of running it), and running one command on every worker of a TPU
# VM, or of every slice of a queued resource (multislice), with the same arguments everywhere.
#
# Layout on every TPU worker (relative to the login user's home directory):
#   ~/dit_jax            the repository (configs/ are read from here)
#   ~/dit_jax_venv       the Python environment (Python 3.12 via uv; the TPU images ship 3.10)
#   ~/dit_jax_train.log  stdout+stderr of the training process
#   ~/dit_jax_train.pid  its process id (stop.sh kills exactly this process)

# The option variables are read by the scripts that source this file.
# shellcheck disable=SC2034

REMOTE_REPO="dit_jax"
REMOTE_VENV="dit_jax_venv"
REMOTE_LOG="dit_jax_train.log"
REMOTE_PID="dit_jax_train.pid"

# Option defaults (every script sees all of them; each script lists the ones it accepts).
NAME=""
ZONE=""
PROJECT=""
ACCELERATOR_TYPE=""
RUNTIME_VERSION=""
NUM_SLICES=1
QUEUED=0
SPOT=0
RESERVED=0
WAIT=0
DRY_RUN=0
REPO_URL=""
REF="main"
PYTHON_VERSION="3.12"
WORKDIR=""
CONFIG=""
WORKER="0"
NODE="0"
LINES=100
FOLLOW=0
PORT=12345
EXTRA_ARGS=()

die() {
  echo "error: $*" >&2
  exit 2
}

# Prints its arguments as one shell command line that can be pasted back into a shell.
quote_cmd() {
  local out="" arg
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/\'\\\'\'}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Runs a command, first echoing it with a "+ " prefix; with --dry_run only echoes it.
run() {
  echo "+ $(quote_cmd "$@")"
  if ((DRY_RUN)); then
    return 0
  fi
  "$@"
}

# Parses "$@" into the option variables above. $ALLOWED (set by the calling script) lists the
# options the script accepts; everything after a bare "--" goes to EXTRA_ARGS (train flags, or
# the remote command of ssh_all.sh).
parse_args() {
  local flag value
  while (($#)); do
    flag="$1"
    shift
    if [[ "$flag" == "--" ]]; then
      EXTRA_ARGS=("$@")
      return 0
    fi
    if [[ "$flag" == -h || "$flag" == --help ]]; then
      usage
      exit 0
    fi
    value=""
    if [[ "$flag" == --*=* ]]; then
      value="${flag#*=}"
      flag="${flag%%=*}"
    fi
    if [[ " $ALLOWED " != *" $flag "* ]]; then
      usage >&2
      die "unknown option '$flag' for $(basename "$0"); it accepts: $ALLOWED"
    fi
    case "$flag" in
      --dry_run | --queued | --spot | --reserved | --wait | --follow)
        [[ -z "$value" ]] || die "$flag takes no value"
        ;;
      *)
        if [[ -z "$value" ]]; then
          (($#)) || die "$flag needs a value"
          value="$1"
          shift
        fi
        ;;
    esac
    case "$flag" in
      --name) NAME="$value" ;;
      --zone) ZONE="$value" ;;
      --project) PROJECT="$value" ;;
      --accelerator_type) ACCELERATOR_TYPE="$value" ;;
      --runtime_version) RUNTIME_VERSION="$value" ;;
      --num_slices) NUM_SLICES="$value" ;;
      --queued) QUEUED=1 ;;
      --spot) SPOT=1 ;;
      --reserved) RESERVED=1 ;;
      --wait) WAIT=1 ;;
      --dry_run) DRY_RUN=1 ;;
      --repo) REPO_URL="$value" ;;
      --ref) REF="$value" ;;
      --python) PYTHON_VERSION="$value" ;;
      --workdir) WORKDIR="$value" ;;
      --config) CONFIG="$value" ;;
      --worker) WORKER="$value" ;;
      --node) NODE="$value" ;;
      --lines) LINES="$value" ;;
      --follow) FOLLOW=1 ;;
      --port) PORT="$value" ;;
    esac
  done
}

# Checks the options every TPU script needs and derives the queued-resource mode.
check_tpu_args() {
  [[ -n "$NAME" ]] || die "--name is required (the TPU VM or queued resource name)"
  [[ -n "$ZONE" ]] || die "--zone is required (e.g. us-east5-a for v5p, us-central2-b for v4)"
  [[ "$NUM_SLICES" =~ ^[1-9][0-9]*$ ]] || die "--num_slices must be a positive integer, got '$NUM_SLICES'"
  if ((NUM_SLICES > 1)); then
    # Multislice exists only as a queued resource (nodes NAME-0 .. NAME-(N-1)).
    QUEUED=1
  fi
  LOCATION=(--zone="$ZONE")
  TPU_FLAGS=(--name "$NAME" --zone "$ZONE")
  if [[ -n "$PROJECT" ]]; then
    LOCATION+=(--project="$PROJECT")
    TPU_FLAGS+=(--project "$PROJECT")
  fi
  if ((NUM_SLICES > 1)); then
    TPU_FLAGS+=(--num_slices "$NUM_SLICES")
  elif ((QUEUED)); then
    TPU_FLAGS+=(--queued)
  fi
}

# Runs the shell command string $1 on every worker (every node too, for a queued resource).
# Extra gcloud flags may follow; the worker selection defaults to all.
on_workers() {
  local command="$1" worker="${2:-all}" node="${3:-all}"
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources ssh "$NAME" "${LOCATION[@]}" \
      --node="$node" --worker="$worker" --command="$command"
  else
    run gcloud compute tpus tpu-vm ssh "$NAME" "${LOCATION[@]}" \
      --worker="$worker" --command="$command"
  fi
}

# Copies the local file $1 into the home directory of every worker.
copy_to_workers() {
  local file="$1"
  if ((QUEUED)); then
    run gcloud compute tpus queued-resources scp "$file" "$NAME:" "${LOCATION[@]}" \
      --node=all --worker=all
  else
    run gcloud compute tpus tpu-vm scp "$file" "$NAME:" "${LOCATION[@]}" --worker=all
  fi
}

# The software image that matches an accelerator type (v4-32, v5p-128, v5litepod-16, v6e-64).
default_runtime_version() {
  case "$1" in
    v4-*) echo "tpu-ubuntu2204-base" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    *) die "no default --runtime_version for accelerator type '$1'; pass --runtime_version" ;;
  esac
}

# The flags that name this TPU to the other launch/ scripts (for the hints they print).
tpu_flags() {
  quote_cmd "${TPU_FLAGS[@]}"
}
