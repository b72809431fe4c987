#!/usr/bin/env bash
# Run pytest against real PostgreSQL and Kafka: start the ones not already running, stop those
# afterwards whatever happens, and exit with pytest's exit code.
# Usage: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || scripts/install-chromium.sh  # browser tests

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
    TRIALROUTE_PG_FAST=1 deploy/local/"$s".sh start
  elif ((st != 0)); then
    exit 1
  fi
done
KAFKA_BOOTSTRAP_SERVERS="$(deploy/local/kafka.sh bootstrap)"
TRIALROUTE_TEST_PG_URL="$(deploy/local/postgres.sh url)"
export KAFKA_BOOTSTRAP_SERVERS TRIALROUTE_TEST_PG_URL

rc=0
.venv/bin/pytest "$@" || rc=$?
exit "$rc"
