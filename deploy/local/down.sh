#!/usr/bin/env bash
# Stop the local Kafka and PostgreSQL started by up.sh; stopping what is not running is fine.
set -uo pipefail  # no -e: try to stop both even if one fails, and report failure at the end
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rc=0
"$here/kafka.sh" stop || rc=1
"$here/postgres.sh" stop || rc=1
exit $rc
