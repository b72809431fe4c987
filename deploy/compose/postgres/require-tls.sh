#!/bin/sh
# Run once by the postgres image, on an empty data volume (after init-databases.sql): from the network,
# connections only over TLS (the services connect with sslmode=verify-full, and a client that does not
# ask for TLS is refused rather than served in the clear). The server's certificate is the `certs`
# job's (docker-compose.yml passes ssl=on and the files). The socket inside the container stays as the
# image sets it (the health check uses it).
cat >"$PGDATA/pg_hba.conf" <<'HBA'
local     all all     trust
hostssl   all all all scram-sha-256
hostnossl all all all reject
HBA
