#!/usr/bin/env bash
# What apache/kafka's script of this name runs; deploy/compose/kafka/start.sh formats the log dir with it.
exec java -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties -Dtrialroute.log.level=error \
  -Xmx256m -cp '/opt/kafka/libs/*' kafka.tools.StorageTool "$@"
