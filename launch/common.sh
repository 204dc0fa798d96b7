#!/usr/bin/env bash
# shellcheck disable=SC2034  # the settings are read by the scripts that source this file
# Shared by every launch/ script: settings from flags or environment, and a dry-run wrapper.
# Each setting NAME has a flag --name and an environment variable SOPHIA_NAME; the flag wins.
#   TPU_NAME ZONE PROJECT ACCELERATOR VERSION REF REPO CONFIG STAGE LOGS DRY_RUN SPOT QUEUED
set -euo pipefail

TPU_NAME="${SOPHIA_TPU_NAME:-}"
ZONE="${SOPHIA_ZONE:-}"
PROJECT="${SOPHIA_PROJECT:-}"
ACCELERATOR="${SOPHIA_ACCELERATOR:-v5p-64}"
VERSION="${SOPHIA_VERSION:-v2-alpha-tpuv5}"
REF="${SOPHIA_REF:-main}"
REPO="${SOPHIA_REPO:-https://github.com/sophia-jax/sophia_jax.git}"
CONFIG="${SOPHIA_CONFIG:-}"
STAGE="${SOPHIA_STAGE:-}"
LOGS="${SOPHIA_LOGS:-logs}"
DRY_RUN="${SOPHIA_DRY_RUN:-0}"
SPOT="${SOPHIA_SPOT:-0}"
QUEUED="${SOPHIA_QUEUED:-0}"
# JAX 0.8.1 moved the default TPU coordinator port 8476 -> 8482 (jax-ml/jax#35905); we pin it.
COORDINATOR_PORT="${SOPHIA_COORDINATOR_PORT:-8476}"
REMOTE_DIR="${SOPHIA_REMOTE_DIR:-sophia_jax}"
EXTRA_ARGS=()

die() { echo "$(basename "$0"): error: $*" >&2; exit 2; }

parse_flags() {
  while (($#)); do
    case "$1" in
      --tpu-name) TPU_NAME="$2"; shift 2 ;;
      --zone) ZONE="$2"; shift 2 ;;
      --project) PROJECT="$2"; shift 2 ;;
      --accelerator) ACCELERATOR="$2"; shift 2 ;;
      --version) VERSION="$2"; shift 2 ;;
      --ref) REF="$2"; shift 2 ;;
      --repo) REPO="$2"; shift 2 ;;
      --config) CONFIG="$2"; shift 2 ;;
      --stage) STAGE="$2"; shift 2 ;;
      --logs) LOGS="$2"; shift 2 ;;
      --coordinator-port) COORDINATOR_PORT="$2"; shift 2 ;;
      --spot) SPOT=1; shift ;;
      --queued) QUEUED=1; shift ;;
      --dry-run) DRY_RUN=1; shift ;;
      --) shift; EXTRA_ARGS=("$@"); break ;;
      *) die "unknown flag $1" ;;
    esac
  done
}

require() { local v; for v in "$@"; do [[ -n "${!v}" ]] || die "set --${v,,} (or SOPHIA_${v})" ; done; }

# Prints the command in dry-run mode, else runs it. Quoted so the printed line can be pasted.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}

gcloud_where() { echo "--zone=$ZONE" ${PROJECT:+"--project=$PROJECT"}; }

# Runs one command on every worker at the same time; a stage on only some workers deadlocks in
# jax.distributed.initialize, so there is no per-worker variant.
on_all_workers() {
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" $(gcloud_where) --worker=all --command="$1"
}
