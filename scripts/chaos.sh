#!/usr/bin/env bash
# Chaos mode (`make chaos`): faults drawn at random from a seed over a long run while a clinic keeps
# submitting (10 minutes of faults, 3,000 referrals at 5/s by default), then every check of the fault
# suite; prints the seed first, the schedule and the fault table, and exits non-zero on any problem.
# It needs no server running: the suite starts its own PostgreSQL (durable) and Kafka on the
# environment's ports plus 10 (files under .run/faults) and stops them afterwards; each report is kept
# in .run/chaos/seed-<seed>.txt. See docs/reliability.md.
# Usage: scripts/chaos.sh [pytest args]
# Env: TRIALROUTE_CHAOS_SEED (replay that seed's schedule; default: a fresh one, printed),
#      TRIALROUTE_CHAOS_DURATION_S (600: faults start within this many seconds),
#      TRIALROUTE_CHAOS_RATE (5 referrals a second), TRIALROUTE_PG_PORT, TRIALROUTE_KAFKA_PORT (bases).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh
export TRIALROUTE_CHAOS_DURATION_S="${TRIALROUTE_CHAOS_DURATION_S:-600}"
export TRIALROUTE_CHAOS_RATE="${TRIALROUTE_CHAOS_RATE:-5}"
exec .venv/bin/pytest tests/reliability/test_chaos.py -q "$@"
