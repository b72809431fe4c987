#!/usr/bin/env bash
# A project-owned PostgreSQL instance for development and tests (no Docker, no system cluster):
# initdb'd once into .run/postgres/data, listening on 127.0.0.1 only, trust auth, one database per service.
# Usage: deploy/local/postgres.sh start|stop|kill|status|url
#   (kill: SIGKILL the postmaster and its processes, a crash: the next start runs crash recovery)
# Env: TRIALROUTE_PG_PORT (25432), TRIALROUTE_PG_FAST=1 (fsync off: test instances only),
#      PG_BIN (directory of pg_ctl and friends; default: the newest /usr/lib/postgresql/*/bin),
#      TRIALROUTE_PG_DIR (where the instance lives; default .run/postgres: a second instance, say the TLS
#      tests', needs its own), TRIALROUTE_PG_SSL_CERT and TRIALROUTE_PG_SSL_KEY (PEM files: serve TLS with
#      them and refuse connections without it; `url` then asks for sslmode=require).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PORT="${TRIALROUTE_PG_PORT:-25432}"
DATABASES=(intake eligibility site_router notifier auth insights)
PG_BIN="${PG_BIN:-$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)}"
[[ -x ${PG_BIN:-}/pg_ctl ]] || PG_BIN="$(dirname "$(command -v pg_ctl || echo /pg_ctl/not/found)")"

# PostgreSQL refuses to run as root: as root, run it as the unprivileged `postgres` user.
if [[ $(id -u) == 0 ]]; then
  PATH="$PATH:/usr/sbin:/sbin"  # runuser and useradd, for a root whose PATH lacks them
  id postgres >/dev/null 2>&1 || useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin postgres
  AS_PG=(runuser -u postgres --)
else
  AS_PG=()
fi

fail() {  # fail MESSAGE [LOG]: say what failed and show the end of the log that explains it
  local log="${2:-${LOG:-}}"
  echo "postgres.sh: FAILED: $1" >&2
  if [[ -n $log && -s $log ]]; then echo "--- last 30 lines of $log:" >&2; tail -n 30 "$log" >&2; fi
  exit 1
}

[[ -x $PG_BIN/pg_ctl ]] || fail "no PostgreSQL binaries found (install postgresql, or set PG_BIN)"

# The server user must be able to reach its data dir. A checkout under a root-only path (/root/...)
# is not reachable, so there the files live in /var/tmp, keyed by the checkout's path, and
# .run/postgres is a symlink to them: .run/postgres/{data,postgres.log} work in both cases.
SSL_CERT="${TRIALROUTE_PG_SSL_CERT:-}" SSL_KEY="${TRIALROUTE_PG_SSL_KEY:-}"
[[ -z $SSL_CERT && -z $SSL_KEY ]] || [[ -r $SSL_CERT && -r $SSL_KEY ]] \
  || { echo "postgres.sh: FAILED: TRIALROUTE_PG_SSL_CERT and TRIALROUTE_PG_SSL_KEY must both name readable files" >&2; exit 1; }

