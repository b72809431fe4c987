#!/usr/bin/env bash
# Run every benchmark (bench/run_all.py) against real PostgreSQL and Kafka: start the ones not already
# running, stop those afterwards whatever happens, and exit with the runner's exit code (non-zero only
# if a benchmark failed to run: figures that miss their goals are reported, never asserted).
# Usage: scripts/bench.sh [run_all args, e.g. --only intake consumers | --quick]
# Env: PYTHON (default .venv/bin/python, made by scripts/bootstrap.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z ${PYTHON:-} ]]; then
  scripts/bootstrap.sh
  PYTHON=.venv/bin/python
fi

started=()
# shellcheck disable=SC2317  # (cleanup is called by the trap)
cleanup() {
  local s
  for s in ${started[@]+"${started[@]}"}; do deploy/local/"$s".sh stop || true; done
}
trap cleanup EXIT
trap 'exit 130' INT  # turn signals into an exit, so the EXIT trap still stops the servers
trap 'exit 143' TERM

for s in postgres kafka; do
  st=0; deploy/local/"$s".sh status >/dev/null || st=$?
  if ((st == 3)); then  # stopped (any other failure was reported by status itself)
    started+=("$s")  # recorded before start, so a half-started server is stopped too
    deploy/local/"$s".sh start  # durable PostgreSQL (fsync on), as the figures should be
  elif ((st != 0)); then
    exit 1
  fi
done
KAFKA_BOOTSTRAP_SERVERS="$(deploy/local/kafka.sh bootstrap)"
TRIALROUTE_TEST_PG_URL="$(deploy/local/postgres.sh url)"
export KAFKA_BOOTSTRAP_SERVERS TRIALROUTE_TEST_PG_URL

rc=0
"$PYTHON" -m bench.run_all "$@" || rc=$?
exit "$rc"
