#!/usr/bin/env bash
# Delete the TPU VM and its queued resource. The gs:// workdirs stay.
#
#   bash tpu/delete.sh
#
# Settings (environment, defaults in tpu/common.sh): PROJECT, ZONE, TPU_NAME, QUEUED_RESOURCE.
# Also withdraws a request still waiting in the queue, and deletes a node made without a
# queued resource (gcloud compute tpus tpu-vm create) if TPU_NAME names one.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_project

# 0 if the resource exists, 1 if the API says it does not; any other failure stops the script.
exists() {
  local err
  if err="$(gcloud "$@" "${WHERE[@]}" --format='value(name)' 2>&1 >/dev/null)"; then
    return 0
  fi
  if grep -qiE 'NOT_FOUND|not found|was not found' <<<"$err"; then
    return 1
  fi
  die "could not look up the resource: $err"
}

if exists compute tpus queued-resources describe "$QUEUED_RESOURCE"; then
  # --force deletes the request's node first, then the request.
  run gcloud compute tpus queued-resources delete "$QUEUED_RESOURCE" "${WHERE[@]}" --force --quiet
elif exists compute tpus tpu-vm describe "$TPU_NAME"; then
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${WHERE[@]}" --quiet
else
  echo "Neither queued resource $QUEUED_RESOURCE nor TPU VM $TPU_NAME exists in $ZONE."
fi

echo "Left in $ZONE (both lists should be empty unless you run other TPUs):"
run gcloud compute tpus queued-resources list "${WHERE[@]}"
run gcloud compute tpus tpu-vm list "${WHERE[@]}"
