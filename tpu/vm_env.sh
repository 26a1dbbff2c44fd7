# The environment for TensorFlow on a TPU VM: sourced ON THE VM, by tpu/run.sh, or by hand:
#
#   cd ~/sideways_tf && source tpu/vm_env.sh && pytest -m tpu tests
#
# Activates the venv of tpu/install.sh and sets what the TF -pjrt runtimes expect:
#   SIDEWAYS_TPU=local (default): a single-host slice. This process owns the chips and
#     loads libtpu itself through the PJRT C API (NEXT_PLUGGABLE_DEVICE_USE_C_API, and
#     TF_PLUGGABLE_DEVICE_LIBRARY_PATH = the libtpu.so of the venv's libtpu package).
#   SIDEWAYS_TPU=<TPU name>: a multi-host slice, on worker 0 only. The runtime's TPU servers
#     on every worker own the chips; this process is their client (TPUClusterResolver(tpu=
#     name) connects to them) and must not load libtpu (TPU_LOAD_LIBRARY=0).
# The same variables as Google's TF release tests on TPU VMs
# (GoogleCloudPlatform/ml-auto-solutions, dags/solutions_team/configs/tensorflow/common.py).
# shellcheck shell=bash

SIDEWAYS_VENV="${SIDEWAYS_VENV:-$HOME/sideways_venv}"
if [[ ! -f "$SIDEWAYS_VENV/bin/activate" ]]; then
  echo "no venv at $SIDEWAYS_VENV: run tpu/install.sh first" >&2
  return 1
fi
# shellcheck disable=SC1091
source "$SIDEWAYS_VENV/bin/activate"

export SIDEWAYS_TPU="${SIDEWAYS_TPU:-local}"
if [[ "$SIDEWAYS_TPU" == local ]]; then
  unset TPU_LOAD_LIBRARY
  export NEXT_PLUGGABLE_DEVICE_USE_C_API=true
  TF_PLUGGABLE_DEVICE_LIBRARY_PATH="$(python - <<'EOF'
import importlib.util, os
spec = importlib.util.find_spec("libtpu")
paths = [os.path.join(p, "libtpu.so") for p in (spec.submodule_search_locations or [])] if spec else []
print(next((p for p in paths if os.path.exists(p)), "/lib/libtpu.so"))
EOF
)"
  export TF_PLUGGABLE_DEVICE_LIBRARY_PATH
else
  unset NEXT_PLUGGABLE_DEVICE_USE_C_API TF_PLUGGABLE_DEVICE_LIBRARY_PATH
  export TPU_LOAD_LIBRARY=0
  export TPU_NAME="$SIDEWAYS_TPU"
fi
