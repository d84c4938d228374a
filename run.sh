#!/usr/bin/env bash
# Set up codecurate in .venv and run the default job (configs/stack-v2.yaml on this machine's Python).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
# decontaminate reads MBPP from $CODECURATE_BENCHMARK_DIR, else the user cache, else the Hugging Face Hub
# (README); this project keeps a copy beside the checkout, in ../shared/benchmarks.
if [ -z "${CODECURATE_BENCHMARK_DIR:-}" ] && [ -f ../shared/benchmarks/mbpp.jsonl ]; then
  export CODECURATE_BENCHMARK_DIR="$(cd ../shared/benchmarks && pwd)"
fi
.venv/bin/pipeline run configs/stack-v2.yaml --overwrite "$@"
.venv/bin/pipeline verify out/stack-v2
