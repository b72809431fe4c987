"""The whole system on one machine: every service its own process, each on its own store.

``trialroute run`` uses it with SQLite files and the default ports; the end-to-end and fault suites use
it with PostgreSQL databases, free ports and a topic prefix of their own.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

from joserfc.jwk import ECKey

from services.auth.registry import ClientExists, create_client, create_key_client, rotate_secret, set_keys
from services.auth.users import seed_user
from services.devstack.processes import ServiceProcess, trialroute_argv
from shared.auth import Scope
from shared.db import Database
from shared.kafka import ensure_topics
from shared.migrations import migrate, service_migrations
from shared.settings import KafkaSettings

SERVICES = ("auth", "intake", "eligibility", "site_router", "notifier", "insights")
DEFAULT_PORTS = {
    "auth": 8000,
    "intake": 8001,
    "eligibility": 8002,
    "site_router": 8003,
    "notifier": 8004,
    "insights": 8005,
    "mail_http": 8025,
    "smtp": 1025,
}
SEED_SITES = Path(__file__).resolve().parent.parent / "site_router" / "seed" / "sites.json"
INSIGHTS_WEB_CLIENT = "insights-web"
"""The ops page's client at the issuer (authorization code + PKCE): people sign in to /insights/."""
DEMO_CLINIC = "demo-clinic"
DEMO_CLINIC_KEY_FILE = "demo-clinic.private-jwk.json"
"""In the run dir: the demo clinic's private key (a JWK), when it signs in with a key."""
DEMO_PASSWORD = "ucart123-demo-password"  # noqa: S105 (a demo's, printed at start-up)
"""Every demo person's password (local system only; TOTP is off there unless AUTH_TOTP_REQUIRED)."""
PORTAL_CLIENTS = {"site_router": "site-portal"}
"""The portal client whose pages each service serves (``WEB_CLIENT_ID``): only the services that have
pages for people get one (add a service here when it does; ``ops-console`` is registered for the others'
``/ops/callback`` already)."""
PAGE_PREFIXES = {"site-portal": "/portal", "ops-console": "/ops"}
"""Where each portal's sign-in routes live in its service (``sign_in_router(WebSignIn(prefix=...))``)."""
PAGE_SERVICES = ("intake", "eligibility", "site_router", "notifier")


@dataclass(frozen=True)
class DemoPerson:
    email: str
    display_name: str
    role: str
    site_codes: tuple[str, ...] = ()


def demo_people(site_codes: list[str]) -> list[DemoPerson]:
    """A coordinator per demo site, and an ops person."""
    people = [
        DemoPerson(
            f"coordinator.{code.lower()}@demo.trialroute.example",
            f"{code} Coordinator",
            "coordinator",
            (code,),
        )
        for code in site_codes
    ]
    return [*people, DemoPerson("ops@demo.trialroute.example", "Ops Demo", "ops")]


@dataclass(frozen=True)
class DemoClient:
    client_id: str
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    clinic_id: str | None = None
    site_code: str | None = None


def demo_clients(site_codes: list[str]) -> list[DemoClient]:
    """A clinic, a coordinator per site, ops, and the notifier's own service client."""
    clients = [
        DemoClient(
            DEMO_CLINIC,
            (Scope.REFERRALS_WRITE, Scope.REFERRALS_READ, Scope.ASSESSMENTS_READ, Scope.WEBHOOKS_MANAGE),
            ("intake", "eligibility", "notifier"),
            clinic_id=DEMO_CLINIC,
        ),
        DemoClient("ops", (Scope.OPS, Scope.SITES_ADMIN), ("notifier", "site_router", "intake", "insights")),
        DemoClient("notifier", (Scope.CONTACT_READ,), ("intake",)),
    ]
    clients += [
        DemoClient(
            f"coordinator-{code.lower()}",
            (Scope.SITE_REFERRALS, Scope.SITE_CONTACT, Scope.ASSESSMENTS_READ),
            ("site_router", "eligibility", "intake"),
            site_code=code,
        )
        for code in site_codes
    ]
    return clients


@dataclass
class StackConfig:
    run_dir: Path = Path(".run")
    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    database_urls: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    with_mailbox: bool = True
    environment: str = "development"
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    """Extra environment per service, e.g. faster retries in tests."""
    clinic_key: bool = False
    """The demo clinic signs in with its own key (SMART Backend Services), kept in the run dir, as a
    clinic should (``trialroute run``); without, it gets a secret like the other demo clients (the
    suites' system, which sign in with secrets)."""

    def database_url(self, service: str) -> str:
        default = f"sqlite+aiosqlite:///{(self.run_dir / 'data' / f'{service}.db').resolve()}"
        return self.database_urls.get(service, default)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"


