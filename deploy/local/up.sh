#!/usr/bin/env bash
# Start the local PostgreSQL and Kafka (both idempotent) and print the environment that the services
# and the tests read. Progress goes to stderr, so this works: eval "$(deploy/local/up.sh)"
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$here/postgres.sh" start >&2
"$here/kafka.sh" start >&2
pg_url="$("$here/postgres.sh" url)"
echo "export KAFKA_BOOTSTRAP_SERVERS=$("$here/kafka.sh" bootstrap)"
echo "export TRIALROUTE_TEST_PG_URL=$pg_url"
for svc in intake eligibility site_router notifier auth insights; do  # one database per service (CONVENTIONS.md)
  echo "export ${svc^^}_DATABASE_URL=${pg_url%/postgres}/$svc" | sed 's|postgresql://|postgresql+asyncpg://|'
done
