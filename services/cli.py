"""The ``trialroute`` command: serve a service, run the whole system, and the ops and staff tools.

Every process of the system starts here (a service, the supervisor, the mailbox), so this module and the
command groups it mounts import only typer at the top: each command imports what it uses when it runs,
and a process holds only its own role's libraries (the site router's pandas, FastAPI in the services).
"""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from services.auth.cli import app as clients_app
from services.auth.cli import users_app
from services.eligibility.cli import app as screen_app
from services.site_router.cli import app as sites_app

if TYPE_CHECKING:
    from shared.app import Role
    from shared.migrations import Migrations

SERVICES = ("auth", "intake", "eligibility", "site_router", "notifier", "insights")

app = typer.Typer(
    help="trialroute: referrals to the UCART123 trial, from clinic to study site.", no_args_is_help=True
)
app.add_typer(screen_app)
app.add_typer(clients_app, name="clients", help="OAuth2 clients and signing keys (auth service).")
app.add_typer(sites_app, name="sites", help="Study sites (site router).")
app.add_typer(users_app, name="users", help="People's accounts: coordinators and ops (auth service).")
dead_letters_app = typer.Typer(help="Dead letters: records no consumer could handle.", no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"one of: {', '.join(SERVICES)}")],
    role: Annotated[
        list[str] | None, typer.Option(help="api, consumer, relay or all (repeatable); default all")
    ] = None,
    host: Annotated[str | None, typer.Option(help="default: the service's setting")] = None,
    port: Annotated[int | None, typer.Option(help="default: the service's setting")] = None,
) -> None:
    """Run one service process playing the given roles (how ops scale one part)."""
    from shared.app import serve as serve_app
    from shared.observability import configure_logging
    from shared.tls import server_options

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    roles = _roles(role or ["all"])
    bootstrap = importlib.import_module(f"services.{service}.bootstrap")
    settings = bootstrap.load_settings()
    configure_logging(service)
    serve_app(
        bootstrap.create_app(settings, roles),
        host or settings.host,
        port or settings.port,
        server_options(settings),
    )


def _roles(values: list[str]) -> frozenset[Role]:
    from shared.app import ALL_ROLES

    if "all" in values:
        return ALL_ROLES
    unknown = set(values) - set(ALL_ROLES)
    if unknown:
        raise typer.BadParameter(f"unknown role(s) {sorted(unknown)}; use api, consumer, relay or all")
    return frozenset(values)  # type: ignore[arg-type]


def _migrations(service: str) -> tuple[Migrations, str]:
    """A service's migrations and its store's URL (from its settings, as the service reads them)."""
    from shared.migrations import service_migrations

    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {', '.join(SERVICES)}")
    migrations = service_migrations(service)
    settings = importlib.import_module(f"services.{service}.bootstrap").load_settings()
    return migrations, settings.database_url


@app.command()
def migrate(
    service: Annotated[
        str | None, typer.Argument(help=f"one of: {', '.join(SERVICES)}; default every one")
    ] = None,
    to: Annotated[str, typer.Option(help="the revision to reach (an older one downgrades)")] = "head",
    check: Annotated[
        bool, typer.Option("--check", help="change nothing: report each store's revision, fail if behind")
    ] = False,
) -> None:
    """Bring each service's store (its <SERVICE>_DATABASE_URL) to the code's revision: a deploy step,
    run before the new version starts (services refuse a store behind or ahead of their code)."""
    from shared.migrations import current_revision
    from shared.migrations import migrate as run_migrations

    behind = False
    for name in [service] if service else SERVICES:
        migrations, url = _migrations(name)
        if check:
            revisions = asyncio.run(current_revision(url, migrations))
            head = migrations.head()
            behind |= revisions != (head,)
            typer.echo(f"{name}: at {', '.join(revisions) or 'no revision'}, code needs {head}")
            continue
        revisions = asyncio.run(run_migrations(url, migrations, to))
        typer.echo(f"{name}: at {', '.join(revisions) or 'base (no tables)'}")
    if behind:
        raise typer.Exit(1)


@app.command()
def revision(
    service: Annotated[str, typer.Argument(help=f"one of: {', '.join(SERVICES)}")],
    message: Annotated[str, typer.Argument(help='what the revision changes, e.g. "add webhooks"')],
) -> None:
    """Write the service's next revision from its models (scripts/revision.sh; see docs/migrations.md)."""
    from shared.migrations import new_revision

    migrations, _ = _migrations(service)
    path = asyncio.run(new_revision(migrations, message))
    typer.echo(f"wrote {path}: review it (renames, data moves, defaults), then commit it")


@app.command()
def topics() -> None:
    """Create every event topic and its dead-letter topic (idempotent; see docs/events.md)."""
    from shared.kafka import ensure_topics
    from shared.settings import KafkaSettings

    asyncio.run(ensure_topics(KafkaSettings()))
    typer.echo("topics ready")


@dead_letters_app.command("list")
def dead_letters_list(topic: Annotated[str, typer.Argument(help="e.g. referral.submitted")]) -> None:
    """Print each dead letter of TOPIC as one JSON line (error, consumer, partition, offset)."""
    from shared.dead_letters import list_dead_letters
    from shared.settings import KafkaSettings

    for letter in asyncio.run(list_dead_letters(KafkaSettings(), topic)):
        typer.echo(letter.model_dump_json())


@dead_letters_app.command("replay")
def dead_letters_replay(
    topic: Annotated[str, typer.Argument(help="e.g. referral.submitted")],
    offset: Annotated[
        list[int] | None, typer.Option(help="dead-letter offsets to replay; default all")
    ] = None,
) -> None:
    """Publish dead letters of TOPIC again to the topic they came from (consumers skip handled ones)."""
    from shared.dead_letters import list_dead_letters, replay
    from shared.settings import KafkaSettings

    kafka = KafkaSettings()
    letters = asyncio.run(list_dead_letters(kafka, topic))
    if offset:
        letters = [x for x in letters if x.dlq_offset in set(offset)]
    typer.echo(f"replayed {asyncio.run(replay(kafka, letters))} record(s)")


@app.command()
def run(
    run_dir: Annotated[Path, typer.Option(help="data, logs and mail of this run")] = Path(".run"),
) -> None:
    """Run the whole system: Kafka, the mailbox and every service as its own process."""
    from services.devstack.run import run_system

    run_system(run_dir)


@app.command()
def demo(
    intake_url: str = "http://127.0.0.1:8001",
    auth_url: str = "http://127.0.0.1:8000",
    credentials: Annotated[Path, typer.Option(help="written by `trialroute run`")] = Path(
        ".run/demo-credentials.json"
    ),
    portal_url: str = "http://127.0.0.1:8003/portal/",
) -> None:
    """Against the running system: submit sample referrals as a clinic and watch them go through; the
    routed ones stay in their sites' queues, for the demo coordinators to work in the portal."""
    from services.devstack.demo import run_demo

    raise typer.Exit(run_demo(intake_url, auth_url, credentials, portal_url=portal_url))


@app.command()
def mailbox(
    smtp_port: int = 1025,
    http_port: int = 8025,
    directory: Annotated[Path, typer.Option(help="where messages are kept")] = Path(".run/mail"),
) -> None:
    """A local SMTP server that keeps every message, with a web page to read them."""
    from services.devstack.mailbox import run_mailbox

    asyncio.run(run_mailbox(directory, smtp_port, http_port))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