class Stack:
    """Start, seed, watch and stop the services of one system."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.credentials: dict[str, str] = {}
        self.people: list[DemoPerson] = []
        self.web_secrets: dict[str, str] = {}
        self.processes: dict[str, ServiceProcess] = {}

    def start(self) -> None:
        """Topics, mailbox, auth, demo clients and sites, then the pipeline services and insights."""
        asyncio.run(ensure_topics(self.config.kafka))
        asyncio.run(self._migrate())
        if self.config.with_mailbox:
            self._start(
                "mailbox",
                trialroute_argv(
                    "mailbox",
                    "--smtp-port",
                    str(self.config.ports["smtp"]),
                    "--http-port",
                    str(self.config.ports["mail_http"]),
                    "--directory",
                    str(self.config.run_dir / "mail"),
                ),
                {},
                f"{self.config.url('mail_http')}/healthz",
            )
        self._start_service("auth")
        self.credentials = asyncio.run(self.seed_clients())
        self.people = asyncio.run(self.seed_people())
        self._import_sites()
        for service in ("intake", "eligibility", "site_router", "notifier", "insights"):
            self._start_service(service)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            process.stop()

    def _start_service(self, service: str) -> None:
        argv = trialroute_argv("serve", service, "--port", str(self.config.ports[service]))
        self._start(service, argv, self.service_env(service), f"{self.config.url(service)}/healthz")

    def _start(self, name: str, argv: list[str], env: Mapping[str, str], health: str) -> None:
        process = ServiceProcess(name, argv, env, self.config.run_dir / "logs" / f"{name}.log", health)
        self.processes[name] = process
        process.start()
        process.wait_healthy()

    def service_env(self, service: str) -> dict[str, str]:
        """Everything a service reads, as environment variables: what a deployment would set."""
        c = self.config
        prefix = service.upper() + "_"
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": c.kafka.bootstrap_servers,
            "KAFKA_TOPIC_PREFIX": c.kafka.topic_prefix,
            "OAUTH_ISSUER": c.url("auth"),
            f"{prefix}DATABASE_URL": c.database_url(service),
            f"{prefix}PORT": str(c.ports[service]),
            f"{prefix}ENVIRONMENT": c.environment,
        }
        if service == "auth":
            env["AUTH_ISSUER"] = c.url("auth")
            env["AUTH_WEB_CLIENTS"] = json.dumps(self.web_clients())
        if service in PORTAL_CLIENTS:
            env["WEB_CLIENT_ID"] = PORTAL_CLIENTS[service]
        if service == "insights":  # the ops page signs people in through auth
            env["WEB_CLIENT_ID"] = INSIGHTS_WEB_CLIENT
        if "WEB_CLIENT_ID" in env:
            # every service on 127.0.0.1: cookies do not tell ports apart, so each its own name
            env["WEB_COOKIE_NAME"] = f"trialroute_{service}"
            env["WEB_SESSION_SECRET"] = self.web_secrets.setdefault(service, token_urlsafe(32))
        if service == "notifier":
            env |= {
                "NOTIFIER_CLIENT_ID": "notifier",
                "NOTIFIER_CLIENT_SECRET": self.credentials.get("notifier", ""),
                "NOTIFIER_INTAKE_URL": c.url("intake"),
                "NOTIFIER_PORTAL_URL": f"{c.url('site_router')}/portal",
                "NOTIFIER_SMTP_HOST": "127.0.0.1",
                "NOTIFIER_SMTP_PORT": str(c.ports["smtp"]),
            }
        if service == "site_router":
            env["SITE_ROUTER_RUNTIME_DIR"] = str((c.run_dir / "site_router").resolve())
            env["SITE_ROUTER_INTAKE_URL"] = c.url("intake")  # the portal reads accepted patients' contact
        return env | c.service_env.get(service, {})

    def web_clients(self) -> list[dict[str, Any]]:
        """The portals (public clients, PKCE), each with the exact callback URLs of its pages; only
        those of the services this stack runs (a benchmark may run auth and intake alone)."""
        c = self.config
        clients: list[dict[str, Any]] = []
        for client_id, prefix in PAGE_PREFIXES.items():
            served_by = [
                s for s in PAGE_SERVICES if PORTAL_CLIENTS.get(s, "ops-console") == client_id and s in c.ports
            ]
            if not served_by:
                continue
            clients.append(
                {
                    "client_id": client_id,
                    "redirect_uris": [f"{c.url(s)}{prefix}/callback" for s in served_by],
                    "audiences": [*PAGE_SERVICES],
                    # site:contact: the portal reads an accepted referral's patient contact from intake
                    "scopes": [Scope.SITE_REFERRALS.value, Scope.SITE_CONTACT.value, Scope.OPS.value],
                }
            )
        if "insights" in c.ports:
            clients.append(insights_web_client(c.url("insights")))
        return clients

    async def seed_people(self) -> list[DemoPerson]:
        """The demo people, each with the demo password (the same at every start)."""
        db = Database(self.config.database_url("auth"))
        people = demo_people(site_codes())
        try:
            for person in people:
                await seed_user(
                    db,
                    email=person.email,
                    display_name=person.display_name,
                    role=person.role,
                    site_codes=person.site_codes,
                    password=DEMO_PASSWORD,
                    link_lifetime_s=3600,
                )
        finally:
            await db.dispose()
        return people

    async def _migrate(self) -> None:
        """Every store at its code's revision before anything starts: a deployment's migrate step."""
        for service in SERVICES:
            await migrate(self.config.database_url(service), service_migrations(service))

    async def seed_clients(self) -> dict[str, str]:
        """Register the demo clients (or give them new secrets) and keep the secrets in the run dir;
        the demo clinic's key too, if it signs in with one."""
        db = Database(self.config.database_url("auth"))
        secrets: dict[str, str] = {}
        try:
            for client in demo_clients(site_codes()):
                if client.client_id == DEMO_CLINIC and self.config.clinic_key:
                    await self._seed_key_client(db, client)
                    continue
                try:
                    secrets[client.client_id] = await create_client(
                        db,
                        client.client_id,
                        scopes=client.scopes,
                        audiences=client.audiences,
                        clinic_id=client.clinic_id,
                        site_code=client.site_code,
                    )
                except ClientExists:
                    secrets[client.client_id] = await rotate_secret(db, client.client_id)
        finally:
            await db.dispose()
        path = self.config.run_dir / "demo-credentials.json"
        path.write_text(json.dumps(secrets, indent=2))
        path.chmod(0o600)
        return secrets

    async def _seed_key_client(self, db: Database, client: DemoClient) -> None:
        """The client's key pair (made once, kept in the run dir), its public JWK Set registered."""
        path = self.config.run_dir / DEMO_CLINIC_KEY_FILE
        if path.exists():
            key = ECKey.import_key(json.loads(path.read_text()))
        else:
            key = ECKey.generate_key("P-384", parameters={"alg": "ES384", "use": "sig"}, auto_kid=True)
            path.touch(mode=0o600)
            path.write_text(json.dumps(key.as_dict(private=True)))
        jwks = {"keys": [key.as_dict(private=False)]}
        try:
            await create_key_client(
                db,
                client.client_id,
                scopes=client.scopes,
                audiences=client.audiences,
                clinic_id=client.clinic_id,
                site_code=client.site_code,
                jwks=jwks,
            )
        except ClientExists:
            await set_keys(db, client.client_id, jwks=jwks)

    def _import_sites(self) -> None:
        env = self.service_env("site_router")
        process = ServiceProcess(
            "sites-import",
            trialroute_argv("sites", "import", str(SEED_SITES)),
            env,
            self.config.run_dir / "logs" / "site_router.log",
        )
        process.start()
        assert process.process is not None
        if process.process.wait(timeout=120) != 0:
            raise RuntimeError(f"importing the study sites failed:\n{process.tail()}")


