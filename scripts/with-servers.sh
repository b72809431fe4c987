#!/usr/bin/env bash
# Run a command against real PostgreSQL and Kafka: start the ones not already running, stop those
# afterwards whatever happens (INT exits 130, TERM 143), and exit with the command's exit code.
# The command gets TRIALROUTE_TEST_PG_URL (an admin URL) and KAFKA_BOOTSTRAP_SERVERS.
# Usage: scripts/with-servers.sh [--pg-fast] COMMAND [ARGS...]
#   --pg-fast  start PostgreSQL with fsync off (test instances only; the command does not inherit
#              TRIALROUTE_PG_FAST). Without it PostgreSQL is durable, as benchmark figures should be.
# Env: TRIALROUTE_PG_PORT, TRIALROUTE_KAFKA_PORT (see deploy/local/*.sh).
set -euo pipefail
deploy="$(cd "$(dirname "${BASH_SOURCE[0]}")/../deploy/local" && pwd)"

fast=()
if [[ ${1:-} == --pg-fast ]]; then fast=(env TRIALROUTE_PG_FAST=1); shift; fi
(($#)) || { echo "usage: $0 [--pg-fast] COMMAND [ARGS...]" >&2; exit 2; }

started=()
# shellcheck disable=SC2317  # (cleanup is called by the trap)
cleanup() {
  local s
  for s in ${started[@]+"${started[@]}"}; do "$deploy/$s.sh" stop || true; done
}
trap cleanup EXIT
trap 'exit 130' INT  # turn signals into an exit, so the EXIT trap still stops the servers
trap 'exit 143' TERM

for s in postgres kafka; do
  st=0; "$deploy/$s.sh" status >/dev/null || st=$?
  if ((st == 3)); then  # stopped (any other failure was reported by status itself)
    started+=("$s")  # recorded before start, so a half-started server is stopped too
    ${fast[@]+"${fast[@]}"} "$deploy/$s.sh" start
  elif ((st != 0)); then
    exit 1
  fi
done
KAFKA_BOOTSTRAP_SERVERS="$("$deploy/kafka.sh" bootstrap)"
TRIALROUTE_TEST_PG_URL="$("$deploy/postgres.sh" url)"
export KAFKA_BOOTSTRAP_SERVERS TRIALROUTE_TEST_PG_URL

rc=0
"$@" || rc=$?
exit "$rc"
