"""Webhook delivery: the loop that POSTs each pending delivery to its clinic's endpoint, signed as the
Standard Webhooks specification says (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``, by
the ``standardwebhooks`` library), and records how it went.

Per pass: claim due deliveries (``sending``, under a lease, in a short transaction, as the email
dispatcher does), deliver them concurrently with no transaction open, then record each outcome only
while the claim is still ours. A 2xx answer is ``delivered``; anything else (another status, a
timeout, a refused address) is tried again with exponential backoff until the delivery's retry window
(24 hours by default) is spent, then it is ``failed`` and a ``DeadLetter`` goes to
``referral.status_changed.dlq`` through the outbox, in the transaction that marks it.

Server-side request forgery: an endpoint's host is resolved at each attempt and every address it
resolves to must be public (not loopback, link-local, private ...: ``domain.address_refusal``); the
request then goes to the address that was checked (the URL's host kept in ``Host`` and in TLS's SNI and
certificate check), so a name that resolves differently a moment later (DNS rebinding) cannot redirect
it. Redirects are not followed. Ops may allow private addresses and plain http (tests, local stacks).

At least once, not in order: a receiver may get a delivery twice (a crash after the endpoint answered
and before ``delivered`` commits; a replay), always with the same ``webhook-id``; and a retried delivery
arrives after later ones. Each carries its position in the clinic's change feed (``data.seq``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from opentelemetry.trace import SpanKind
from standardwebhooks import Webhook

from services.notifier import SERVICE, store
from services.notifier.config import NotifierSettings
from services.notifier.domain import DeliveryState, address_refusal, webhook_retry_delay_s
from services.notifier.store import WebhookDelivery, WebhookEndpoint
from shared import tracing
from shared.db import Database
from shared.dead_letters import DeadLetter, FailedWebhook
from shared.events import ReferralStatusChanged, dead_letter_topic
from shared.observability import metrics, redact, referral_context
from shared.outbox import OutboxRecord, wake_relay
from shared.retry import keep_working
from shared.tls import client_context

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class DeliveryFailed(Exception):
    """An attempt that did not get a 2xx; ``status_code`` when the endpoint answered."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True, slots=True)
class Signed:
    """What a delivery sends: its body and the Standard Webhooks headers."""

    body: str
    headers: dict[str, str]


def sign(secret: str, delivery_id: uuid.UUID, body: str, at: datetime) -> Signed:
    """The body and its Standard Webhooks headers (the library signs ``id.timestamp.body``)."""
    msg_id = f"msg_{delivery_id.hex}"
    timestamp = at.astimezone(UTC)
    return Signed(
        body,
        {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, timestamp, body),
            "content-type": "application/json",
            "user-agent": "trialroute-notifier",
        },
    )