def insights_web_client(insights_url: str) -> dict[str, object]:
    """The ops page's client as auth registers it (``AUTH_WEB_CLIENTS``): its callback, ops only."""
    return {
        "client_id": INSIGHTS_WEB_CLIENT,
        "redirect_uris": [f"{insights_url}/insights/callback"],
        "audiences": ["insights"],
        "scopes": [Scope.OPS.value],
    }


def site_codes() -> list[str]:
    return [site["code"] for site in json.loads(SEED_SITES.read_text())["sites"]]


_handed_out: set[int] = set()
_random = random.SystemRandom()


SERVER_PORT_BLOCKS = (range(25_000, 26_000), range(29_000, 30_000))
"""Where the project's scripts put PostgreSQL and Kafka (25432, 29092, and the test suites' own servers,
clusters and proxies at offsets from them): a service's port is never taken from these, or a broker
started later would find its port held."""


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range and never handed out before by this
    process. A port from ``bind(0)`` comes from the ephemeral range: released, it can be taken by an
    outgoing connection or by another ``bind(0)`` (a test's in-process server) before the service binds
    it, and that other server's ``/healthz`` then passes for the service's."""
    low, high = _below_ephemeral_range()
    for _ in range(1000):
        port = _random.randrange(low, high)
        if port in _handed_out or any(port in block for block in SERVER_PORT_BLOCKS):
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {low}-{high}")


def _below_ephemeral_range(span: int = 10_000) -> tuple[int, int]:
    try:
        first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first = 32768  # Linux's default
    return max(1024, first - span), first
