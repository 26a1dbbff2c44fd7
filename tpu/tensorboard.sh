#!/usr/bin/env bash
# TensorBoard on a run's gs:// workdir, at http://localhost:$PORT.
#
#   WORKDIR=gs://my-bucket/sideways/quickstart bash tpu/tensorboard.sh           # on this machine
#   WORKDIR=gs://my-bucket/sideways/quickstart WHERE_TB=vm bash tpu/tensorboard.sh  # on the VM
#
# WHERE_TB=local (default): runs here. Needs a tensorboard with TensorFlow next to it (the
#   repository's .venv from `make install` has both; tf.io.gfile reads gs://) and Google
#   credentials for the bucket: gcloud auth application-default login.
# WHERE_TB=vm: runs on worker 0 of the TPU VM, which can already read the bucket, and
#   forwards the port over ssh (-L $PORT:localhost:$PORT). Ctrl-C stops both.
# WORKDIR may also be a parent folder, to compare runs.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORKDIR="${WORKDIR:-}"
[[ -n "$WORKDIR" ]] || die "set WORKDIR=gs://<bucket>/<path>"
PORT="${PORT:-6006}"
WHERE_TB="${WHERE_TB:-local}"

case "$WHERE_TB" in
  local)
    tensorboard="${TENSORBOARD:-}"
    if [[ -z "$tensorboard" && -x "$REPO_ROOT/.venv/bin/tensorboard" ]]; then
      tensorboard="$REPO_ROOT/.venv/bin/tensorboard"
    fi
    tensorboard="${tensorboard:-tensorboard}"
    command -v "$tensorboard" >/dev/null ||
      die "no tensorboard: make install (then .venv/bin/tensorboard is used) or set TENSORBOARD=..."
    echo "TensorBoard on $WORKDIR at http://localhost:$PORT (Ctrl-C to stop)"
    run "$tensorboard" --logdir="$WORKDIR" --port="$PORT" --host=localhost
    ;;
  vm)
    require_project
    remote="$(printf 'REMOTE_VENV=%q WORKDIR=%q PORT=%q\n' "$REMOTE_VENV" "$WORKDIR" "$PORT")"
    remote+="$(cat <<'REMOTE'

set -euo pipefail
# shellcheck disable=SC1090
source "$HOME/$REMOTE_VENV/bin/activate"
# TensorBoard imports TensorFlow: keep it off the chips a training run holds.
export TPU_LOAD_LIBRARY=0
exec tensorboard --logdir="$WORKDIR" --port="$PORT" --host=localhost
REMOTE
)"
    echo "TensorBoard on worker 0 of $TPU_NAME, forwarded to http://localhost:$PORT (Ctrl-C to stop)"
    ssh_workers 0 "$remote" -t -L "$PORT:localhost:$PORT"
    ;;
  *) die "WHERE_TB is local or vm, not '$WHERE_TB'" ;;
esac
