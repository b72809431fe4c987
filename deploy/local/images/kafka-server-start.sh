#!/usr/bin/env bash
# What apache/kafka's script of this name runs; deploy/compose/kafka/start.sh starts the broker with it.
# shellcheck disable=SC2086  # the options are a list, as in apache/kafka
exec java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g} -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
  ${KAFKA_OPTS:-} -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -cp '/opt/kafka/libs/*' \
  kafka.Kafka "$@"
