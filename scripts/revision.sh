#!/usr/bin/env bash
# Write a service's next store migration from its models: scripts/revision.sh SERVICE "what changes"
# e.g. scripts/revision.sh notifier "add webhook endpoints and deliveries"
# It migrates a scratch SQLite store to the service's current head, compares it with the models (the
# tables in services/SERVICE/store.py's TABLES), writes services/SERVICE/migrations/m<NNNN>_<slug>.py
# and formats it with ruff. Review it (autogenerate misses renames, data moves and server defaults), run
# tests/integration/platform/test_migrations.py, and commit it with the model change. See docs/migrations.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ $# -ne 2 ]]; then
  echo "usage: scripts/revision.sh SERVICE \"what changes\"" >&2
  exit 2
fi
exec .venv/bin/trialroute revision "$1" "$2"
