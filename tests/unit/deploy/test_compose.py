"""docker-compose.yml: the whole system from one image, checked against the code (Docker is not needed)."""

from __future__ import annotations

import re
from graphlib import TopologicalSorter
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.unit.deploy import facts

pytestmark = pytest.mark.unit

COMPOSE = facts.load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
IMAGE = next(s["image"] for s in SERVICES.values() if "build" in s)
# Containers of the trialroute image, and the infrastructure around them.
APP = {name: s for name, s in SERVICES.items() if s.get("image") == IMAGE}
ONE_SHOT = {name for name, s in APP.items() if s.get("restart") == "no"}
LONG_RUNNING = {name for name, s in SERVICES.items() if name not in ONE_SHOT}
PUBLISHING = {"auth", "intake", "site_router", "insights"}
SCALABLE = {"eligibility", "notifier"}


def _serves(name: str) -> str | None:
    return facts.served_service(APP[name].get("command", []))


SERVED: dict[str, str] = {served: name for name in APP if (served := _serves(name))}


def test_compose_parses_into_services_and_volumes() -> None:
    assert "version" not in COMPOSE, "`version` is obsolete in the Compose specification"
    assert set(SERVICES) >= {"postgres", "kafka", "mailpit", *SERVED.values()}
    for volume in COMPOSE.get("volumes", {}):
        assert any(
            str(v).startswith(f"{volume}:") for s in SERVICES.values() for v in s.get("volumes", [])
        ), f"volume {volume} is not used"


def test_one_image_built_once_from_the_dockerfile() -> None:
    builders = [s["build"] for s in SERVICES.values() if "build" in s]
    assert len(builders) == 1, "several services building one tag race each other"
    assert (facts.ROOT / builders[0]["context"] / builders[0]["dockerfile"]) == facts.DOCKERFILE


def test_every_service_is_served_once() -> None:
    served = [served for name in APP if (served := _serves(name))]
    assert sorted(served) == sorted(facts.SERVICES)


@pytest.mark.parametrize("name", sorted(APP))
def test_commands_are_trialroute_commands(name: str) -> None:
    service = APP[name]
    if "entrypoint" in service:
        # Not trialroute: a script of deploy/compose/, mounted read-only, run by the image's python.
        program, script = service["entrypoint"]
        assert program == "python"
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert (facts.ROOT / mounts[script]).is_file()
        assert mounts[script].startswith("./deploy/compose/")
        return
    facts.check_trialroute_command(service["command"])


@pytest.mark.parametrize("name", sorted(APP))
def test_environment_is_read_by_the_services(name: str) -> None:
    allowed = facts.env_read_by(_serves(name))
    unknown = set(APP[name].get("environment", {})) - allowed
    assert not unknown, f"{name} sets variables no settings class of its service reads: {sorted(unknown)}"


@pytest.mark.parametrize("service", facts.SERVICES)
def test_compose_sets_what_the_devstack_sets(service: str) -> None:
    given = set(APP[SERVED[service]]["environment"]) | set(facts.dockerfile_env())
    assert facts.devstack_env(service) <= given


def test_issuer_is_the_url_the_services_reach_auth_at() -> None:
    auth = APP[SERVED["auth"]]
    assert auth["environment"]["AUTH_ISSUER"] == "https://auth:8000"
    for name, service in APP.items():
        if _serves(name):
            assert service["environment"]["OAUTH_ISSUER"] == auth["environment"]["AUTH_ISSUER"], name
    assert "AUTHLIB_INSECURE_TRANSPORT" not in facts.COMPOSE_FILE.read_text()


def test_every_service_serves_https_with_a_certificate_of_the_certs_job() -> None:
    names = set(
        re.findall(r'^    "(\w+)": ', (facts.ROOT / "deploy/compose/make_certs.py").read_text(), re.M)
    )
    for service, name in SERVED.items():
        env = APP[name]["environment"]
        prefix = facts.settings_class(service).model_config["env_prefix"]
        assert (env[f"{prefix}SSL_CERTFILE"], env[f"{prefix}SSL_KEYFILE"]) == (
            f"/certs/{name}.crt",
            f"/certs/{name}.key",
        )
        assert env["TLS_CA_FILE"] == "/certs/ca.crt"
        assert "certs:/certs:ro" in APP[name]["volumes"]
        assert name in names
        assert "https://localhost:8000/healthz" in " ".join(APP[name]["healthcheck"]["test"])
        for var, value in env.items():
            assert not str(value).startswith("http://"), f"{name}: {var}"
    assert {"kafka", "postgres"} <= names


