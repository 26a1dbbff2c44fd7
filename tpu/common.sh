# Settings and helpers shared by tpu/*.sh: sourced, never run.
# Every setting comes from the environment, with the default below. See tpu/README.md.
# shellcheck shell=bash

die() {
  echo "error: $*" >&2
  exit 1
}

# Print a command, shell-quoted, then run it.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  "$@"
}

# --- Where ----------------------------------------------------------------------------------
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
ZONE="${ZONE:-us-central2-b}"                   # a v4 zone; put the gs:// bucket in its region
TPU_NAME="${TPU_NAME:-sideways}"                # the TPU VM (node)
QUEUED_RESOURCE="${QUEUED_RESOURCE:-${TPU_NAME}-qr}"
WHERE=(--project="$PROJECT" --zone="$ZONE")     # flags every gcloud TPU command below takes

require_project() {
  [[ -n "$PROJECT" ]] || die "set PROJECT=<your GCP project> (or: gcloud config set project ...)"
}

# --- What -----------------------------------------------------------------------------------
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"    # v4-8: 4 chips = 8 TensorCores, one host
TF_VERSION="${TF_VERSION:-2.18.0}"              # the TF of the runtime; tpu/requirements.txt pins it
SPOT="${SPOT:-0}"                               # 1: a Spot VM (cheaper; can be preempted)

# --- On the VM (paths under the remote $HOME) -----------------------------------------------
REMOTE_DIR="${REMOTE_DIR:-sideways_tf}"         # the repository
REMOTE_VENV="${REMOTE_VENV:-sideways_venv}"     # the venv install.sh makes
REMOTE_LOGS="${REMOTE_LOGS:-sideways_logs}"     # run.sh's logs and pid files

# Workers (hosts) of the running TPU VM, from the API.
worker_count() {
  gcloud compute tpus tpu-vm describe "$TPU_NAME" "${WHERE[@]}" \
    --format='value(networkEndpoints.len())'
}

# Run a bash script on workers ("all", "0", "0,2", ...). It travels base64-encoded: no
# quoting has to survive ssh and the remote login shell, which only needs to be POSIX.
# Extra arguments go to ssh (after --).
ssh_workers() {
  local workers="$1" script="$2"
  shift 2
  local args=(compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker="$workers")
  local b64
  b64="$(printf '%s\n' "$script" | base64 | tr -d '\n')"
  printf '+ gcloud'
  printf ' %q' "${args[@]}"
  printf ' --command=<%s lines of bash>' "$(printf '%s\n' "$script" | wc -l | tr -d ' ')"
  if (($#)); then printf ' --'; printf ' %q' "$@"; fi
  printf '\n'
  args+=(--command="bash -c \"\$(echo $b64 | base64 -d)\"")
  if (($#)); then args+=(-- "$@"); fi
  gcloud "${args[@]}"
}
