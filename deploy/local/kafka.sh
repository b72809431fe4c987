#!/usr/bin/env bash
# Kafka in KRaft mode for development and tests, run straight from Maven-fetched jars: no Docker, no
# Kafka distribution to download. By default a single node (broker and controller in one JVM); with
# TRIALROUTE_KAFKA_NODES=3 a cluster of three such nodes, all voters of one quorum, topics with three
# replicas and min.insync.replicas 2 (what the broker-cluster fault suite runs on).
# Usage: deploy/local/kafka.sh start|stop|status|topics|bootstrap|libs
#   (bootstrap prints host:port, a comma-separated list for a cluster; libs fetches the jars if needed
#   and prints their directory)
#   A cluster's nodes one at a time (ids 1..3): kill ID (kill -9), start-node ID (start it again and
#   wait until it is back in the cluster and every partition has all its replicas in sync again),
#   restart-node ID (a clean stop, then start-node), controller (prints the active controller's id).
# Env: TRIALROUTE_KAFKA_PORT (29092; the controller listens on the next port; a cluster's node i listens
#      on PORT+2(i-1) and its controller on the port after it, so a cluster takes PORT..PORT+5),
#      TRIALROUTE_KAFKA_NODES (1, or 3 for a cluster),
#      TRIALROUTE_KAFKA_VERSION (4.4.0), TRIALROUTE_CACHE_DIR (~/.cache/trialroute),
#      TRIALROUTE_KAFKA_DIR (where the broker's files live; default .run/kafka, a cluster's
#      .run/kafka-cluster with a node-<id> directory per node: a second broker, say the TLS tests',
#      needs its own), TRIALROUTE_KAFKA_HEAP (the JVM's maximum heap per node; 1536m, a cluster's 768m),
#      TRIALROUTE_KAFKA_ADVERTISED_PORT (one node only; default: its port): the port on 127.0.0.1 the
#      broker tells clients to connect to: a TCP proxy's in front of it, as the network fault suite runs it.
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
NODES="${TRIALROUTE_KAFKA_NODES:-1}"
if [[ $NODES == 1 ]]; then
  RUN="${TRIALROUTE_KAFKA_DIR:-$ROOT/.run/kafka}" REPLICAS=1 MIN_ISR=1 HEAP="${TRIALROUTE_KAFKA_HEAP:-1536m}"
elif [[ $NODES == 3 ]]; then
  RUN="${TRIALROUTE_KAFKA_DIR:-$ROOT/.run/kafka-cluster}" REPLICAS=3 MIN_ISR=2 HEAP="${TRIALROUTE_KAFKA_HEAP:-768m}"
else
  echo "kafka.sh: TRIALROUTE_KAFKA_NODES is 1 or 3, not $NODES" >&2; exit 2
fi
ADMIN_PROPS="$RUN/admin.properties"  # how KafkaAdmin.java connects (SASL_SSL: its credentials)
SSL_CERT="${TRIALROUTE_KAFKA_SSL_CERT:-}" SSL_KEY="${TRIALROUTE_KAFKA_SSL_KEY:-}" SSL_CA="${TRIALROUTE_KAFKA_SSL_CA:-}"
SCRAM_USER="${TRIALROUTE_KAFKA_USER:-}" SCRAM_PASSWORD="${TRIALROUTE_KAFKA_PASSWORD:-}"
PROTOCOL=PLAINTEXT
[[ -n $SSL_CERT ]] && PROTOCOL=SASL_SSL
# The jars live outside the checkout so that every clone on this machine (CI's too) reuses them.
LIBS="${TRIALROUTE_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/trialroute}/kafka-$VERSION/libs"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

client_port() { echo $((PORT + 2 * ($1 - 1))); }
controller_port() {  # one node keeps its TRIALROUTE_KAFKA_CONTROLLER_PORT override
  if [[ $NODES == 1 ]]; then echo "${TRIALROUTE_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
  else echo $(($(client_port "$1") + 1)); fi
}
IDS=() BOOTSTRAP="" VOTERS=""
for ((i = 1; i <= NODES; i++)); do
  IDS+=("$i")
  BOOTSTRAP+="${BOOTSTRAP:+,}127.0.0.1:$(client_port "$i")"
  VOTERS+="${VOTERS:+,}$i@127.0.0.1:$(controller_port "$i")"
done

