#!/bin/bash
# The compose lab's broker: one KRaft node whose only client listener is SASL_SSL with SCRAM-SHA-512
# (the certificate from the `certs` job; the controller listener stays on the container's loopback).
# Run as the apache/kafka image's entrypoint instead of its own, because SCRAM users exist in KRaft only
# when added at format time (`kafka-storage.sh format --add-scram`): KAFKA_SCRAM_USERS ("name:password
# ..."), and `broker` (KAFKA_BROKER_PASSWORD) for the broker itself and the health check. Users are
# added on the first start only: after changing them, `docker compose down -v`.
# KAFKA_LISTENERS, KAFKA_ADVERTISED_LISTENERS and KAFKA_CONTROLLER_QUORUM_VOTERS, if set, replace the
# addresses below (the local override, deploy/local/docker-compose.local.yml, puts them on loopback ports
# of the host network); the listener names stay SASL_SSL and CONTROLLER.
set -euo pipefail
conf=/tmp/kafka
mkdir -p "$conf"
jaas() { echo "org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$1\" password=\"$2\";"; }
cat >"$conf/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=${KAFKA_CONTROLLER_QUORUM_VOTERS:-1@localhost:9093}
controller.listener.names=CONTROLLER
listeners=${KAFKA_LISTENERS:-SASL_SSL://:9092,CONTROLLER://localhost:9093}
advertised.listeners=${KAFKA_ADVERTISED_LISTENERS:-SASL_SSL://kafka:9092}
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$(jaas broker "$KAFKA_BROKER_PASSWORD")
ssl.keystore.type=PEM
ssl.keystore.location=/certs/kafka.pem
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.crt
ssl.client.auth=none
log.dirs=/var/lib/kafka/data
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
cat >"$conf/client.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$(jaas broker "$KAFKA_BROKER_PASSWORD")
ssl.truststore.type=PEM
ssl.truststore.location=/certs/ca.crt
PROPS
chmod 600 "$conf"/*.properties
scram=(--add-scram "SCRAM-SHA-512=[name=broker,password=$KAFKA_BROKER_PASSWORD]")
for user in $KAFKA_SCRAM_USERS; do
  scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]")
done
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$CLUSTER_ID" \
  --config "$conf/server.properties" "${scram[@]}"
exec /opt/kafka/bin/kafka-server-start.sh "$conf/server.properties"
