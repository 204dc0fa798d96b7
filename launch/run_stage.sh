#!/usr/bin/env bash
# Runs one stage on all workers at once, collects per-worker logs, fails if any worker failed.
# Usage: launch/run_stage.sh --tpu-name NAME --zone ZONE --stage "generate --config configs/x.py" [--logs DIR]
# Rerunning the same stage resumes from its checkpoint / finished shards.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require TPU_NAME ZONE STAGE
# Worker 0's internal address, pinned with the pre-0.8.1 port; count and id come from the TPU.
if [[ "$DRY_RUN" == 1 ]]; then
  coordinator="WORKER0_IP:$COORDINATOR_PORT"
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm describe "$TPU_NAME" $(gcloud_where) --format='value(networkEndpoints[0].ipAddress)'
else
  # shellcheck disable=SC2046
  coordinator="$(gcloud compute tpus tpu-vm describe "$TPU_NAME" $(gcloud_where) --format='value(networkEndpoints[0].ipAddress)'):$COORDINATOR_PORT"
fi
remote_log="$REMOTE_DIR/stage.log"
status=0
on_all_workers "cd $REMOTE_DIR && export SOPHIA_COORDINATOR_ADDRESS=$coordinator && sophia-jax $STAGE > stage.log 2>&1; echo exit=\$? >> stage.log; tail -n 1 stage.log | grep -qx exit=0" || status=$?
mkdir -p "$LOGS"
# shellcheck disable=SC2046
run gcloud compute tpus tpu-vm scp "$TPU_NAME:$remote_log" "$LOGS/" $(gcloud_where) --worker=all || true
# scp --worker=all names each copy by worker; show which failed.
if [[ "$status" != 0 ]]; then
  grep -L -x 'exit=0' "$LOGS"/* 2>/dev/null | sed 's/^/failed worker log: /' >&2 || true
  echo "$(basename "$0"): stage failed on at least one worker (logs in $LOGS)" >&2
  exit 1
fi
