#!/usr/bin/env bash
# Start a gin experiment on the TPU VM, detached (nohup + setsid), logging to a file on the VM:
# an ssh drop or closing this terminal does not stop it.
#
#   WORKDIR=gs://my-bucket/sideways/quickstart bash tpu/run.sh
#   EXPERIMENT=moving_shapes_skip_sideways WORKDIR=gs://my-bucket/sideways/ms bash tpu/run.sh \
#     --gin_param=runtime.cores_per_replica=4 --gin_param='runtime.placement="auto"'
#
# Settings (environment; the rest in tpu/common.sh):
#   EXPERIMENT  quickstart (default: gin/quickstart.gin, moving_shapes, no data), a name under
#               gin/experiments/ (moving_shapes_skip_sideways), or a .gin path in the repository
#   WORKDIR     gs://bucket/path (required): checkpoints, TensorBoard logs, config.gin
#   RUN_NAME    name of the log and pid files on the VM (default: last part of WORKDIR)
# Arguments go to sideways-train unchanged (--gin_param=..., ...).
#
# Where it runs: on a single-host slice (v4-8) with --tpu=local. On a multi-host slice, on
# worker 0 only, with --tpu=$TPU_NAME: in TF the runtime's TPU servers on every worker own the
# chips and one client drives them all (this is not JAX, where every worker runs the program).
#
# Resuming: rerun the same command with the same WORKDIR; the trainer restores the last
# checkpoint there. Stopping: kill -TERM the pid in the pid file (it saves a checkpoint first).
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_project
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

EXPERIMENT="${EXPERIMENT:-quickstart}"
case "$EXPERIMENT" in
  quickstart) GIN_FILE=gin/quickstart.gin ;;
  *.gin) GIN_FILE="$EXPERIMENT" ;;
  *) GIN_FILE="gin/experiments/$EXPERIMENT.gin" ;;
esac
[[ -f "$REPO_ROOT/$GIN_FILE" ]] ||
  echo "warning: no $GIN_FILE in this tree; it must exist in the VM's copy" >&2

WORKDIR="${WORKDIR:-}"
[[ -n "$WORKDIR" ]] || die "set WORKDIR=gs://<bucket>/<path> (a bucket in the region of $ZONE)"
if [[ "$WORKDIR" != gs://* && "${ALLOW_LOCAL_WORKDIR:-0}" != 1 ]]; then
  die "WORKDIR must be gs://...: a TPU VM's disk goes with the VM (delete, preemption) and" \
    "other hosts cannot see it. ALLOW_LOCAL_WORKDIR=1 allows a local path on one host."
fi
RUN_NAME="${RUN_NAME:-$(basename "${WORKDIR%/}")}"
RUN_NAME="${RUN_NAME//[^A-Za-z0-9._-]/_}"
SETTLE_SECONDS="${SETTLE_SECONDS:-30}"     # how long to watch for an early exit

hosts="$(worker_count)"
[[ "$hosts" =~ ^[0-9]+$ && "$hosts" -ge 1 ]] || die "cannot read the workers of $TPU_NAME ('$hosts')"
if ((hosts == 1)); then
  workers=all tpu=local
else
  workers=0 tpu="$TPU_NAME"
fi
echo "$TPU_NAME: $hosts host(s); running on worker(s) $workers with --tpu=$tpu"

train=(sideways-train --tpu="$tpu" --gin_file="$GIN_FILE" --workdir="$WORKDIR" "$@")
remote="$(printf 'REMOTE_DIR=%q REMOTE_VENV=%q REMOTE_LOGS=%q RUN_NAME=%q GIN_FILE=%q SIDEWAYS_TPU=%q SETTLE_SECONDS=%q\n' \
  "$REMOTE_DIR" "$REMOTE_VENV" "$REMOTE_LOGS" "$RUN_NAME" "$GIN_FILE" "$tpu" "$SETTLE_SECONDS")"
remote+="$(printf '\nTRAIN=('; printf ' %q' "${train[@]}"; printf ' )\n')"
remote+="$(cat <<'REMOTE'

set -euo pipefail
host="$(hostname)"
cd "$HOME/$REMOTE_DIR"
export SIDEWAYS_TPU SIDEWAYS_VENV="$HOME/$REMOTE_VENV"
# shellcheck disable=SC1091
source tpu/vm_env.sh
[[ -f "$GIN_FILE" ]] || { echo "[$host] no $GIN_FILE in ~/$REMOTE_DIR: rerun tpu/install.sh" >&2; exit 1; }

logs="$HOME/$REMOTE_LOGS"
mkdir -p "$logs"
log="$logs/$RUN_NAME.log" pidfile="$logs/$RUN_NAME.pid"
if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "[$host] $RUN_NAME is already running (pid $(cat "$pidfile")); log: $log" >&2
  exit 1
fi
{
  printf '\n=== %s start on %s:' "$(date -u +%FT%TZ)" "$host"
  printf ' %q' "${TRAIN[@]}"
  printf '\n'
} >>"$log"
# Own session, no terminal, SIGHUP ignored: the run outlives this ssh connection.
nohup setsid "${TRAIN[@]}" >>"$log" 2>&1 </dev/null &
echo $! >"$pidfile"

sleep "$SETTLE_SECONDS"
if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  tail -n 40 "$log" >&2
  echo "[$host] $RUN_NAME exited within ${SETTLE_SECONDS}s; log above (and in $log)" >&2
  exit 1
fi
echo "[$host] $RUN_NAME running as pid $(cat "$pidfile"); log: ~/$REMOTE_LOGS/$RUN_NAME.log"
REMOTE
)"

ssh_workers "$workers" "$remote"

ssh=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${WHERE[@]}" --worker=0)
echo
echo "Started. Follow:  $(printf '%q ' "${ssh[@]}")--command='tail -f ~/$REMOTE_LOGS/$RUN_NAME.log'"
echo "Stop (saves a checkpoint first):"
echo "    $(printf '%q ' "${ssh[@]}")--command='kill -TERM \$(cat ~/$REMOTE_LOGS/$RUN_NAME.pid)'"
echo "TensorBoard:      WORKDIR=$WORKDIR bash tpu/tensorboard.sh"
