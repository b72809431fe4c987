#!/usr/bin/env bash
# The PostgreSQL stand-in's entrypoint (postgres.Dockerfile): the official image's first-start steps
# that docker-compose.yml relies on, then the command (`postgres ...`) in the foreground.
set -euo pipefail
if [[ ${1:-} == postgres && ! -s $PGDATA/PG_VERSION ]]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
  pwfile="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  # Local (socket) logins trusted, TCP ones by password, as in the official image.
  initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --no-locale >/dev/null
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  for f in /docker-entrypoint-initdb.d/*; do
    case $f in
      *.sql) echo "docker-entrypoint.sh: running $f"; psql -v ON_ERROR_STOP=1 -X -q -U postgres -d postgres -f "$f" ;;
      *.sh) echo "docker-entrypoint.sh: running $f"; . "$f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "docker-entrypoint.sh: initialised $PGDATA"
fi
exec "$@"
