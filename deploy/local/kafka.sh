#!/usr/bin/env bash
# A single-node Kafka broker (KRaft: broker and controller in one JVM) for development and tests,
# run straight from Maven-fetched jars: no Docker, no Kafka distribution to download.
# Usage: deploy/local/kafka.sh start|stop|status|topics|bootstrap|libs
#   (bootstrap prints host:port; libs fetches the jars if needed and prints their directory)
# Env: TRIALROUTE_KAFKA_PORT (29092; the controller listens on the next port),
#      TRIALROUTE_KAFKA_VERSION (4.4.0), TRIALROUTE_CACHE_DIR (~/.cache/trialroute),
#      TRIALROUTE_KAFKA_DIR (where the broker's files live; default .run/kafka: a second broker, say the
#      TLS tests', needs its own),
#      TRIALROUTE_KAFKA_ADVERTISED_PORT (default: the port; the port on 127.0.0.1 the broker tells clients
#      to connect to: a TCP proxy's in front of it, as the network fault suite runs it).
#   SASL_SSL instead of PLAINTEXT on the client port (the controller's stays PLAINTEXT on loopback):
#      TRIALROUTE_KAFKA_SSL_CERT, TRIALROUTE_KAFKA_SSL_KEY (PEM: the broker's certificate chain and its
#      unencrypted PKCS#8 key), TRIALROUTE_KAFKA_SSL_CA (PEM: what the broker, connecting to itself, and
#      the admin tool trust),
#      TRIALROUTE_KAFKA_USER and TRIALROUTE_KAFKA_PASSWORD (a SCRAM-SHA-512 user, added when the log dir
#      is formatted; the broker and the admin tool log in as it too).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CONF="$ROOT/deploy/kafka"
VERSION="${TRIALROUTE_KAFKA_VERSION:-4.4.0}"
PORT="${TRIALROUTE_KAFKA_PORT:-29092}"
CONTROLLER_PORT="${TRIALROUTE_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
ADVERTISED_PORT="${TRIALROUTE_KAFKA_ADVERTISED_PORT:-$PORT}"
BOOTSTRAP="127.0.0.1:$PORT"
RUN="${TRIALROUTE_KAFKA_DIR:-$ROOT/.run/kafka}"
DATA="$RUN/data" LOG="$RUN/kafka.log" PIDFILE="$RUN/kafka.pid" PROPS="$RUN/server.properties"
ADMIN_PROPS="$RUN/admin.properties"  # how KafkaAdmin.java connects (SASL_SSL: its credentials)
SSL_CERT="${TRIALROUTE_KAFKA_SSL_CERT:-}" SSL_KEY="${TRIALROUTE_KAFKA_SSL_KEY:-}" SSL_CA="${TRIALROUTE_KAFKA_SSL_CA:-}"
SCRAM_USER="${TRIALROUTE_KAFKA_USER:-}" SCRAM_PASSWORD="${TRIALROUTE_KAFKA_PASSWORD:-}"
PROTOCOL=PLAINTEXT
[[ -n $SSL_CERT ]] && PROTOCOL=SASL_SSL
# The jars live outside the checkout so that every clone on this machine (CI's too) reuses them.
LIBS="${TRIALROUTE_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/trialroute}/kafka-$VERSION/libs"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

fail() {  # fail MESSAGE [LOG]: say what failed and show the end of the log that explains it
  local log="${2:-$LOG}"
  echo "kafka.sh: FAILED: $1" >&2
  if [[ -s $log ]]; then echo "--- last 30 lines of $log:" >&2; tail -n 30 "$log" >&2; fi
  exit 1
}

running() {  # the pid file names a live broker started with this checkout's config (not a reused pid)
  [[ -f $PIDFILE ]] || return 1
  local pid; pid="$(<"$PIDFILE")"
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $PROPS"
}

