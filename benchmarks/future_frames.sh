#!/usr/bin/env bash
# The README's future-frame table: the four modes predict the next moving_shapes frame,
# same budget (train.num_steps, 1000 by default here).
#   bash benchmarks/future_frames.sh [workdir_root] [num_steps] [modes...]
# then: python benchmarks/plot_future.py --root [workdir_root]   (table + docs/future_frames.png)
# DECODER=whole (or delta; motion is the shipped default) picks the head's decoder
# (FutureFrames.decoder; the older HEAD=frames / frame_delta / frame_motion still works):
#   DECODER=whole bash benchmarks/future_frames.sh workdirs/heads/whole 300 skip_sideways
set -euo pipefail
root=${1:-workdirs/moving_shapes_future}
steps=${2:-1000}
shift 2 || shift $# || true
modes=${*:-frame_bp sideways skip_sideways bptt}
case "${HEAD:-}" in  # the older head names
  frames) DECODER=${DECODER:-whole} ;;
  frame_delta) DECODER=${DECODER:-delta} ;;
  frame_motion) DECODER=${DECODER:-motion} ;;
  "") ;;
  *) echo "HEAD=$HEAD: use DECODER=motion, delta or whole" >&2; exit 2 ;;
esac
mkdir -p "$root"
for mode in $modes; do
  start=$(date +%s)
  sideways-train --gin_file="experiments/moving_shapes_future_${mode}" \
    --workdir="$root/$mode" --gin_param=train.progress=False \
    --gin_param="train.num_steps=$steps" --gin_param="train.eval_every=$steps" \
    --gin_param="train.checkpoint_every=$steps" \
    ${DECODER:+--gin_param="FutureFrames.decoder='$DECODER'"}
  echo "$mode: $(( $(date +%s) - start )) s wall" | tee -a "$root/wall_times.txt"
done
