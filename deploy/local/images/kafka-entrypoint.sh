#!/usr/bin/env bash
# The broker of the Kafka stand-in (kafka.Dockerfile): server.properties from the KAFKA_* variables, as
# apache/kafka reads them (KAFKA_LOG_DIRS -> log.dirs; '__' -> '_', '___' -> '-'), the log dir formatted
# with CLUSTER_ID on the first start, then the broker in the foreground.
set -euo pipefail
PROPS=/tmp/server.properties
: "${CLUSTER_ID:?CLUSTER_ID is required (a base64url UUID)}"
while IFS='=' read -r name value; do
  case $name in
    KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS) ;;  # JVM options, not broker properties
    KAFKA_*)
      key="${name#KAFKA_}" key="${key,,}" key="${key//___/-}" key="${key//__/@}" key="${key//_/.}"
      echo "${key//@/_}=$value" ;;
  esac
done < <(env) >"$PROPS"
LOG4J=(-Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties)
java "${LOG4J[@]}" -Dtrialroute.log.level=error -cp '/opt/kafka/libs/*' kafka.tools.StorageTool \
  format --cluster-id "$CLUSTER_ID" --config "$PROPS" --ignore-formatted
# shellcheck disable=SC2086  # the options are a list, as in apache/kafka
exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
  ${KAFKA_OPTS:-} "${LOG4J[@]}" -cp '/opt/kafka/libs/*' kafka.Kafka "$PROPS"
