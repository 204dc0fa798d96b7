#!/usr/bin/env bash
# Creates the TPU VM or multi-host slice (plain, or a queued resource with --queued); nothing else.
# Usage: launch/create.sh --tpu-name NAME --zone ZONE --accelerator v5p-64 [--spot] [--queued] [--dry-run]
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require TPU_NAME ZONE ACCELERATOR VERSION
spot=()
if [[ "$SPOT" == 1 ]]; then spot=(--spot); fi
if [[ "$QUEUED" == 1 ]]; then
  # shellcheck disable=SC2046
  run gcloud compute tpus queued-resources create "$TPU_NAME" $(gcloud_where) --node-id="$TPU_NAME" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION" "${spot[@]}"
else
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm create "$TPU_NAME" $(gcloud_where) \
    --accelerator-type="$ACCELERATOR" --version="$VERSION" "${spot[@]}"
fi