def test_kafka_is_a_single_kraft_node_the_services_reach_over_sasl_ssl() -> None:
    kafka = SERVICES["kafka"]
    env = kafka["environment"]
    assert re.fullmatch(r"apache/kafka:4\.[\d.]+", kafka["image"])
    start = (facts.ROOT / "deploy/compose/kafka/start.sh").read_text()
    assert "process.roles=broker,controller" in start
    assert "num.partitions=6" in start
    assert "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT" in start
    # The default, kept unless KAFKA_ADVERTISED_LISTENERS is set (only the local override sets it).
    (advertised,) = re.findall(
        r"^advertised.listeners=\$\{KAFKA_ADVERTISED_LISTENERS:-SASL_SSL://(\S+)\}$", start, re.M
    )
    assert "KAFKA_ADVERTISED_LISTENERS" not in env
    users = dict(user.split(":", 1) for user in env["KAFKA_SCRAM_USERS"].split())
    for name, service in APP.items():
        given = service.get("environment", {})
        if "KAFKA_BOOTSTRAP_SERVERS" in given:
            assert given["KAFKA_BOOTSTRAP_SERVERS"] == advertised, name
            assert (given["KAFKA_SECURITY_PROTOCOL"], given["KAFKA_SASL_MECHANISM"]) == (
                "SASL_SSL",
                "SCRAM-SHA-512",
            )
            assert given["KAFKA_CA_FILE"] == "/certs/ca.crt"
            if name != SERVED["auth"]:  # auth uses no Kafka
                assert users[given["KAFKA_USERNAME"]] == given["KAFKA_PASSWORD"], name
    # `trialroute topics` creates the event topics (from the code) before any consumer starts.
    topics = next(name for name, s in APP.items() if s.get("command") == ["topics"])
    for name in SERVED.values():
        if name != SERVED["auth"]:
            assert APP[name]["depends_on"][topics]["condition"] == "service_completed_successfully"


def test_infrastructure_images() -> None:
    assert re.fullmatch(r"postgres:15(\.\d+)?(-\w+)?", SERVICES["postgres"]["image"])
    assert SERVICES["mailpit"]["image"].startswith("axllent/mailpit:")
    notifier = APP[SERVED["notifier"]]["environment"]
    assert (notifier["NOTIFIER_SMTP_HOST"], int(notifier["NOTIFIER_SMTP_PORT"])) == ("mailpit", 1025)


def test_only_the_public_apis_publish_ports_so_the_rest_scale() -> None:
    publishing = {name for name, s in APP.items() if s.get("ports")}
    assert publishing == {SERVED[s] for s in PUBLISHING}
    for name in (SERVED[s] for s in SCALABLE):
        assert "ports" not in APP[name] and "container_name" not in APP[name], name
    assert not any("container_name" in s for s in SERVICES.values())
    for service in facts.SERVICES:
        # Replicas share the default consumer group, trialroute-<service>.
        assert f"{service.upper()}_CONSUMER_GROUP" not in APP[SERVED[service]]["environment"]


def test_start_up_order_waits_for_health_and_completed_jobs() -> None:
    graph = {name: set(s.get("depends_on", {})) for name, s in SERVICES.items()}
    tuple(TopologicalSorter(graph).static_order())  # raises on a cycle
    for name, service in SERVICES.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            expected = "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            assert rule["condition"] == expected, f"{name} -> {dependency}"
            if expected == "service_healthy":
                assert not SERVICES[dependency].get("healthcheck", {}).get("disable"), dependency
    for pipeline in ("intake", "eligibility", "site_router", "notifier"):
        assert {"postgres", "kafka", SERVED["auth"]} <= set(APP[SERVED[pipeline]]["depends_on"])
    jobs = {tuple(APP[name].get("command") or APP[name]["entrypoint"]): name for name in ONE_SHOT}
    assert jobs[("sites", "import")] in APP[SERVED["site_router"]]["depends_on"]
    assert jobs[("python", "/seed/seed_clients.py")] in APP[SERVED["notifier"]]["depends_on"]
    assert "mailpit" in APP[SERVED["notifier"]]["depends_on"]


