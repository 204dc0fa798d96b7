#!/usr/bin/env bash
# Installs the project at --ref with the tpu extra on every worker, and copies --config (optional).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
parse_flags "$@"
require TPU_NAME ZONE REF REPO
on_all_workers "set -e; (test -d $REMOTE_DIR || git clone $REPO $REMOTE_DIR) && cd $REMOTE_DIR && git fetch --all -q && git checkout -q $REF && python3 -m pip install -q -e '.[tpu]'"
if [[ -n "$CONFIG" ]]; then
  # shellcheck disable=SC2046
  run gcloud compute tpus tpu-vm scp "$CONFIG" "$TPU_NAME:$REMOTE_DIR/configs/" $(gcloud_where) --worker=all
fi