node() {  # node ID: point the per-node variables at node ID (one node: the directory layout of old)
  NODE="$1"
  [[ $NODE =~ ^[0-9]+$ ]] && ((NODE >= 1 && NODE <= NODES)) || { echo "kafka.sh: no node $NODE (1..$NODES)" >&2; exit 2; }
  NODE_PORT="$(client_port "$NODE")" NODE_CONTROLLER_PORT="$(controller_port "$NODE")"
  ADVERTISED_PORT="$NODE_PORT"; [[ $NODES == 1 ]] && ADVERTISED_PORT="${TRIALROUTE_KAFKA_ADVERTISED_PORT:-$NODE_PORT}"
  if [[ $NODES == 1 ]]; then DIR="$RUN"; else DIR="$RUN/node-$NODE"; fi
  DATA="$DIR/data" LOG="$DIR/kafka.log" PIDFILE="$DIR/kafka.pid" PROPS="$DIR/server.properties"
  NAME="the broker"; [[ $NODES == 1 ]] || NAME="node $NODE"
}
node 1

fail() {  # fail MESSAGE [LOG]: say what failed and show the end of the log that explains it
  local log="${2:-$LOG}"
  echo "kafka.sh: FAILED: $1" >&2
  if [[ -s $log ]]; then echo "--- last 30 lines of $log:" >&2; tail -n 30 "$log" >&2; fi
  exit 1
}

