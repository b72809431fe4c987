"""What the deployment files are checked against, read from the code itself: the environment variables
the settings classes read, the ``trialroute`` commands, the event topics; and loaders for the files.

Nothing here is a copy of a list kept elsewhere: a field added to a settings class, or a command added
to the CLI, is known to the tests at once.
"""

from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import typer
import yaml
from pydantic_settings import BaseSettings
from typer.testing import CliRunner

from services.cli import SERVICES, app
from services.devstack.stack import Stack, StackConfig
from shared.settings import KafkaSettings, OAuthSettings, ServiceSettings
from shared.web.signin import WebSignInSettings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S_DIR = ROOT / "deploy" / "k8s"
POSTGRES_INIT = ROOT / "deploy" / "compose" / "postgres" / "init-databases.sql"

# Variables no settings class declares but a library in the image reads: name -> the one service whose
# containers may set it.
LIBRARY_ENV = {
    # authlib refuses token requests over plain HTTP off loopback; TLS is terminated in front of auth.
    "AUTHLIB_INSECURE_TRANSPORT": "auth",
}
# Variables of the Python runtime itself, allowed in the Dockerfile only.
PYTHON_RUNTIME_ENV = {"PATH", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED"}


# --- settings: the environment variables each service reads --------------------------------------------


def env_names(settings: type[BaseSettings]) -> set[str]:
    """The variables a settings class reads: prefix + field name, upper-cased (pydantic-settings)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for name, info in settings.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseSettings):
            continue  # nested settings (kafka, oauth) read variables of their own prefix
        alias = info.validation_alias if isinstance(info.validation_alias, str) else None
        names.add((alias or prefix + name).upper())
    return names


def settings_class(service: str) -> type[ServiceSettings]:
    """The one ``ServiceSettings`` subclass defined in ``services/<service>/config.py``."""
    module = importlib.import_module(f"services.{service}.config")
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value.__module__ == module.__name__
    ]
    assert len(found) == 1, f"services/{service}/config.py: expected one settings class, found {found}"
    return found[0]


@cache
def shared_env() -> frozenset[str]:
    """Read by every service: Kafka and the token issuer; and by a service with pages for people, how
    they sign in (``WEB_``)."""
    return frozenset(env_names(KafkaSettings) | env_names(OAuthSettings) | env_names(WebSignInSettings))


@cache
def service_env(service: str) -> frozenset[str]:
    """Read by one service only (its own prefix)."""
    return frozenset(env_names(settings_class(service)))


def env_read_by(service: str | None) -> set[str]:
    """What a container may set: one service's variables (``serve <service>``), or for a tool that reads
    several services' settings (``sites import``, the seed job) every service's."""
    names = set(shared_env())
    for name in SERVICES if service is None else (service,):
        names |= service_env(name)
        names |= {var for var, owner in LIBRARY_ENV.items() if owner == name}
    return names


def devstack_env(service: str) -> set[str]:
    """What ``Stack.service_env`` sets for a service (the authoritative list), less what a deployment
    leaves at its default: the topic prefix only isolates test runs."""
    names = set(Stack(StackConfig()).service_env(service))
    return names - {"KAFKA_TOPIC_PREFIX"}


# --- the trialroute command line -----------------------------------------------------------------------


def check_trialroute_command(args: list[str]) -> None:
    """Fail unless ``trialroute ARGS`` is a real command given options it has.

    Walks the typer application's command tree, then runs ``<command path> --help`` through it.
    """
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while rest and hasattr(command, "commands") and rest[0] in command.commands:
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    assert path and not hasattr(command, "commands"), f"`trialroute {shlex.join(args)}` is not a command"
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    options = {opt for param in command.params for opt in param.opts}
    for token in rest:
        if token.startswith("-"):
            assert token.split("=")[0] in options, f"`trialroute {shlex.join(path)}` has no {token}"
    if path == ["serve"]:
        assert rest and rest[0] in SERVICES, f"`trialroute serve` needs one of {SERVICES}, not {rest}"


def served_service(args: list[str]) -> str | None:
    """``serve intake ...`` -> ``intake``; None for any other command."""
    return args[1] if args[:1] == ["serve"] and len(args) > 1 else None


# --- files ----------------------------------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def k8s_resource_files() -> list[Path]:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    return [K8S_DIR / path for path in kustomization["resources"]]


def load_k8s() -> list[dict[str, Any]]:
    """Every object the kustomization applies, in order."""
    return [
        doc
        for path in k8s_resource_files()
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_stages() -> list[Stage]:
    """The Dockerfile's build stages, each with its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default
        elif instruction == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 else None))
        else:
            stages[-1].instructions.append((instruction, rest.strip()))
    return stages


def dockerfile_env() -> dict[str, str]:
    """The runtime stage's ENV, as the containers see it."""
    env: dict[str, str] = {}
    for instruction, rest in dockerfile_stages()[-1].instructions:
        if instruction == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env