class WebhookSender:
    """POSTs one signed delivery to the address its endpoint's host was checked to resolve to."""

    def __init__(self, settings: NotifierSettings, *, resolver: Resolver = resolve) -> None:
        self.settings = settings
        self.resolver = resolver
        # The public roots and TLS_CA_FILE, as every HTTPS client of ours (an endpoint inside the
        # deployment, or a clinic's behind the internal CA, must verify too).
        self.http = httpx.AsyncClient(
            timeout=settings.webhook_timeout_s, follow_redirects=False, verify=client_context(settings.tls)
        )

    async def send(self, url: str, signed: Signed) -> int:
        """The endpoint's status code (2xx); ``DeliveryFailed`` for anything else."""
        target, host_header, sni = await self.target(url)
        headers = {**signed.headers, "host": host_header}
        extensions: dict[str, Any] = {"sni_hostname": sni} if sni else {}
        try:
            request = self.http.build_request(
                "POST", target, content=signed.body.encode(), headers=headers, extensions=extensions
            )
            response = await self.http.send(request, stream=True)
            await response.aclose()  # the status is all that matters; the body is never read
        except httpx.HTTPError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}"[:300]) from exc
        if not 200 <= response.status_code < 300:
            raise DeliveryFailed(f"the endpoint answered {response.status_code}", response.status_code)
        return response.status_code

    async def target(self, url: str) -> tuple[httpx.URL, str, str | None]:
        """The URL to connect to (the host replaced by a checked address), the ``Host`` header, and the
        name TLS must present and verify (``None`` for an address in the URL)."""
        parsed = httpx.URL(url)
        allowed = ("https", "http") if self.settings.webhook_allow_http else ("https",)
        if parsed.scheme not in allowed:
            raise DeliveryFailed(f"refused: {parsed.scheme} URLs are not allowed")
        host = parsed.host
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        literal = _is_address(host)
        try:
            addresses = [host] if literal else await self.resolver(host, port)
        except OSError as exc:
            raise DeliveryFailed(f"could not resolve the endpoint's host: {type(exc).__name__}") from exc
        if not addresses:
            raise DeliveryFailed("the endpoint's host resolves to no address")
        if not self.settings.webhook_allow_private_addresses:
            for address in addresses:
                refusal = address_refusal(address)
                if refusal is not None:
                    raise DeliveryFailed(f"refused: {refusal}")
        sni = None if literal or parsed.scheme != "https" else host
        return parsed.copy_with(host=addresses[0]), parsed.netloc.decode("ascii"), sni

    async def aclose(self) -> None:
        await self.http.aclose()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class WebhookDispatcher:
    """The loop that delivers pending webhooks (run by the ``consumer`` role, beside the emails')."""

    def __init__(
        self,
        db: Database,
        settings: NotifierSettings,
        sender: WebhookSender,
        *,
        consumer_name: str = "trialroute-notifier-webhooks",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.settings = settings
        self.sender = sender
        self.consumer_name = consumer_name
        self.clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; a database outage pauses the loop, it never ends it."""
        await keep_working(
            stop, self.dispatch_once, idle_s=self.settings.dispatch_interval_s, on_failure=_pass_failed
        )

    async def dispatch_once(self) -> int:
        """Claim a batch of due deliveries, send them concurrently, record each outcome; how many."""
        async with self.db.session() as session:
            claimed = await store.claim_deliveries(
                session,
                is_sqlite=self.db.is_sqlite,
                now=self.clock(),
                lease_s=self.settings.webhook_lease_s,
                limit=self.settings.webhook_batch,
            )
        await asyncio.gather(*(self._deliver(delivery, endpoint) for delivery, endpoint in claimed))
        return len(claimed)

    async def _deliver(self, delivery: WebhookDelivery, endpoint: WebhookEndpoint) -> None:
        span = tracing.tracer(SERVICE).start_as_current_span(
            f"webhook {delivery.event_type}",
            context=tracing.context_of(delivery.traceparent),
            kind=SpanKind.PRODUCER,
            attributes={
                "trialroute.referral_id": str(delivery.referral_id),
                "trialroute.webhook_delivery_id": str(delivery.id),
                "trialroute.attempt": delivery.attempts,
            },
        )
        with referral_context(delivery.referral_id), span:
            outcome: int | DeliveryFailed
            try:
                signed = sign(endpoint.secret, delivery.id, delivery.payload, self.clock())
                async with asyncio.timeout(self.settings.webhook_lease_s / 2):
                    outcome = await self.sender.send(endpoint.url, signed)
            except DeliveryFailed as exc:
                outcome = exc
            except TimeoutError:
                outcome = DeliveryFailed("the delivery timed out")
            except Exception as exc:
                log.exception("webhook delivery failed unexpectedly", extra={"delivery": str(delivery.id)})
                outcome = DeliveryFailed(type(exc).__name__)
            await self._record(delivery, outcome)

    async def _record(self, delivery: WebhookDelivery, outcome: int | DeliveryFailed) -> None:
        now = self.clock()
        give_up = False
        if isinstance(outcome, int):
            values: dict[str, Any] = {
                "state": DeliveryState.DELIVERED,
                "last_status_code": outcome,
                "last_error": None,
                "delivered_at": now,
            }
        else:
            delay = webhook_retry_delay_s(
                delivery.attempts, self.settings.webhook_retry_base_s, self.settings.webhook_retry_max_s
            )
            next_at = now + timedelta(seconds=delay)
            window_ends = delivery.window_started_at + timedelta(seconds=self.settings.webhook_retry_window_s)
            give_up = next_at > window_ends
            values = {
                "state": DeliveryState.FAILED if give_up else DeliveryState.PENDING,
                "last_status_code": outcome.status_code,
                "last_error": redact(str(outcome))[:1000],
                "next_attempt_at": next_at,
            }
        try:
            async with self.db.session() as session:
                ours = await store.finish_delivery(session, delivery, values, now)
                if ours and give_up:
                    session.add(self._dead_letter(delivery, values, now))
                    wake_relay(session, SERVICE)
        except Exception as exc:  # the lease runs out and another pass tries again (same webhook-id)
            log.error("could not record a webhook outcome", extra={"error": type(exc).__name__})
            return
        if ours:
            kind = "sent" if isinstance(outcome, int) else "failed" if give_up else "retried"
            metrics.webhooks.labels(SERVICE, delivery.event_type, kind).inc()
            if give_up:
                metrics.dead_letters.labels(SERVICE, ReferralStatusChanged.event_type).inc()
        if not ours:
            log.warning(
                "lease lost before the webhook outcome was recorded", extra={"delivery": str(delivery.id)}
            )
        elif isinstance(outcome, int):
            log.info("webhook delivered", extra={"delivery": str(delivery.id), "status_code": outcome})
        else:
            log.warning(
                "webhook failed" if give_up else "webhook will be retried",
                extra={
                    "delivery": str(delivery.id),
                    "attempts": delivery.attempts,
                    "error": values["last_error"],
                },
            )

    def _dead_letter(self, delivery: WebhookDelivery, values: dict[str, Any], now: datetime) -> OutboxRecord:
        """The delivery's dead letter on ``referral.status_changed.dlq``, committed with ``failed``."""
        source_topic = ReferralStatusChanged.event_type
        letter = DeadLetter.of_value(
            delivery.source.encode(),
            error=f"WebhookDeliveryFailed: {values['last_error']}",
            consumer=self.consumer_name,
            topic=self.settings.kafka.topic(source_topic),
            key=str(delivery.referral_id),
            failed_at=now,
            webhook=FailedWebhook(
                id=str(delivery.id),
                endpoint_id=str(delivery.endpoint_id),
                event_type=delivery.event_type,
                attempts=delivery.attempts,
                last_status_code=values["last_status_code"],
            ),
        )
        return OutboxRecord(
            event_id=uuid.uuid4(),
            topic=dead_letter_topic(source_topic),
            key=str(delivery.referral_id),
            payload=letter.to_bytes().decode(),
        )


def _pass_failed(error: BaseException) -> None:
    log.warning("webhook pass failed, retrying", extra={"error": type(error).__name__})