check_port() {  # a broker started with another TRIALROUTE_KAFKA_PORT would make `bootstrap` lie
  grep -q "^listeners=$PROTOCOL://$BOOTSTRAP," "$PROPS" \
    || fail "already running with other ports ($(grep '^listeners=' "$PROPS")): stop it first" /dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

kjava() {  # run a Kafka main class or KafkaAdmin.java, logging at error level only
  "$JAVA" -Dlog4j2.configurationFile="$CONF/log4j2.properties" -Dtrialroute.log.level=error \
    -Dtrialroute.admin.config="$ADMIN_PROPS" -cp "$LIBS/*" "$@"
}

jaas() { echo "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$SCRAM_USER\" password=\"$SCRAM_PASSWORD\";"; }

render() {  # server.properties for this run, and the admin tool's client properties
  sed -e "s|@KAFKA_PORT@|$PORT|g" -e "s|@ADVERTISED_PORT@|$ADVERTISED_PORT|g" \
    -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" -e "s|@LOG_DIR@|$DATA|g" \
    "$CONF/server.properties" >"$PROPS"
  : >"$ADMIN_PROPS"
  [[ $PROTOCOL == SASL_SSL ]] || return 0
  [[ -r $SSL_CERT && -r $SSL_KEY && -r $SSL_CA && -n $SCRAM_USER && -n $SCRAM_PASSWORD ]] \
    || fail "SASL_SSL needs TRIALROUTE_KAFKA_SSL_CERT, _SSL_KEY, _SSL_CA (readable PEM files), _USER and _PASSWORD" /dev/null
  # The key and certificate chain in one PEM keystore; the files hold a password: the owner's only.
  (umask 077; cat "$SSL_KEY" "$SSL_CERT" >"$RUN/broker.pem")
  sed -i -e "s|PLAINTEXT://|SASL_SSL://|g" -e "s|^inter.broker.listener.name=.*|inter.broker.listener.name=SASL_SSL|" \
    -e "s|^listener.security.protocol.map=.*|listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT|" \
    "$PROPS"
  chmod 600 "$PROPS" "$ADMIN_PROPS"
  cat >>"$PROPS" <<PROPS
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$(jaas)
ssl.keystore.type=PEM
ssl.keystore.location=$RUN/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$SSL_CA
ssl.client.auth=none
PROPS
  cat >>"$ADMIN_PROPS" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$(jaas)
ssl.truststore.type=PEM
ssl.truststore.location=$SSL_CA
PROPS
}

fetch() {  # resolve the broker's jars with Maven, once per version and pom.xml on this machine
  local want; want="$(sha1sum "$CONF/pom.xml" | cut -c1-40)"
  [[ $(cat "$LIBS/.complete" 2>/dev/null) == "$want" ]] && return 0
  mkdir -p "$(dirname "$LIBS")" "$RUN"
  (
    flock 9  # two checkouts starting at once fetch only once (a subshell: the broker must not inherit fd 9)
    [[ $(cat "$LIBS/.complete" 2>/dev/null) == "$want" ]] && exit 0
    echo "kafka.sh: fetching Kafka $VERSION jars into $LIBS (once per machine)"
    rm -rf "$LIBS.tmp" "$LIBS"
    mvn -B -q -Dstyle.color=never -f "$CONF/pom.xml" -Dkafka.version="$VERSION" \
      dependency:copy-dependencies -DoutputDirectory="$LIBS.tmp" >"$RUN/fetch.log" 2>&1 \
      || fail "Maven could not fetch Kafka $VERSION" "$RUN/fetch.log"
    echo "$want" >"$LIBS.tmp/.complete" && mv "$LIBS.tmp" "$LIBS"
  ) 9>"$(dirname "$LIBS")/.lock" || exit 1
}

format() {  # KRaft refuses to start on a log dir without a cluster id: write one, only the first time
  [[ -f $DATA/meta.properties ]] && return 0
  mkdir -p "$DATA"
  local id; id="$(kjava kafka.tools.StorageTool random-uuid)"
  local scram=()  # SCRAM credentials exist from the start in KRaft: written with the cluster's metadata
  [[ $PROTOCOL == SASL_SSL ]] && scram=(--add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]")
  kjava kafka.tools.StorageTool format --cluster-id "$id" --config "$PROPS" ${scram[@]+"${scram[@]}"} >"$RUN/format.log" 2>&1 \
    || fail "could not format $DATA" "$RUN/format.log"
}

start() {
  if running; then check_port; echo "kafka.sh: already running (pid $(<"$PIDFILE")) on $BOOTSTRAP"; return 0; fi
  for p in "$PORT" "$CONTROLLER_PORT"; do
    port_open "$p" && fail "port $p is in use by another process (set TRIALROUTE_KAFKA_PORT)" /dev/null
  done
  fetch
  mkdir -p "$RUN"
  render
  format
  [[ -f $LOG ]] && mv -f "$LOG" "$LOG.1"  # keep the previous run's log for post-mortems
  # setsid: the broker outlives this script and does not get the terminal's Ctrl-C.
  setsid "$JAVA" -Xms512m -Xmx"${TRIALROUTE_KAFKA_HEAP:-1536m}" -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CONF/log4j2.properties" -cp "$LIBS/*" kafka.Kafka "$PROPS" \
    >"$LOG" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PIDFILE"
  local t0=$SECONDS
  until port_open "$PORT"; do
    # kill -0, not running(): until the forked shell has exec'd java, its command line is this script's.
    kill -0 "$pid" 2>/dev/null || fail "the broker exited during start-up"
    ((SECONDS - t0 < 90)) || fail "the broker did not listen on $BOOTSTRAP within 90 s (it is still running)"
    sleep 0.25
  done
  # An open port is not a ready broker: KafkaAdmin waits until it answers, then creates the topics.
  local topics=()
  while read -r t; do [[ -z $t || $t == \#* ]] || topics+=("$t" "$t.dlq"); done <"$CONF/topics.txt"
  kjava "$CONF/KafkaAdmin.java" ensure "$BOOTSTRAP" 60 6 "${topics[@]}" \
    || fail "the broker did not answer on $BOOTSTRAP, or the topics could not be created (it is still running)"
  echo "kafka.sh: running (pid $(<"$PIDFILE")) on $BOOTSTRAP, log $LOG"
}

stop() {
  if ! running; then rm -f "$PIDFILE"; echo "kafka.sh: not running"; return 0; fi
  local pid; pid="$(<"$PIDFILE")"
  kill "$pid"
  for _ in $(seq 120); do  # a clean shutdown flushes the logs and takes a few seconds
    kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; echo "kafka.sh: stopped"; return 0; }
    sleep 0.25
  done
  echo "kafka.sh: broker did not stop within 30 s, killing it" >&2
  kill -9 "$pid" || true
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status)
    if running; then check_port; echo "kafka.sh: running (pid $(<"$PIDFILE")) on $BOOTSTRAP"
    else echo "kafka.sh: stopped"; exit 3; fi ;;
  topics)
    running || fail "the broker is not running (deploy/local/kafka.sh start)" /dev/null
    kjava "$CONF/KafkaAdmin.java" list "$BOOTSTRAP" ;;
  bootstrap) echo "$BOOTSTRAP" ;;
  libs) fetch >&2 && echo "$LIBS" ;;  # for the Kafka image of scripts/test-deploy.sh
  *) echo "usage: $0 start|stop|status|topics|bootstrap|libs" >&2; exit 2 ;;
esac
