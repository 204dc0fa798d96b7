#!/usr/bin/env bash
# Stops and deletes the TPU VM (or the queued resource with --queued).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require TPU_NAME ZONE
if [[ "$QUEUED" == 1 ]]; then
  # shellcheck disable=SC2046
  run gcloud compute tpus queued-resources delete "$TPU_NAME" $(gcloud_where) --force --quiet
else
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm stop "$TPU_NAME" $(gcloud_where) --quiet
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" $(gcloud_where) --quiet
fi