def test_every_store_is_migrated_before_anything_uses_it() -> None:
    """Services refuse a store behind their code: one job migrates them all, and every service and
    job that opens a store waits for it."""
    jobs = {tuple(APP[name].get("command") or APP[name]["entrypoint"]): name for name in ONE_SHOT}
    migrate = jobs[("migrate",)]
    given = set(APP[migrate]["environment"])
    assert {f"{service.upper()}_DATABASE_URL" for service in facts.SERVICES} <= given
    for service in facts.SERVICES:
        url = APP[migrate]["environment"][f"{service.upper()}_DATABASE_URL"]
        assert url == APP[SERVED[service]]["environment"][f"{service.upper()}_DATABASE_URL"]
        assert APP[SERVED[service]]["depends_on"][migrate]["condition"] == "service_completed_successfully"
    assert migrate in APP[jobs[("sites", "import")]]["depends_on"]


def test_long_running_services_have_health_checks() -> None:
    for name in LONG_RUNNING:
        check = SERVICES[name]["healthcheck"]
        assert check["test"] and not check.get("disable"), name
    for name in SERVED.values():
        assert "/healthz" in " ".join(APP[name]["healthcheck"]["test"])


def test_containers_run_read_only_with_writable_tmp_and_runtime_dir() -> None:
    runtime_dir = facts.dockerfile_env()["SITE_ROUTER_RUNTIME_DIR"]
    (user,) = [
        rest for instruction, rest in facts.dockerfile_stages()[-1].instructions if instruction == "USER"
    ]
    uid, gid = user.split(":")
    for name, service in APP.items():
        assert service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"], name
        mounts = dict(m.partition(":")[::2] for m in service["tmpfs"])
        (runtime_mount,) = [m for m in mounts if runtime_dir.startswith(m + "/")]
        # A tmpfs is root's with mode 755 unless told: the image's user could not write the runtime dir.
        assert set(mounts[runtime_mount].split(",")) >= {f"uid={uid}", f"gid={gid}"}, name


def test_each_service_has_its_own_database_from_the_init_script() -> None:
    sql = facts.POSTGRES_INIT.read_text()
    passwords = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']+)'", sql))
    owners = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+)", sql))
    init = "/docker-entrypoint-initdb.d/"
    assert any(v.endswith(init + facts.POSTGRES_INIT.name + ":ro") for v in SERVICES["postgres"]["volumes"])
    databases = set()
    for name, service in APP.items():
        for var, value in service.get("environment", {}).items():
            if var.endswith("_DATABASE_URL"):
                url = make_url(value)
                assert (url.drivername, url.host, url.port) == ("postgresql+asyncpg", "postgres", 5432)
                assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/certs/ca.crt"}
                assert owners[url.database] == url.username, f"{name}: {var}"
                assert passwords[url.username] == url.password, f"{name}: {var}"
                if _serves(name):
                    databases.add(url.database)
    assert len(databases) == len(facts.SERVICES)


def test_postgres_serves_tls_only_with_the_certs_job_s_certificate() -> None:
    postgres = SERVICES["postgres"]
    command = " ".join(postgres["command"])
    assert "ssl=on" in command
    assert "ssl_cert_file=/certs/postgres.crt" in command and "ssl_key_file=/certs/postgres.key" in command
    assert "certs:/certs:ro" in postgres["volumes"]
    hba = (facts.ROOT / "deploy/compose/postgres/require-tls.sh").read_text()
    assert any(v.endswith("/docker-entrypoint-initdb.d/require-tls.sh:ro") for v in postgres["volumes"])
    assert re.search(r"^hostnossl\s+all\s+all\s+all\s+reject$", hba, re.M)
    assert not re.search(r"^host\s", hba, re.M), "a `host` line would also accept connections without TLS"
