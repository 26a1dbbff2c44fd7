#!/usr/bin/env bash
# The README's results table: the four modes on moving_shapes, same budget (2000 steps).
#   bash benchmarks/moving_shapes_modes.sh [workdir_root] [modes...]   (about 35 min on 2 CPU cores)
# then: python benchmarks/plot_curves.py --root [workdir_root] --out docs/moving_shapes_curves.png
set -euo pipefail
root=${1:-workdirs/moving_shapes}
shift || true
modes=${*:-frame_bp sideways skip_sideways bptt}
mkdir -p "$root"
for mode in $modes; do
  start=$(date +%s)
  sideways-train --gin_file="gin/experiments/moving_shapes_${mode}.gin" \
    --workdir="$root/$mode" --gin_param=train.progress=False
  echo "$mode: $(( $(date +%s) - start )) s wall" | tee -a "$root/wall_times.txt"
done
