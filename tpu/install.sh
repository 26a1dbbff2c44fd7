#!/usr/bin/env bash
# Put the repository and a pinned venv on every worker of the TPU VM.
#
#   bash tpu/install.sh                                    # copy this working tree
#   REPO_URL=https://github.com/<you>/sideways_tf.git REPO_REF=main bash tpu/install.sh
#
# Settings (environment, defaults in tpu/common.sh): PROJECT, ZONE, TPU_NAME, TF_VERSION,
# REMOTE_DIR (~/sideways_tf), REMOTE_VENV (~/sideways_venv), and:
#   REPO_URL   clone (or update) this git repository on the workers; unset: copy the local
#              tree (this script's repository, without .git, .venv and workdirs)
#   REPO_REF   branch, tag or commit to check out (with REPO_URL; default: the remote's HEAD)
# Rerunning is safe: the tree is replaced (or pulled), the venv is reused and re-synced.
set -euo pipefail
# shellcheck source=tpu/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
require_project
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_URL="${REPO_URL:-}"
REPO_REF="${REPO_REF:-}"
# libtpu is not on PyPI: Google publishes the builds tensorflow-tpu pins on this page
# (pip --find-links). Override with a mirror or a local folder of wheels.
LIBTPU_INDEX="${LIBTPU_INDEX:-https://storage.googleapis.com/libtpu-tf-releases/index.html}"

# --- Code onto the workers ------------------------------------------------------------------
if [[ -z "$REPO_URL" ]]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  tarball="$tmp/sideways_tf.tar.gz"
  echo "Packing $REPO_ROOT -> $tarball"
  # COPYFILE_DISABLE: no macOS ._ files in the archive.
  COPYFILE_DISABLE=1 tar -czf "$tarball" -C "$REPO_ROOT" \
    --exclude=.git --exclude=.venv --exclude=workdirs --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache .
  du -h "$tarball"
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:sideways_tf.tar.gz" \
    "${WHERE[@]}" --worker=all
fi

# --- On every worker: tree, venv, pinned packages, checks ---------------------------------------
# Values go in as shell-quoted assignments; the body is literal.
remote="$(printf 'REPO_URL=%q REPO_REF=%q REMOTE_DIR=%q REMOTE_VENV=%q TF_VERSION=%q LIBTPU_INDEX=%q\n' \
  "$REPO_URL" "$REPO_REF" "$REMOTE_DIR" "$REMOTE_VENV" "$TF_VERSION" "$LIBTPU_INDEX")"
remote+="$(cat <<'REMOTE'

set -euo pipefail
cd "$HOME"
host="$(hostname)"
say() { echo "[$host] $*"; }

if [[ -n "$REPO_URL" ]]; then
  if [[ -d "$REMOTE_DIR/.git" ]]; then
    say "updating $REMOTE_DIR from $REPO_URL"
    git -C "$REMOTE_DIR" fetch --quiet origin
    if [[ -z "$REPO_REF" ]]; then git -C "$REMOTE_DIR" pull --quiet --ff-only; fi
  else
    say "cloning $REPO_URL"
    rm -rf "$REMOTE_DIR"  # a tree copied by an earlier run without REPO_URL
    git clone --quiet "$REPO_URL" "$REMOTE_DIR"
  fi
  if [[ -n "$REPO_REF" ]]; then
    git -C "$REMOTE_DIR" checkout --quiet "$REPO_REF"
    # A branch: bring it up to the branch just fetched.
    if git -C "$REMOTE_DIR" show-ref --verify --quiet "refs/remotes/origin/$REPO_REF"; then
      git -C "$REMOTE_DIR" merge --quiet --ff-only "origin/$REPO_REF"
    fi
  fi
else
  say "unpacking the copied tree into ~/$REMOTE_DIR"
  rm -rf "$REMOTE_DIR"
  mkdir -p "$REMOTE_DIR"
  tar -xzf sideways_tf.tar.gz -C "$REMOTE_DIR"
  rm -f sideways_tf.tar.gz
fi
cd "$REMOTE_DIR"
[[ -f tpu/requirements.txt ]] || { say "error: no tpu/requirements.txt in this checkout"; exit 1; }

say "python3 is $(python3 --version 2>&1) (tpu/requirements.txt is resolved for 3.10)"
venv="$HOME/$REMOTE_VENV"
if [[ ! -x "$venv/bin/pip" ]]; then
  rm -rf "$venv"
  if ! python3 -m venv "$venv"; then
    say "python3 -m venv failed; installing python3-venv"
    rm -rf "$venv"
    sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq python3-venv
    python3 -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
say "installing tpu/requirements.txt (tensorflow-tpu==$TF_VERSION, libtpu from $LIBTPU_INDEX)"
"${pip[@]}" install --quiet -r tpu/requirements.txt --find-links "$LIBTPU_INDEX"
# --no-deps: setup.py asks for `tensorflow`, which would bring the stock wheel over tensorflow-tpu.
"${pip[@]}" install --quiet --no-deps -e .
# tensorflow-tpu 2.18 loads its libraries with global symbols that shadow the system OpenSSL;
# a Python that imports hashlib after it segfaults (seen with Debian's and pyenv's Python
# and OpenSSL 3). Python runs "import" lines of .pth files at startup: load OpenSSL first.
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import hashlib, ssl  # before tensorflow-tpu: see tpu/install.sh" >"$site/sideways_openssl_first.pth"

if "${pip[@]}" show tensorflow >/dev/null 2>&1; then
  say "error: the stock tensorflow wheel is installed next to tensorflow-tpu; remove it:" \
    "$venv/bin/pip uninstall -y tensorflow"
  exit 1
fi
# TPU_LOAD_LIBRARY=0: check the packages without touching the chips (a run may hold them).
TPU_LOAD_LIBRARY=0 "$venv/bin/python" - "$TF_VERSION" <<'EOF'
import sys

import keras
import tensorflow as tf

import sideways_tf

want = sys.argv[1]
assert tf.__version__ == want, f"TensorFlow {tf.__version__}, expected {want}"
assert "gs" in tf.io.gfile.get_registered_schemes(), "tf.io.gfile cannot read gs:// paths"
print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, sideways_tf from {sideways_tf.__file__}")
EOF
say "ready: cd ~/$REMOTE_DIR && source tpu/vm_env.sh"
REMOTE
)"

ssh_workers all "$remote"
echo "Installed on every worker of $TPU_NAME. Next: WORKDIR=gs://<bucket>/<run> bash tpu/run.sh"
