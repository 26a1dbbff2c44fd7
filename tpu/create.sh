#!/usr/bin/env bash
# Request a TPU VM through a queued resource and wait until it is ACTIVE.
#
#   PROJECT=my-project bash tpu/create.sh
#   PROJECT=my-project ACCELERATOR_TYPE=v4-32 SPOT=1 bash tpu/create.sh
#
# Settings (environment, defaults in tpu/common.sh): PROJECT, ZONE, TPU_NAME, QUEUED_RESOURCE,
# ACCELERATOR_TYPE (v4-8), TF_VERSION (2.18.0), RUNTIME_VERSION (tpu-vm-tf-2.18.0-pjrt, or
# tpu-vm-tf-2.18.0-pod-pjrt for a multi-host slice), SPOT (0), and:
#   SCOPES        service-account scopes of the VM (cloud-platform: access is then whatever
#                 IAM grants the service account; it needs write access to the gs:// bucket)
#   VALID_UNTIL   give up on the request if not provisioned within this duration (e.g. 6h)
#   WAIT_TIMEOUT  seconds this script waits for ACTIVE (3600); the request stays queued after
#   POLL_SECONDS  seconds between polls (30)
# Billing starts when the node is provisioned: run tpu/delete.sh when done.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_project

# Multi-host slices need the "-pod" runtime: the number after the last "-" of the accelerator
# type counts TensorCores (v2-v5p) or chips (v5litepod, v6e); one host has at most 8.
size="${ACCELERATOR_TYPE##*-}"
[[ "$size" =~ ^[0-9]+$ ]] || die "cannot read a size from ACCELERATOR_TYPE=$ACCELERATOR_TYPE"
if ((size > 8)); then pod="-pod"; else pod=""; fi
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-vm-tf-${TF_VERSION}${pod}-pjrt}"
if [[ -n "$pod" && "$RUNTIME_VERSION" != *-pod* ]]; then
  echo "warning: $ACCELERATOR_TYPE spans several hosts; TF expects a -pod runtime, not $RUNTIME_VERSION" >&2
fi
SCOPES="${SCOPES:-https://www.googleapis.com/auth/cloud-platform}"
VALID_UNTIL="${VALID_UNTIL:-}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-3600}"
POLL_SECONDS="${POLL_SECONDS:-30}"

state() {
  gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${WHERE[@]}" \
    --format='value(state.state)'
}

echo "Queued resource $QUEUED_RESOURCE -> node $TPU_NAME: $ACCELERATOR_TYPE, $RUNTIME_VERSION," \
  "zone $ZONE, project $PROJECT, spot=$SPOT"

# --- Request (or find the request of an earlier call) ----------------------------------------
if current="$(state 2>/dev/null)" && [[ -n "$current" ]]; then
  echo "$QUEUED_RESOURCE already exists (state $current); waiting for it instead of creating."
else
  args=(compute tpus queued-resources create "$QUEUED_RESOURCE" "${WHERE[@]}"
    --node-id="$TPU_NAME"
    --accelerator-type="$ACCELERATOR_TYPE"
    --runtime-version="$RUNTIME_VERSION"
    --scopes="$SCOPES")
  if [[ "$SPOT" == 1 ]]; then args+=(--spot); fi
  if [[ -n "$VALID_UNTIL" ]]; then args+=(--valid-until-duration="$VALID_UNTIL"); fi
  run gcloud "${args[@]}"
fi

# --- Wait for ACTIVE ------------------------------------------------------------------------
deadline=$((SECONDS + WAIT_TIMEOUT))
while true; do
  current="$(state)"
  echo "$(date +%H:%M:%S) $QUEUED_RESOURCE: $current"
  case "$current" in
    ACTIVE) break ;;
    FAILED | SUSPENDING | SUSPENDED)
      gcloud compute tpus queued-resources describe "$QUEUED_RESOURCE" "${WHERE[@]}" >&2 || true
      die "$QUEUED_RESOURCE is $current; delete it (bash tpu/delete.sh) and try again," \
        "maybe in another zone or with SPOT=1"
      ;;
  esac
  if ((SECONDS >= deadline)); then
    die "not ACTIVE after ${WAIT_TIMEOUT}s; the request stays queued: rerun this script to" \
      "keep waiting, or bash tpu/delete.sh to withdraw it"
  fi
  sleep "$POLL_SECONDS"
done

workers="$(worker_count)"
echo "ACTIVE: $TPU_NAME has $workers worker(s). Billing has started."
echo "Next: bash tpu/install.sh; then WORKDIR=gs://<bucket>/<run> bash tpu/run.sh;" \
  "when done: bash tpu/delete.sh"
