"""deploy/local/docker-compose.local.yml, the override `make test-deploy` starts docker-compose.yml with:
it parses, it is the only local difference (stand-in images, the host network, loopback), and it names
every service the code has. No Docker needed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.unit.deploy import facts

pytestmark = pytest.mark.unit

OVERRIDE_FILE = facts.ROOT / "deploy" / "local" / "docker-compose.local.yml"
SCRIPT = facts.ROOT / "scripts" / "test-deploy.sh"
IMAGES = facts.ROOT / "deploy" / "local" / "images"
VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _with_defaults(text: str) -> str:
    """Compose's ``${VAR:-default}`` substitution, every variable at its default."""

    def default(match: re.Match[str]) -> str:
        assert match.group(2) is not None, f"{match.group(0)} has no default"
        return match.group(2)

    return VARIABLE.sub(default, text)


RAW = OVERRIDE_FILE.read_text()
OVERRIDE: dict[str, dict[str, Any]] = yaml.safe_load(_with_defaults(RAW))["services"]
BASE: dict[str, dict[str, Any]] = facts.load_compose()["services"]
SERVED = {served: name for name, s in BASE.items() if (served := facts.served_service(s.get("command", [])))}


def test_override_parses_and_only_changes_services_of_the_compose_file() -> None:
    assert set(OVERRIDE) <= set(BASE), "the override adds no service of its own"
    assert all(key == "services" or key.startswith("x-") for key in yaml.safe_load(RAW)), "only services"


def _started() -> set[str]:
    """What scripts/test-deploy.sh starts: the services of the project's image and, as compose does,
    everything they depend on (an add-on nothing depends on, such as monitoring, is left out)."""
    image = next(s["image"] for s in BASE.values() if "build" in s)
    todo = [name for name, s in BASE.items() if s.get("image") == image]
    started: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in started:
            started.add(name)
            todo += list(BASE[name].get("depends_on", {}))
    return started


def test_every_container_started_is_on_the_host_network() -> None:
    """No bridge network exists on that engine (dockerd --bridge=none), and none may be made."""
    assert _started() >= {"postgres", "kafka", "mailpit", *SERVED.values()}
    assert _started() <= set(OVERRIDE), f"not in the override: {sorted(_started() - set(OVERRIDE))}"
    for name, service in OVERRIDE.items():
        assert service["network_mode"] == "host", name
        assert "networks" not in service, name


@pytest.mark.parametrize("service", facts.SERVICES)
def test_names_every_service_the_code_has(service: str) -> None:
    """Each of services/cli.py's SERVICES is served by the compose file and moved to a port of its own
    on loopback by the override, with its health check, metrics port and store there too."""
    assert service in SERVED, f"docker-compose.yml serves no {service}"
    name = SERVED[service]
    prefix = service.upper()
    env = OVERRIDE[name]["environment"]
    port = env[f"{prefix}_PORT"]
    assert env[f"{prefix}_HOST"] == "127.0.0.1"
    check = " ".join(OVERRIDE[name]["healthcheck"]["test"])
    assert f"https://127.0.0.1:{port}/healthz" in check and "cafile='/certs/ca.crt'" in check, "over TLS"
    assert f"{prefix}_METRICS_PORT" in env
    url = make_url(env[f"{prefix}_DATABASE_URL"])
    assert (url.host, url.port) == ("127.0.0.1", int(OVERRIDE["postgres"]["environment"]["PGPORT"]))
    base = make_url(BASE[name]["environment"][f"{prefix}_DATABASE_URL"])
    assert (url.username, url.password, url.database) == (base.username, base.password, base.database)
    assert url.query == base.query, "the same TLS settings (sslmode=verify-full, the lab CA)"
    unknown = set(env) - facts.env_read_by(service)
    assert not unknown, f"{name} sets variables no settings class of its service reads: {sorted(unknown)}"


def test_listeners_are_loopback_and_have_distinct_ports() -> None:
    ports = [int(p) for p in re.findall(r"\$\{TRIALROUTE_DEPLOY_\w+_PORT:-(\d+)\}", RAW)]
    variables = dict(re.findall(r"\$\{(TRIALROUTE_DEPLOY_\w+_PORT):-(\d+)\}", RAW))
    assert len(set(variables.values())) == len(variables), f"two listeners share a port: {variables}"
    assert all(1024 < p < 32768 for p in ports)
    kafka = OVERRIDE["kafka"]["environment"]
    for listener in kafka["KAFKA_LISTENERS"].split(","):
        assert listener.split("://")[1].startswith("127.0.0.1:"), listener
    postgres = OVERRIDE["postgres"]["command"]
    assert postgres == [*BASE["postgres"]["command"], "-c", "listen_addresses=127.0.0.1"]  # TLS kept
    assert "0.0.0.0" not in _with_defaults(RAW)


