#!/usr/bin/env bash
# Set up codecurate in .venv and run the default job (configs/stack-v2.yaml on this machine's Python).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
.venv/bin/pipeline run configs/stack-v2.yaml --overwrite "$@"
.venv/bin/pipeline verify out/stack-v2
