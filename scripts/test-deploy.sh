#!/usr/bin/env bash
# `make test-deploy`: build the image, start the compose stack, run the smoke test against it, stop it.
# For a machine whose Docker engine reaches no image registry (deploy/README.md, "The image, tested"):
#   1. installs what is missing (Debian's docker.io, docker-compose, debootstrap) and starts dockerd with
#      --iptables=false --bridge=none if none answers (and stops it at the end, only if it started it);
#   2. builds the local base image by debootstrap (deploy/local/images/base.sh; once, cached), the
#      wheelhouse .wheels/ from the hashed lock files, the project's image from deploy/Dockerfile on that
#      base with no index, and the stand-ins for Kafka, PostgreSQL and Mailpit (deploy/local/images/);
#   3. starts docker-compose.yml with deploy/local/docker-compose.local.yml (the stand-ins, the host
#      network, loopback only) as a project of its own, from empty volumes, and waits until every
#      service is healthy and every one-shot job has succeeded;
#   4. runs tests/deploy (a referral from token to e-mails) against the published ports, over HTTPS
#      trusting the lab CA (ca.crt, copied out of the stack's certs volume);
#   5. stops the stack and removes its volumes; on any failure, prints every container's log first.
# Exits non-zero on any failure. Never part of `make test` (minutes of image builds; it is for ops).
# Usage: scripts/test-deploy.sh
# Env: TRIALROUTE_DEPLOY_PORT_BASE (every port of the stack is base + 0..26, all on 127.0.0.1; default
#        the first of 26400, 26500, ... 26800 whose ports are all free),
#      TRIALROUTE_DEPLOY_PROJECT (trialroute-deploy-test: the compose project, apart from a lab stack),
#      TRIALROUTE_DEPLOY_KEEP=1 (leave the stack running afterwards, to look at it),
#      TRIALROUTE_BASE_IMAGE (trialroute-base:bookworm), TRIALROUTE_DEPLOY_TIMEOUT_S (600: start-up).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
RUN="$ROOT/.run/deploy"
WHEELS="$ROOT/.wheels"
BASE_IMAGE="${TRIALROUTE_BASE_IMAGE:-trialroute-base:bookworm}"
APP_IMAGE=trialroute:local  # docker-compose.yml's image for every trialroute service
PROJECT="${TRIALROUTE_DEPLOY_PROJECT:-trialroute-deploy-test}"
TIMEOUT_S="${TRIALROUTE_DEPLOY_TIMEOUT_S:-600}"
OVERRIDE=deploy/local/docker-compose.local.yml
export DOCKER_BUILDKIT=0  # the classic builder: BuildKit would fetch the Dockerfile frontend from a registry

set_ports() {  # set_ports BASE: the ports of deploy/local/docker-compose.local.yml (its defaults: 26400)
  base=$1
  export TRIALROUTE_DEPLOY_PG_PORT=$((base)) \
    TRIALROUTE_DEPLOY_KAFKA_PORT=$((base + 1)) TRIALROUTE_DEPLOY_KAFKA_CONTROLLER_PORT=$((base + 2)) \
    TRIALROUTE_DEPLOY_AUTH_PORT=$((base + 10)) TRIALROUTE_DEPLOY_INTAKE_PORT=$((base + 11)) \
    TRIALROUTE_DEPLOY_ELIGIBILITY_PORT=$((base + 12)) TRIALROUTE_DEPLOY_SITE_ROUTER_PORT=$((base + 13)) \
    TRIALROUTE_DEPLOY_NOTIFIER_PORT=$((base + 14)) TRIALROUTE_DEPLOY_INSIGHTS_PORT=$((base + 15)) \
    TRIALROUTE_DEPLOY_AUTH_METRICS_PORT=$((base + 20)) TRIALROUTE_DEPLOY_INTAKE_METRICS_PORT=$((base + 21)) \
    TRIALROUTE_DEPLOY_ELIGIBILITY_METRICS_PORT=$((base + 22)) \
    TRIALROUTE_DEPLOY_SITE_ROUTER_METRICS_PORT=$((base + 23)) \
    TRIALROUTE_DEPLOY_NOTIFIER_METRICS_PORT=$((base + 24)) \
    TRIALROUTE_DEPLOY_SMTP_PORT=$((base + 25)) TRIALROUTE_DEPLOY_MAIL_PORT=$((base + 26)) \
    TRIALROUTE_DEPLOY_INSIGHTS_METRICS_PORT=$((base + 27))
}