def test_the_script_sets_every_port_variable_of_the_override() -> None:
    script = SCRIPT.read_text()
    for variable in set(re.findall(r"\$\{(TRIALROUTE_DEPLOY_\w+):-", RAW)):
        assert re.search(rf"\b{variable}=", script), f"scripts/test-deploy.sh does not set {variable}"


def test_the_services_reach_each_other_on_loopback() -> None:
    auth = OVERRIDE[SERVED["auth"]]["environment"]
    protocol, kafka = OVERRIDE["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"].split("://")
    assert protocol == "SASL_SSL", "the only client listener of deploy/compose/kafka/start.sh"
    for service in facts.SERVICES:
        env = OVERRIDE[SERVED[service]]["environment"]
        assert env["OAUTH_ISSUER"] == auth["AUTH_ISSUER"] == f"https://127.0.0.1:{auth['AUTH_PORT']}"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == kafka
    notifier = OVERRIDE[SERVED["notifier"]]["environment"]
    mailbox = OVERRIDE["mailpit"]["command"]
    assert str(notifier["NOTIFIER_SMTP_PORT"]) == mailbox[mailbox.index("--smtp-port") + 1]
    intake_port = OVERRIDE[SERVED["intake"]]["environment"]["INTAKE_PORT"]
    assert notifier["NOTIFIER_INTAKE_URL"] == f"https://127.0.0.1:{intake_port}"


def test_urls_people_open_are_the_loopback_ports() -> None:
    """Sign-in and the portal (docs/sign-in.md): the browser is on the host, at the override's ports."""
    auth = OVERRIDE[SERVED["auth"]]["environment"]
    site_router = OVERRIDE[SERVED["site_router"]]["environment"]
    auth_url, portal = f"https://127.0.0.1:{auth['AUTH_PORT']}", site_router["SITE_ROUTER_PUBLIC_URL"]
    assert auth["AUTH_PUBLIC_URL"] == auth_url
    assert portal == f"https://127.0.0.1:{site_router['SITE_ROUTER_PORT']}"
    assert site_router["WEB_AUTHORIZATION_URL"] == f"{auth_url}/oauth/authorize"
    clients = json.loads(auth["AUTH_WEB_CLIENTS"])
    assert clients[0]["redirect_uris"] == [f"{portal}/portal/callback"]
    assert OVERRIDE[SERVED["notifier"]]["environment"]["NOTIFIER_PORTAL_URL"] == f"{portal}/portal"


def test_kafka_stand_in_runs_the_compose_start_script() -> None:
    """deploy/compose/kafka/start.sh (SASL_SSL, SCRAM) calls apache/kafka's scripts: the stand-in has them,
    and the override changes only its addresses, which the start script reads."""
    assert "entrypoint" not in OVERRIDE["kafka"] and "/compose/kafka/start.sh" in BASE["kafka"]["entrypoint"]
    start = (facts.ROOT / "deploy" / "compose" / "kafka" / "start.sh").read_text()
    dockerfile = (IMAGES / "kafka.Dockerfile").read_text()
    for tool in re.findall(r"/opt/kafka/bin/([\w-]+\.sh)", start):
        assert (IMAGES / tool).is_file() and tool in dockerfile and tool in SCRIPT.read_text(), tool
    for variable in OVERRIDE["kafka"]["environment"]:
        assert f"${{{variable}:-" in start, variable
    assert "--command-config /tmp/kafka/client.properties" in OVERRIDE["kafka"]["healthcheck"]["test"][1]


def test_every_store_url_of_the_compose_file_is_moved() -> None:
    for name, service in BASE.items():
        for var in service.get("environment", {}):
            if var.endswith("_DATABASE_URL"):
                assert make_url(OVERRIDE[name]["environment"][var]).host == "127.0.0.1", f"{name}: {var}"


@pytest.mark.parametrize("name", ["postgres", "kafka", "mailpit"])
def test_infrastructure_runs_local_stand_ins_built_by_the_script(name: str) -> None:
    image = OVERRIDE[name]["image"]
    assert re.fullmatch(r"trialroute-\w+:local", image)
    dockerfile = IMAGES / f"{image.split(':')[0].removeprefix('trialroute-')}.Dockerfile"
    assert dockerfile.is_file()
    assert f"-t {image} " in SCRIPT.read_text() and Path(dockerfile).name in SCRIPT.read_text()


def test_mailbox_stand_in_is_a_real_trialroute_command() -> None:
    lines = (IMAGES / "mailbox.Dockerfile").read_text().splitlines()
    entrypoint = next(line for line in lines if line.startswith("ENTRYPOINT"))
    program, *command = json.loads(entrypoint.split(" ", 1)[1])
    assert program == "trialroute"
    facts.check_trialroute_command([*command, *OVERRIDE["mailpit"]["command"]])
