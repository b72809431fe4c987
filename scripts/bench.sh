#!/usr/bin/env bash
# Run every benchmark (bench/run_all.py) against real PostgreSQL and Kafka (scripts/with-servers.sh:
# starts the ones not already running, PostgreSQL durable with fsync on as the figures should be, stops
# those afterwards whatever happens) and exit with the runner's exit code (non-zero only if a benchmark
# failed to run: figures that miss their goals are reported, never asserted).
# Usage: scripts/bench.sh [run_all args, e.g. --only intake consumers | --quick]
# Env: PYTHON (default .venv/bin/python, made by scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z ${PYTHON:-} ]]; then
  scripts/bootstrap.sh
  PYTHON=.venv/bin/python
fi

exec scripts/with-servers.sh "$PYTHON" -m bench.run_all "$@"
