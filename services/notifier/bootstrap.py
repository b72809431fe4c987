"""Wiring: the notifier's routes, loops and clients, built from its settings.

Roles: ``api`` serves the delivery log and the clinics' webhooks; ``consumer`` runs the consumer loop
AND the dispatchers of emails and webhooks (all
only ever do work that is safe to run in several processes at once); ``relay`` publishes the outbox
(``referral.notified`` and the dispatcher's dead letters).
"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

import shared.app
from services.notifier import SERVICE, api
from services.notifier.config import NotifierSettings
from services.notifier.consumers import handlers
from services.notifier.contacts import ContactsClient
from services.notifier.deps import NotifierState
from services.notifier.dispatcher import Dispatcher
from services.notifier.mail import Mailer, Templates
from services.notifier.migrations import MIGRATIONS
from services.notifier.queries import Queries
from services.notifier.webhooks import WebhookDispatcher, WebhookSender
from shared.app import ALL_ROLES, Check, Hook, Loop, Role, ServiceSpec
from shared.auth import ServiceTokenSource, TokenValidator
from shared.db import Database
from shared.kafka import readiness as kafka_readiness
from shared.messaging import consumer_group, event_loops
from shared.migrations import prepare_store
from shared.readiness import CachedCheck
from shared.tls import client_context, http_client


def load_settings() -> NotifierSettings:
    return NotifierSettings()


def contact_reader(settings: NotifierSettings) -> tuple[ContactsClient, ServiceTokenSource]:
    """Intake's contact API with the notifier's own token; the caller closes both."""
    tokens = ServiceTokenSource(
        settings.oauth,
        settings.client_id,
        settings.client_secret.get_secret_value(),
        settings.intake_audience,
        settings.contact_scopes,
        timeout_s=settings.contact_timeout_s,
        verify=client_context(settings.tls),
    )
    contacts = ContactsClient(
        settings.intake_url, tokens, timeout_s=settings.contact_timeout_s, verify=client_context(settings.tls)
    )
    return contacts, tokens


def build(settings: NotifierSettings, roles: frozenset[Role] = ALL_ROLES) -> ServiceSpec:
    db = Database(settings.database_url)
    http = http_client(settings.tls, timeout=5)
    validator = TokenValidator(settings.oauth, settings.audience or SERVICE, http)
    loops = event_loops(SERVICE, db, settings, roles, handlers(settings.message_id_domain))
    on_stop: list[Hook] = []
    clients = [http]
    checks: dict[str, Check] = {
        "database": db.ping,
        "kafka": kafka_readiness(settings.kafka),
        "issuer": validator.check,
    }
    if "consumer" in roles:
        contacts, tokens = contact_reader(settings)
        mailer = Mailer(settings)
        dispatcher = Dispatcher(
            db,
            settings,
            mailer=mailer,
            templates=Templates(),
            contacts=contacts,
            consumer_name=f"{consumer_group(settings, SERVICE)}-dispatcher",
        )
        sender = WebhookSender(settings)
        webhooks = WebhookDispatcher(
            db, settings, sender, consumer_name=f"{consumer_group(settings, SERVICE)}-webhooks"
        )
        loops += [Loop("dispatcher", dispatcher.run), Loop("webhooks", webhooks.run)]
        checks["smtp"] = CachedCheck(mailer.probe, interval_s=3.0)  # only the process that sends email
        on_stop += [mailer.aclose, contacts.aclose, tokens.aclose, sender.aclose]
        clients += [contacts.http, sender.http]
    return ServiceSpec(
        name=SERVICE,
        title="trialroute notifier",
        description="Emails the site coordinator, the patient and the referrer when a referral is "
        "routed or decided, exactly once each; the delivery log for ops. Delivers every change of a "
        "clinic's referrals to the webhook endpoints it registers (Standard Webhooks signatures).",
        routers=[api.router, api.webhooks_router] if "api" in roles else [],
        loops=loops,
        state=NotifierState(db=db, settings=settings, token_validator=validator, queries=Queries(db)),
        checks=checks,
        on_start=[partial(prepare_store, db, MIGRATIONS, settings)],
        on_stop=[*on_stop, db.dispose, http.aclose],
        http_clients=clients,
        max_body_bytes=settings.max_body_bytes,
    )


def create_app(settings: NotifierSettings | None = None, roles: frozenset[Role] = ALL_ROLES) -> FastAPI:
    return shared.app.create_app(build(settings or load_settings(), roles))
