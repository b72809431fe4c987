# A stand-in for the apache/kafka image where no registry is reachable (scripts/test-deploy.sh): Apache
# Kafka in KRaft mode from the Maven Central jars deploy/local/kafka.sh fetches, on the local Debian base
# with Debian's Java 17. It reads the same KAFKA_* variables and CLUSTER_ID as apache/kafka, and has its
# /opt/kafka/bin/kafka-broker-api-versions.sh, kafka-storage.sh and kafka-server-start.sh, so
# docker-compose.yml's kafka service runs unchanged: its entrypoint, deploy/compose/kafka/start.sh (the
# SASL_SSL listener, SCRAM users, the `certs` job's certificate), runs on it as on apache/kafka.
# appuser is uid 1000, as in apache/kafka: the `certs` job gives kafka.pem to that uid.
# Context: a directory with libs/ (the jars), log4j2.properties and the kafka-*.sh scripts beside this file.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 1000 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin appuser \
    && install -d -o appuser /var/lib/kafka/data /opt/kafka/bin /opt/kafka/config
COPY libs/ /opt/kafka/libs/
COPY log4j2.properties /opt/kafka/config/log4j2.properties
COPY kafka-entrypoint.sh /opt/kafka/entrypoint.sh
COPY kafka-broker-api-versions.sh kafka-storage.sh kafka-server-start.sh /opt/kafka/bin/
USER appuser
WORKDIR /opt/kafka
ENTRYPOINT ["/opt/kafka/entrypoint.sh"]
