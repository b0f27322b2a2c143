#!/usr/bin/env bash
# Create .venv and install privacy-bridge with everything the demo and tests need.
# Idempotent: a second run only checks that the install is current.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.privacy-bridge-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # constraints.txt pins torch==2.13.0 so that pip takes the CPU wheel, not a CUDA build.
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[all,dev]"
  echo "$want" > "$stamp"
fi