running() {  # the pid file names a live node started with this checkout's config (not a reused pid)
  [[ -f $PIDFILE ]] || return 1
  local pid; pid="$(<"$PIDFILE")"
  [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $PROPS"
}

check_port() {  # a broker started with another TRIALROUTE_KAFKA_PORT would make `bootstrap` lie
  grep -q "^listeners=$PROTOCOL://127.0.0.1:$NODE_PORT," "$PROPS" \
    || fail "already running with other ports ($(grep '^listeners=' "$PROPS")): stop it first" /dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

kjava() {  # run a Kafka main class or KafkaAdmin.java, logging at error level only
  "$JAVA" -Dlog4j2.configurationFile="$CONF/log4j2.properties" -Dtrialroute.log.level=error \
    -Dtrialroute.admin.config="$ADMIN_PROPS" -cp "$LIBS/*" "$@"
}

kadmin() {  # KafkaAdmin.java: compiled once per machine and version of the file when a JDK is there (the
  # source launcher compiles on every run: seconds of CPU per call, which the fault suite makes often)
  local classes; classes="$(dirname "$LIBS")/admin-$(sha1sum "$CONF/KafkaAdmin.java" | cut -c1-12)"
  local javac="${JAVA_HOME:+$JAVA_HOME/bin/}javac"
  if [[ ! -f $classes/KafkaAdmin.class ]] && command -v "$javac" >/dev/null; then
    local tmp; tmp="$(mktemp -d "$classes.XXXXXX")"
    if "$javac" -nowarn -d "$tmp" -cp "$LIBS/*" "$CONF/KafkaAdmin.java" >/dev/null 2>&1; then
      mv -T "$tmp" "$classes" 2>/dev/null || rm -rf "$tmp"  # another run compiled it meanwhile
    else
      rm -rf "$tmp"
    fi
  fi
  local main=("$CONF/KafkaAdmin.java")
  [[ -f $classes/KafkaAdmin.class ]] && main=(-cp "$classes:$LIBS/*" KafkaAdmin)
  kjava -Dtrialroute.admin.brokers="$NODES" "${main[@]}" "$@"
}

jaas() { echo "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$SCRAM_USER\" password=\"$SCRAM_PASSWORD\";"; }

render() {  # the node's server.properties for this run, and the admin tool's client properties
  mkdir -p "$DIR"
  sed -e "s|@KAFKA_PORT@|$NODE_PORT|g" -e "s|@ADVERTISED_PORT@|$ADVERTISED_PORT|g" -e "s|@CONTROLLER_PORT@|$NODE_CONTROLLER_PORT|g" -e "s|@LOG_DIR@|$DATA|g" \
    -e "s|@NODE_ID@|$NODE|g" -e "s|@VOTERS@|$VOTERS|g" -e "s|@REPLICAS@|$REPLICAS|g" -e "s|@MIN_ISR@|$MIN_ISR|g" \
    "$CONF/server.properties" >"$PROPS"
  : >"$ADMIN_PROPS"
  [[ $PROTOCOL == SASL_SSL ]] || return 0
  [[ -r $SSL_CERT && -r $SSL_KEY && -r $SSL_CA && -n $SCRAM_USER && -n $SCRAM_PASSWORD ]] \
    || fail "SASL_SSL needs TRIALROUTE_KAFKA_SSL_CERT, _SSL_KEY, _SSL_CA (readable PEM files), _USER and _PASSWORD" /dev/null
  # The key and certificate chain in one PEM keystore; the files hold a password: the owner's only.
  (umask 077; cat "$SSL_KEY" "$SSL_CERT" >"$DIR/broker.pem")
  sed -i -e "s|PLAINTEXT://|SASL_SSL://|g" -e "s|^inter.broker.listener.name=.*|inter.broker.listener.name=SASL_SSL|" \
    -e "s|^listener.security.protocol.map=.*|listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT|" \
    "$PROPS"
  chmod 600 "$PROPS" "$ADMIN_PROPS"
  cat >>"$PROPS" <<PROPS
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$(jaas)
ssl.keystore.type=PEM
ssl.keystore.location=$DIR/broker.pem
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
  local id
  if [[ $NODES == 1 ]]; then
    id="$(kjava kafka.tools.StorageTool random-uuid)"
  else  # every node of a cluster carries the same id, made when the first one is formatted
    [[ -s $RUN/cluster.id ]] || kjava kafka.tools.StorageTool random-uuid >"$RUN/cluster.id"
    id="$(<"$RUN/cluster.id")"
  fi
  local scram=()  # SCRAM credentials exist from the start in KRaft: written with the cluster's metadata
  [[ $PROTOCOL == SASL_SSL ]] && scram=(--add-scram "SCRAM-SHA-512=[name=$SCRAM_USER,password=$SCRAM_PASSWORD]")
  kjava kafka.tools.StorageTool format --cluster-id "$id" --config "$PROPS" ${scram[@]+"${scram[@]}"} >"$RUN/format.log" 2>&1 \
    || fail "could not format $DATA" "$RUN/format.log"
}

launch() {  # launch the selected node (not waiting for it); it must not be running
  for p in "$NODE_PORT" "$NODE_CONTROLLER_PORT"; do
    port_open "$p" && fail "port $p is in use by another process (set TRIALROUTE_KAFKA_PORT)" /dev/null
  done
  render
  format
  [[ -f $LOG ]] && mv -f "$LOG" "$LOG.1"  # keep the previous run's log for post-mortems
  # setsid: the broker outlives this script and does not get the terminal's Ctrl-C.
  setsid "$JAVA" -Xms512m -Xmx"$HEAP" -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$CONF/log4j2.properties" -cp "$LIBS/*" kafka.Kafka "$PROPS" \
    >"$LOG" 2>&1 </dev/null &
  echo "$!" >"$PIDFILE"
}

listening() {  # wait until the selected node, just launched, listens for clients
  local pid; pid="$(<"$PIDFILE")"
  local t0=$SECONDS
  until port_open "$NODE_PORT"; do
    # kill -0, not running(): until the forked shell has exec'd java, its command line is this script's.
    kill -0 "$pid" 2>/dev/null || fail "$NAME exited during start-up"
    ((SECONDS - t0 < 90)) || fail "$NAME did not listen on 127.0.0.1:$NODE_PORT within 90 s (it is still running)"
    sleep 0.25
  done
}

start() {
  fetch
  mkdir -p "$RUN"
  local launched=()
  for i in "${IDS[@]}"; do
    node "$i"
    if running; then check_port; else launch; launched+=("$i"); fi
  done
  if ((${#launched[@]} == 0)); then
    if [[ $NODES == 1 ]]; then echo "kafka.sh: already running (pid $(<"$PIDFILE")) on $BOOTSTRAP"
    else echo "kafka.sh: already running on $BOOTSTRAP"; fi
    return 0
  fi
  # A cluster's node listens only once the quorum has a leader, i.e. once most voters run: all are
  # launched before waiting for any.
  for i in "${launched[@]}"; do node "$i"; listening; done
  # An open port is not a ready broker: KafkaAdmin waits until every node answers as a broker, then
  # creates the topics (with the cluster's default.replication.factor).
  local topics=()
  while read -r t; do [[ -z $t || $t == \#* ]] || topics+=("$t" "$t.dlq"); done <"$CONF/topics.txt"
  kadmin ensure "$BOOTSTRAP" 60 6 "${topics[@]}" \
    || fail "the broker did not answer on $BOOTSTRAP, or the topics could not be created (it is still running)"
  if [[ $NODES == 1 ]]; then echo "kafka.sh: running (pid $(<"$PIDFILE")) on $BOOTSTRAP, log $LOG"
  else echo "kafka.sh: $NODES nodes running on $BOOTSTRAP, logs $RUN/node-*/kafka.log"; fi
}

start_node() {  # a cluster's node again (after kill or stop), back in sync before this returns
  node "$1"
  if running; then check_port; echo "kafka.sh: node $NODE already running (pid $(<"$PIDFILE"))"; return 0; fi
  fetch
  launch
  listening
  kadmin replicated "$BOOTSTRAP" 120 "$NODES" \
    || fail "node $NODE did not rejoin, or its replicas did not catch up within 120 s (it is still running)"
  echo "kafka.sh: node $NODE running (pid $(<"$PIDFILE")) on 127.0.0.1:$NODE_PORT, in sync"
}

signal_stop() {  # ask the selected node to shut down cleanly; prints its pid if it was running
  if running; then kill "$(<"$PIDFILE")" && cat "$PIDFILE"; else rm -f "$PIDFILE"; fi
}

reap() {  # reap PID: wait for the selected node (signalled) to exit, killing it after 30 s
  for _ in $(seq 120); do  # a clean shutdown flushes the logs and takes a few seconds
    kill -0 "$1" 2>/dev/null || { rm -f "$PIDFILE"; return 0; }
    sleep 0.25
  done
  echo "kafka.sh: $NAME did not stop within 30 s, killing it" >&2
  kill -9 "$1" || true
  rm -f "$PIDFILE"
}

stop() {
  local pids=() i pid
  # All at once: a cluster's last nodes would otherwise wait for a controller quorum already gone.
  for i in "${IDS[@]}"; do node "$i"; pid="$(signal_stop)"; pids+=("${pid:-}"); done
  local any=""
  for i in "${IDS[@]}"; do
    pid="${pids[$((i - 1))]}"
    [[ -n $pid ]] || continue
    node "$i"; reap "$pid"; any=1
  done
  if [[ -n $any ]]; then echo "kafka.sh: stopped"; else echo "kafka.sh: not running"; fi
}

kill_node() {  # kill -9: the crash the fault suite injects
  node "$1"
  running || fail "node $NODE is not running" /dev/null
  local pid; pid="$(<"$PIDFILE")"
  kill -9 "$pid"
  while running; do sleep 0.1; done  # running(), not kill -0: a zombie nobody reaped yet is dead too
  rm -f "$PIDFILE"
  echo "kafka.sh: node $NODE killed (was pid $pid)"
}

status() {
  local down=0 i
  for i in "${IDS[@]}"; do
    node "$i"
    local which="kafka.sh:"; [[ $NODES == 1 ]] || which="kafka.sh: node $NODE"
    if running; then check_port; echo "$which running (pid $(<"$PIDFILE")) on 127.0.0.1:$NODE_PORT"
    else echo "$which stopped"; down=1; fi
  done
  return $((down ? 3 : 0))
}

any_running() {
  for i in "${IDS[@]}"; do node "$i"; running && return 0; done
  fail "the broker is not running (deploy/local/kafka.sh start)" /dev/null
}

cluster_only() { [[ $NODES != 1 ]] || fail "$1 is for a cluster (TRIALROUTE_KAFKA_NODES=3)" /dev/null; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  topics) any_running; kadmin list "$BOOTSTRAP" ;;
  bootstrap) echo "$BOOTSTRAP" ;;
  libs) fetch >&2 && echo "$LIBS" ;;  # for the Kafka image of scripts/test-deploy.sh
  kill) cluster_only kill; kill_node "${2:?kill NODE_ID}" ;;
  start-node) cluster_only start-node; start_node "${2:?start-node NODE_ID}" ;;
  restart-node)
    cluster_only restart-node; node "${2:?restart-node NODE_ID}"
    pid="$(signal_stop)"; [[ -z $pid ]] || reap "$pid"
    start_node "$2" ;;
  controller) cluster_only controller; any_running; kadmin controller "$BOOTSTRAP" ;;
  *) echo "usage: $0 start|stop|status|topics|bootstrap|libs|kill ID|start-node ID|restart-node ID|controller" >&2; exit 2 ;;
esac
