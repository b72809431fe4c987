#!/usr/bin/env bash
# Run the linters (scripts/lint.sh: a finding fails the run before any test), then pytest against real
# PostgreSQL and Kafka (scripts/with-servers.sh: starts the ones not already running, PostgreSQL with
# fsync off, stops those afterwards whatever happens) and exit with pytest's exit code.
# Usage: scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/bootstrap.sh
scripts/lint.sh
[[ -x /usr/bin/chromium ]] || scripts/install-chromium.sh  # browser tests (Playwright drives it)
scripts/install-promtool.sh >/dev/null  # alert rule tests (tests/unit/deploy/test_alerts.py)
scripts/install-toxiproxy.sh >/dev/null  # network fault suite (tests/reliability/test_network_faults.py)

exec scripts/with-servers.sh --pg-fast .venv/bin/pytest "$@"
