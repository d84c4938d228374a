#!/usr/bin/env bash
# Set up codecurate with its test extras in .venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh dev,dask,train
export CODECURATE_BENCHMARK_DIR="${CODECURATE_BENCHMARK_DIR:-$(cd .. && pwd)/shared/benchmarks}"
.venv/bin/ruff check pipeline stages tests bench
.venv/bin/python -m pytest -q "$@"
