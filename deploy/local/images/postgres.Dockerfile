# A stand-in for the postgres:15 image where no registry is reachable (scripts/test-deploy.sh): Debian's
# PostgreSQL 15 on the local Debian base. Like the official image it takes POSTGRES_PASSWORD, PGDATA and
# PGPORT, runs /docker-entrypoint-initdb.d/*.sql once on an empty data directory, and `postgres ...`
# as its command, so docker-compose.yml's postgres service runs unchanged; the .sh init scripts
# (deploy/compose/postgres/require-tls.sh) are sourced as the official image does. The postgres user is
# uid/gid 999, as in the official image: the `certs` job gives postgres.key to that uid, and PostgreSQL
# reads a key only if it owns it.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
# No cluster of Debian's own (/etc/postgresql/15/main): the entrypoint makes the only one, in PGDATA.
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid 999 --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/no-main-cluster.conf \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres /run/postgresql /docker-entrypoint-initdb.d
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER postgres
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
