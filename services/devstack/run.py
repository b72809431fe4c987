"""``trialroute run``: the whole system for a newcomer, with a table of where everything is."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from services.devstack.stack import (
    DEMO_CLINIC,
    DEMO_CLINIC_KEY_FILE,
    DEMO_PASSWORD,
    SERVICES,
    DemoPerson,
    Stack,
    StackConfig,
)

REPO = Path(__file__).resolve().parents[2]
KAFKA_SCRIPT = REPO / "deploy" / "local" / "kafka.sh"


def run_system(run_dir: Path) -> None:
    """Start Kafka (unless one is configured), every service and the mailbox; stop them on Ctrl-C."""
    run_dir.mkdir(parents=True, exist_ok=True)
    started_kafka = False
    config = StackConfig(run_dir=run_dir, clinic_key=True)
    if "KAFKA_BOOTSTRAP_SERVERS" not in os.environ:
        started_kafka = _start_local_kafka()
    config.database_urls = {
        s: os.environ[f"{s.upper()}_DATABASE_URL"]
        for s in SERVICES
        if f"{s.upper()}_DATABASE_URL" in os.environ
    }
    stack = Stack(config)
    try:
        stack.start()
        print(summary(config, stack.credentials, stack.people), flush=True)
        _wait_for_interrupt(stack)
    finally:
        print("\nstopping…", flush=True)
        stack.stop()
        if started_kafka:
            subprocess.run([str(KAFKA_SCRIPT), "stop"], check=False)  # noqa: S603


def _start_local_kafka() -> bool:
    running = subprocess.run([str(KAFKA_SCRIPT), "status"], capture_output=True, check=False)  # noqa: S603
    if running.returncode == 0:
        return False
    subprocess.run([str(KAFKA_SCRIPT), "start"], check=True)  # noqa: S603
    return True


def _wait_for_interrupt(stack: Stack) -> None:
    """Sleep until Ctrl-C or SIGTERM; report a service that dies meanwhile."""
    stopping = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        while not stopping:
            for process in stack.processes.values():
                if not process.alive():
                    print(
                        f"{process.name} stopped; its log: {process.log_path}\n{process.tail(10)}", flush=True
                    )
                    return
            time.sleep(1)
    except KeyboardInterrupt:
        return


def summary(config: StackConfig, credentials: dict[str, str], people: Sequence[DemoPerson] = ()) -> str:
    rows = [
        ("auth (OAuth2 token endpoint, JWKS)", f"{config.url('auth')}/docs"),
        ("intake API docs (clinics)", f"{config.url('intake')}/docs"),
        ("eligibility API docs", f"{config.url('eligibility')}/docs"),
        ("site router API docs (sites, coordinators)", f"{config.url('site_router')}/docs"),
        ("notifier API docs (delivery log)", f"{config.url('notifier')}/docs"),
        ("insights API docs (the recruitment funnel, scope ops)", f"{config.url('insights')}/docs"),
        ("recruitment funnel page (people with the role ops)", f"{config.url('insights')}/insights/"),
        ("site coordinators' portal", f"{config.url('site_router')}/portal/"),
        ("study-site finder", f"{config.url('site_router')}/sites/finder"),
        ("mail preview", config.url("mail_http")),
        ("SMTP", f"127.0.0.1:{config.ports['smtp']}"),
        ("logs", str((config.run_dir / "logs").resolve())),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["", "trialroute is running. Ctrl-C stops everything.", ""]
    lines += [f"  {name.ljust(width)}  {where}" for name, where in rows]
    lines += ["", f"Demo clients (client_id / secret; also in {config.run_dir / 'demo-credentials.json'}):"]
    lines += [f"  {cid.ljust(width)}  {secret}" for cid, secret in credentials.items()]
    if config.clinic_key:
        key_file = config.run_dir / DEMO_CLINIC_KEY_FILE
        lines += [
            f"  {DEMO_CLINIC.ljust(width)}  signs in with its key, as clinics do (SMART Backend Services "
            f"private_key_jwt, ES384): private key in {key_file}"
        ]
    if people:
        lines += [
            "",
            f"Demo people (password {DEMO_PASSWORD!r}; TOTP off in development): sign in at the portal "
            f"{config.url('site_router')}/portal, or see your account at {config.url('auth')}/account",
        ]
        for person in people:
            sites = f" of {', '.join(person.site_codes)}" if person.site_codes else ""
            lines.append(f"  {person.email.ljust(width)}  {person.role}{sites}")
    lines += [
        "",
        "Get a token:  curl -u ops:SECRET -d grant_type=client_credentials -d audience=intake "
        f"{config.url('auth')}/oauth/token",
        f"Try it all:   .venv/bin/trialroute demo   (signs in as {DEMO_CLINIC} with its key)",
        "",
    ]
    return "\n".join(lines)
