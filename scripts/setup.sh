#!/usr/bin/env bash
# Create .venv (if needed) and install codecurate with the given extras ("dev", "train", ...).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
.venv/bin/python -m pip install -q -e "$spec"
if [[ ",$extras," == *",train,"* ]]; then
  # DeepSpeed builds against the installed torch: no isolated build env (which would fetch another torch)
  .venv/bin/python -m pip install -q "deepspeed==0.19.8" --no-build-isolation
fi