locate() {
  BASE="${TRIALROUTE_PG_DIR:-$ROOT/.run/postgres}"
  if [[ ! -e $BASE ]]; then
    mkdir -p "$BASE"
    if ((${#AS_PG[@]})); then
      chown postgres: "$BASE"
      if ! "${AS_PG[@]}" test -w "$BASE"; then
        rmdir "$BASE"
        local real; real="/var/tmp/trialroute-pg-$(echo -n "$BASE" | sha1sum | cut -c1-12)"
        mkdir -p "$real" && chown postgres: "$real" && chmod 700 "$real"
        ln -s "$real" "$BASE"
      fi
    fi
  fi
  BASE="$(cd "$BASE" && pwd -P)"  # the real path: the server user cannot go through /root/... to a symlink
  DATA="$BASE/data" LOG="$BASE/postgres.log"
}

pg() {  # pg TOOL ARGS...: a PostgreSQL tool as the server user, from / (it may not read the caller's cwd)
  local tool="$1"; shift
  (cd / && "${AS_PG[@]}" "$PG_BIN/$tool" "$@")
}

running() { [[ -f $DATA/PG_VERSION ]] && pg pg_ctl status -D "$DATA" >/dev/null 2>&1; }

check_port() {  # a running instance started with another TRIALROUTE_PG_PORT would make `url` lie
  local actual; actual="$(sed -n 4p "$DATA/postmaster.pid")"
  [[ $actual == "$PORT" ]] || fail "already running on port $actual, not $PORT: stop it first" /dev/null
}

start() {
  if running; then check_port; echo "postgres.sh: already running on 127.0.0.1:$PORT"; return 0; fi
  if [[ ! -f $DATA/PG_VERSION ]]; then
    rm -rf "$DATA"
    pg initdb -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$BASE/initdb.log" 2>&1 \
      || fail "initdb of $DATA" "$BASE/initdb.log"
    # Loopback TCP only; no unix socket (its directory may be unwritable, and its path is length-limited).
    cat >>"$DATA/postgresql.conf" <<'CONF'
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 300
CONF
  fi
  local opts="-p $PORT"
  # Durability traded for speed; only for throwaway test instances (set by scripts/test.sh).
  [[ ${TRIALROUTE_PG_FAST:-0} == 1 ]] && opts+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  if [[ -n $SSL_CERT ]]; then tls; opts+=" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key -c hba_file=$DATA/pg_hba_tls.conf"; fi
  pg pg_ctl start -D "$DATA" -l "$LOG" -o "$opts" -w -t 60 >/dev/null \
    || fail "PostgreSQL did not start on 127.0.0.1:$PORT (is the port taken? set TRIALROUTE_PG_PORT)"
  for db in "${DATABASES[@]}"; do  # CREATE DATABASE has no IF NOT EXISTS: \gexec runs it only when missing
    echo "SELECT 'CREATE DATABASE $db' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')
\gexec"
  done | env ${SSL_CERT:+PGSSLMODE=require} "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres \
    || fail "creating the service databases"
  echo "postgres.sh: running on 127.0.0.1:$PORT, data $DATA, log $LOG"
}

tls() {  # the server's certificate and key in the data dir, readable by the server user only; TLS required
  install -m 600 "$SSL_CERT" "$DATA/server.crt"
  install -m 600 "$SSL_KEY" "$DATA/server.key"
  cat >"$DATA/pg_hba_tls.conf" <<'HBA'
hostssl all all 127.0.0.1/32 trust
hostnossl all all 0.0.0.0/0 reject
HBA
  if ((${#AS_PG[@]})); then chown postgres: "$DATA/server.crt" "$DATA/server.key" "$DATA/pg_hba_tls.conf"; fi
}

stop() {
  if ! running; then echo "postgres.sh: not running"; return 0; fi
  # pg_ctl stops the postmaster named by this data dir's postmaster.pid, and nothing else.
  pg pg_ctl stop -D "$DATA" -m fast -w -t 60 >/dev/null || fail "stopping PostgreSQL"
  echo "postgres.sh: stopped"
}

live() {  # any of these pids a live process (a zombie, dead but not yet reaped, does not count)
  local p
  for p in "$@"; do
    [[ -r /proc/$p/stat && $(cut -d' ' -f3 "/proc/$p/stat" 2>/dev/null) != Z ]] && return 0
  done
  return 1
}

crash() {  # SIGKILL, as a machine or OOM killer would: no shutdown checkpoint; start recovers from the WAL
  if ! running; then echo "postgres.sh: not running"; return 0; fi
  local pid children
  pid="$(sed -n 1p "$DATA/postmaster.pid")"
  # Its backends too, at once: orphans would hold the shared memory and block the next start.
  children="$(pgrep -P "$pid" || true)"
  # shellcheck disable=SC2086  # (the pids, one word each)
  kill -9 "$pid" $children
  for _ in $(seq 120); do
    # shellcheck disable=SC2086
    if ! live "$pid" $children; then
      # A dead postmaster no one reaps (a container's init may not) still answers kill -0, and its
      # postmaster.pid would make pg_ctl and the next postmaster think it runs: gone with it. The next
      # start finds the data dir not cleanly shut down and recovers from the WAL.
      rm -f "$DATA/postmaster.pid"
      echo "postgres.sh: killed (pid $pid)"; return 0
    fi
    sleep 0.25
  done
  fail "the postmaster (pid $pid) or its processes outlived SIGKILL for 30 s"
}

locate
case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) crash ;;
  status)
    if running; then check_port; echo "postgres.sh: running on 127.0.0.1:$PORT"
    else echo "postgres.sh: stopped"; exit 3; fi ;;
  url) echo "postgresql://postgres@127.0.0.1:$PORT/postgres${SSL_CERT:+?sslmode=require}" ;;
  *) echo "usage: $0 start|stop|kill|status|url" >&2; exit 2 ;;
esac
