#!/usr/bin/env bash
# Queued-resource runs that survive preemption: recreate the resource when it was preempted, set
# it up again, and rerun the same stage (which resumes from its checkpoint), until it succeeds.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require TPU_NAME ZONE STAGE
here="$(dirname "$0")"
for attempt in 1 2 3 4 5; do
  echo "attempt $attempt" >&2
  if "$here/run_stage.sh" "$@"; then exit 0; fi
  [[ "$DRY_RUN" == 1 ]] && exit 0
  # shellcheck disable=SC2046
  state="$(gcloud compute tpus queued-resources describe "$TPU_NAME" $(gcloud_where) --format='value(state.state)')"
  [[ "$state" == ACTIVE ]] && { echo "stage failed on a live slice; not retrying" >&2; exit 1; }
  "$here/delete.sh" "$@" --queued
  "$here/create.sh" "$@" --queued
  # shellcheck disable=SC2046
  until [[ "$(gcloud compute tpus queued-resources describe "$TPU_NAME" $(gcloud_where) --format='value(state.state)')" == ACTIVE ]]; do sleep 60; done
  "$here/setup.sh" "$@"
done
exit 1