ports_in_use() {  # the stack's ports that something already listens on
  local var
  for var in "${!TRIALROUTE_DEPLOY_@}"; do
    [[ $var == *_PORT ]] && port_open "${!var}" && echo "${!var} ($var)"
  done
  return 0
}

choose_ports() {  # TRIALROUTE_DEPLOY_PORT_BASE if set, else the first of a few bases that is all free
  local candidate busy
  for candidate in ${TRIALROUTE_DEPLOY_PORT_BASE:-26400 26500 26600 26700 26800}; do
    set_ports "$candidate"
    busy="$(ports_in_use)"
    [[ -z $busy ]] && return 0
    log "ports of base $candidate in use: $(echo $busy)"
  done
  fail "no free ports: set TRIALROUTE_DEPLOY_PORT_BASE (the stack uses it through +27)"
}

STARTED=$SECONDS
DOCKERD_PID=""
STACK_UP=0
COMPOSE=()

log() { echo "test-deploy: [$((SECONDS - STARTED))s] $*"; }
fail() { echo "test-deploy: FAILED: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_missing() {  # Debian's packages, as scripts/install-chromium.sh installs Chromium
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing+=(docker-compose)
  ((${#missing[@]})) || return 0
  ((EUID == 0)) || fail "missing ${missing[*]}: run as root, or apt-get install ${missing[*]}"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >"$RUN/apt.log" 2>&1 && apt-get install -y -q --no-install-recommends "${missing[@]}" \
    >>"$RUN/apt.log" 2>&1 || { tail -n 20 "$RUN/apt.log" >&2; fail "apt-get install ${missing[*]}"; }
}

start_docker() {  # an engine that answers is used as it is; otherwise one of our own, stopped at the end
  docker info >/dev/null 2>&1 && return 0
  log "starting dockerd (no bridge, no iptables: containers use the host network; log $RUN/dockerd.log)"
  setsid dockerd --iptables=false --bridge=none >"$RUN/dockerd.log" 2>&1 </dev/null &
  DOCKERD_PID=$!
  local t0=$SECONDS
  until docker info >/dev/null 2>&1; do
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -n 20 "$RUN/dockerd.log" >&2; fail "dockerd exited"; }
    ((SECONDS - t0 < 60)) || fail "dockerd did not answer within 60 s (log $RUN/dockerd.log)"
    sleep 0.5
  done
}

stop_docker() {
  [[ -n $DOCKERD_PID ]] || return 0
  log "stopping the dockerd this script started (pid $DOCKERD_PID)"
  kill "$DOCKERD_PID" 2>/dev/null || return 0
  for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || return 0; sleep 0.5; done
  kill -9 "$DOCKERD_PID" 2>/dev/null || true
}

compose_command() {  # the compose plugin if there is one, else Debian's docker-compose 1.x
  # The stack runs from a copy of docker-compose.yml less what cannot apply on the host network: the
  # published `ports` (Docker refuses them there; the override gives every listener a loopback port of
  # its own instead; an override can add to a list but not empty it) and the top-level `name:`, which
  # compose 1.x refuses (-p names the project). Relative paths stay the repository root's.
  # It also lists the services to start: those of the project's image (compose adds what they depend
  # on), so that add-ons no trialroute service needs (monitoring, say) are not pulled from a registry.
  .venv/bin/python - docker-compose.yml "$RUN/docker-compose.yml" "$APP_IMAGE" >"$RUN/services.txt" <<'PY'
import sys

import yaml

source, target, image = sys.argv[1:]
with open(source) as f:
    compose = yaml.safe_load(f)
compose.pop("name", None)
for service in compose["services"].values():
    service.pop("ports", None)
with open(target, "w") as f:
    f.write(f"# Generated by scripts/test-deploy.sh from {source}: no `name`, no `ports`.\n")
    yaml.safe_dump(compose, f, sort_keys=False)
print(*(name for name, service in compose["services"].items() if service.get("image") == image))
PY
  local files=(--project-directory "$ROOT" -p "$PROJECT" -f "$RUN/docker-compose.yml" -f "$OVERRIDE")
  if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose "${files[@]}"); else COMPOSE=(docker-compose "${files[@]}"); fi
}

build() {  # build LOG docker-build-args...: quiet unless it fails
  local out="$RUN/build-$1.log"; shift
  nice docker build "$@" >"$out" 2>&1 || { tail -n 40 "$out" >&2; fail "docker build $* (log $out)"; }
}

link_tree() { rm -rf "$2" && mkdir -p "$(dirname "$2")" && { cp -al "$1" "$2" 2>/dev/null || cp -a "$1" "$2"; }; }

build_images() {
  deploy/local/images/base.sh "$BASE_IMAGE"
  scripts/bootstrap.sh  # .venv: pip for the wheelhouse, pytest for the smoke test
  local stamp="$WHEELS/.locks.sha1" want  # again only when a lock file changed
  want="$(cat requirements/local.txt requirements/build.txt | sha1sum | cut -c1-40)"
  if [[ $(cat "$stamp" 2>/dev/null) != "$want" ]]; then
    log "wheelhouse $WHEELS (runtime, local and build lock files, hash-checked)"
    nice .venv/bin/python -m pip wheel -q --disable-pip-version-check --require-hashes --only-binary=:all: \
      -r requirements/local.txt -r requirements/build.txt -w "$WHEELS" >"$RUN/wheels.log" 2>&1 \
      || { tail -n 20 "$RUN/wheels.log" >&2; fail "pip wheel (log $RUN/wheels.log)"; }
    echo "$want" >"$stamp"
  fi
  log "image $APP_IMAGE (deploy/Dockerfile on $BASE_IMAGE, no index)"
  build app -f deploy/Dockerfile --build-arg PYTHON_IMAGE="$BASE_IMAGE" --build-arg PIP_NO_INDEX=1 \
    -t "$APP_IMAGE" .
  # The stand-ins install Debian's packages at build time, through the host's network.
  log "stand-in trialroute-postgres:local (Debian's PostgreSQL 15)"
  build postgres --network host -f deploy/local/images/postgres.Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -t trialroute-postgres:local deploy/local/images
  log "stand-in trialroute-kafka:local (Kafka's jars from Maven Central, Debian's Java 17)"
  local ctx="$RUN/kafka-context" libs
  libs="$(deploy/local/kafka.sh libs)"
  link_tree "$libs" "$ctx/libs"
  cp deploy/local/images/kafka-entrypoint.sh deploy/local/images/kafka-broker-api-versions.sh \
    deploy/local/images/kafka-storage.sh deploy/local/images/kafka-server-start.sh \
    deploy/kafka/log4j2.properties "$ctx/"
  build kafka --network host -f deploy/local/images/kafka.Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -t trialroute-kafka:local "$ctx"
  log "stand-in trialroute-mailbox:local (the project's mailbox, \`trialroute mailbox\`)"
  ctx="$RUN/mailbox-context"
  link_tree "$WHEELS" "$ctx/wheels"
  cp requirements/local.txt "$ctx/"
  build mailbox -f deploy/local/images/mailbox.Dockerfile --build-arg APP_IMAGE="$APP_IMAGE" \
    -t trialroute-mailbox:local "$ctx"
}

containers() { "${COMPOSE[@]}" ps -q 2>/dev/null; }

wait_ready() {  # every container running and healthy, or a one-shot job exited 0
  # "unhealthy" is only waited on: on a loaded machine a slow start (the site router loads its postal
  # code tables) outlasts the health check's start period, and the next passing check clears it.
  local t0=$SECONDS
  while :; do
    local pending=() state bad=""
    while read -r state; do
      [[ -z $state ]] && continue
      # name status health exitcode restart-policy
      read -r name status health code policy <<<"$state"
      if [[ $status == exited && $policy == no ]]; then
        [[ $code == 0 ]] || bad+=" ${name#/} (exited $code)"
      elif [[ $status == running && $health == healthy ]]; then
        :
      elif [[ $status != running && $status != created ]]; then
        bad+=" ${name#/} ($status, exit code $code)"
      else
        pending+=("${name#/} ($health)")
      fi
    done < <(containers | xargs -r docker inspect -f \
      '{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}} {{.HostConfig.RestartPolicy.Name}}')
    [[ -z $bad ]] || fail "not started:$bad"
    ((${#pending[@]})) || return 0
    ((SECONDS - t0 < TIMEOUT_S)) || fail "not ready within ${TIMEOUT_S}s: ${pending[*]}"
    sleep 3
  done
}

clinic_secret() {  # the demo clinic's secret, as seed-clients printed it ("<client>\t<secret>")
  "${COMPOSE[@]}" logs --no-color seed-clients | sed 's/^[^|]*| //' \
    | awk -F'\t' '$1 == "demo-clinic" { secret = $2 } END { print secret }'
}

finish() {
  local rc=$?
  set +e
  if ((STACK_UP)); then
    if ((rc != 0)); then
      echo "test-deploy: --- the containers' logs ---" >&2
      "${COMPOSE[@]}" ps >&2
      "${COMPOSE[@]}" logs --no-color --tail=200 >&2
    fi
    if [[ ${TRIALROUTE_DEPLOY_KEEP:-0} == 1 ]]; then
      log "left running (TRIALROUTE_DEPLOY_KEEP=1): ${COMPOSE[*]} down -v"
      DOCKERD_PID=""
    else
      log "stopping the stack"
      "${COMPOSE[@]}" down -v --remove-orphans >"$RUN/down.log" 2>&1 || tail -n 20 "$RUN/down.log" >&2
    fi
  fi
  stop_docker
  if ((rc == 0)); then log "passed in $((SECONDS - STARTED))s"; else echo "test-deploy: FAILED after $((SECONDS - STARTED))s" >&2; fi
  exit "$rc"
}

mkdir -p "$RUN"
trap finish EXIT
trap 'exit 130' INT  # so that finish sees a failure, cleans up and says so
trap 'exit 143' TERM
install_missing
start_docker
build_images
compose_command

"${COMPOSE[@]}" down -v --remove-orphans >"$RUN/down.log" 2>&1 || true  # a previous run's leftovers
choose_ports
log "starting the stack (project $PROJECT, ports ${base}-$((base + 27)) on 127.0.0.1)"
STACK_UP=1
# Compose stops starting services when a dependency is "unhealthy", which on a loaded machine may only
# be a slow start (the health check's start period is for a normal one): then `up` again, until the
# deadline; any other failure of `up` is final.
t0=$SECONDS
read -ra services <"$RUN/services.txt"
until "${COMPOSE[@]}" up -d --no-build "${services[@]}" >"$RUN/up.log" 2>&1; do
  grep -q "is unhealthy" "$RUN/up.log" || { cat "$RUN/up.log" >&2; fail "compose up"; }
  ((SECONDS - t0 < TIMEOUT_S)) || { cat "$RUN/up.log" >&2; fail "compose up: not healthy within ${TIMEOUT_S}s"; }
  log "$(grep -m1 "is unhealthy" "$RUN/up.log") (starting slowly?): up again in 10 s"
  sleep 10
done
wait_ready
log "every service healthy; running the smoke test (tests/deploy)"

secret="$(clinic_secret)"
[[ -n $secret ]] || fail "seed-clients printed no secret for demo-clinic"
# The services serve HTTPS with the `certs` job's certificates: the smoke test trusts that lab CA, read
# out of the stack's certs volume (no network: the engine has no bridge).
docker run --rm --network none --entrypoint cat -v "${PROJECT}_certs:/certs:ro" "$APP_IMAGE" /certs/ca.crt \
  >"$RUN/ca.crt" || fail "could not read ca.crt from the volume ${PROJECT}_certs"
TRIALROUTE_DEPLOY_SMOKE=1 TRIALROUTE_DEPLOY_CLINIC_SECRET="$secret" TRIALROUTE_DEPLOY_CA_FILE="$RUN/ca.crt" \
  TRIALROUTE_DEPLOY_AUTH_URL="https://127.0.0.1:$TRIALROUTE_DEPLOY_AUTH_PORT" \
  TRIALROUTE_DEPLOY_INTAKE_URL="https://127.0.0.1:$TRIALROUTE_DEPLOY_INTAKE_PORT" \
  TRIALROUTE_DEPLOY_SITE_ROUTER_URL="https://127.0.0.1:$TRIALROUTE_DEPLOY_SITE_ROUTER_PORT" \
  TRIALROUTE_DEPLOY_MAIL_URL="http://127.0.0.1:$TRIALROUTE_DEPLOY_MAIL_PORT" \
  nice .venv/bin/pytest tests/deploy -m deploy -p no:cacheprovider -q
