#!/usr/bin/env bash
# What apache/kafka's script of this name runs; docker-compose.yml's health check calls it.
exec java -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -Dtrialroute.log.level=error \
  -Xmx128m -cp '/opt/kafka/libs/*' org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
