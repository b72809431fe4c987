"""The notifier's rules as pure functions over plain data: no I/O, no clock of their own.

- which notifications an event causes (who is emailed, with which template);
- whether the patient may be emailed, and in which language;
- what the delivery log may keep of an address (masked), the Message-ID of each email;
- when a failed delivery is tried again, and when it is given up.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, get_args
from urllib.parse import urlsplit

from shared.events import (
    OUTCOME_STEPS,
    EventData,
    RecipientRole,
    ReferralInfoRequestOpened,
    ReferralProgressed,
    ReferralRouted,
    ReferralSiteDecided,
)

DEFAULT_LANGUAGE = "en"


class State(StrEnum):
    """A notification's life: pending -> sending -> sent; or skipped; or, out of attempts, failed."""

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"


class Template(StrEnum):
    SITE_NEW_REFERRAL = "site_new_referral"
    PATIENT_ROUTED = "patient_routed"
    REFERRER_ROUTED = "referrer_routed"
    REFERRER_SITE_DECIDED = "referrer_site_decided"
    REFERRER_INFO_REQUESTED = "referrer_info_requested"
    REFERRER_OUTCOME = "referrer_outcome"


@dataclass(frozen=True, slots=True)
class Planned:
    """One email an event causes: to whom (a role, resolved to an address at send time) and which."""

    role: RecipientRole
    template: Template


def plan(data: EventData) -> list[Planned]:
    """The emails an event causes.

    - ``referral.routed``: the site coordinator (act on it), the patient (who will call them; whether
      they may be emailed is known only at send time) and the referrer (status);
    - ``referral.site_decided`` (accepted, declined or closed): the referrer only. The site made the
      decision itself; the patient hears from the site on acceptance, and of the next site through the
      ``referral.routed`` that follows a decline;
    - ``referral.progressed``: the referrer at the site's outcome only (enrolled, screen_failed,
      not_enrolled); the steps before it (contacted, screening booked, consented) are on the clinic's
      timeline, not worth an email each;
    - ``referral.info_request_opened``: the referrer, who is asked for the facts.
    """
    if isinstance(data, ReferralRouted):
        return [
            Planned("site", Template.SITE_NEW_REFERRAL),
            Planned("patient", Template.PATIENT_ROUTED),
            Planned("referrer", Template.REFERRER_ROUTED),
        ]
    if isinstance(data, ReferralSiteDecided):
        return [Planned("referrer", Template.REFERRER_SITE_DECIDED)]
    if isinstance(data, ReferralProgressed):
        return [Planned("referrer", Template.REFERRER_OUTCOME)] if data.step in OUTCOME_STEPS else []
    if isinstance(data, ReferralInfoRequestOpened):
        return [Planned("referrer", Template.REFERRER_INFO_REQUESTED)]
    return []


def needs_contact(role: RecipientRole) -> bool:
    """Patient and referrer addresses are intake's (current after amendments); the site's is in the event."""
    return role != "site"


def patient_skip_reason(consent_to_contact: bool, email: str | None) -> str | None:
    """Why the patient must not be emailed, or ``None`` if they may be."""
    if not consent_to_contact:
        return "the patient did not consent to be contacted"
    if not email or not email.strip():
        return "the patient has no email address"
    return None


def choose_language(preferred: str | None, available: Collection[str]) -> str:
    """The patient's language if a template exists in it (``es-MX`` -> ``es``), else English."""
    if preferred:
        primary = preferred.strip().replace("_", "-").split("-")[0].lower()
        if primary in available:
            return primary
    return DEFAULT_LANGUAGE


def mask_email(address: str) -> str:
    """Enough of an address to recognise it in the delivery log, not enough to use it."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local:
        return "***"
    return f"{local[0]}***@{domain}"


def message_id(source_event_id: uuid.UUID, role: RecipientRole, domain: str = "trialroute.notifier") -> str:
    """The same Message-ID on every attempt of one email, so mail systems can drop a resent copy."""
    digest = hashlib.sha256(f"{source_event_id}:{role}".encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def retry_delay_s(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after the ``attempts``-th failed attempt: base, 2x base, 4x base... capped."""
    return min(base_s * 2.0 ** max(attempts - 1, 0), max_s)


def gives_up(attempts: int, max_attempts: int, *, permanent: bool) -> bool:
    """A permanent error fails at once; a transient one only when the attempts are used up."""
    return permanent or attempts >= max_attempts


# --- webhooks ------------------------------------------------------------------------------------


class DeliveryState(StrEnum):
    """A webhook delivery's life: pending -> sending -> delivered; or back to pending (a later
    attempt); or, its retry window spent, failed (dead-lettered); cancelled when its endpoint is
    deleted. A replay makes a delivered or failed one pending again."""

    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


WebhookEventType = Literal[
    "referral.submitted",
    "referral.amended",
    "referral.withdrawn",
    "referral.screened",
    "referral.routed",
    "referral.waitlisted",
    "referral.unroutable",
    "referral.notified",
    "referral.site_decided",
    "referral.progressed",
]
"""What a delivery's ``type`` can be: the event that put the entry on the referral's timeline."""
WEBHOOK_EVENT_TYPES: tuple[str, ...] = get_args(WebhookEventType)


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_url_refusal(url: str, *, allow_http: bool, allow_private: bool) -> str | None:
    """Why an endpoint URL is refused at registration, or ``None``: https only (http when ops allow
    it), a host, no credentials, and not a private address or local name written in the URL. A host
    name is checked again when delivering, against every address it resolves to (DNS rebinding)."""
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        return "must be an https URL"
    try:
        host, _ = parts.hostname, parts.port
    except ValueError:
        return "has an invalid port"
    if not host:
        return "has no host"
    if parts.username is not None or parts.password is not None:
        return "must not carry credentials"
    if allow_private:
        return None
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return "must not name a local host"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: its addresses are checked at delivery
    return address_refusal(host)


def address_refusal(address: str) -> str | None:
    """Why a webhook must not be delivered to ``address`` (an IP address), or ``None`` when it is a
    public one: never loopback, link-local, private, multicast, reserved or otherwise non-global
    (an IPv4-mapped IPv6 address is judged as the IPv4 address it maps)."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified:
        return f"{ip} is not a public address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_private:
        return f"{ip} is a private address"
    if ip.is_multicast or ip.is_reserved or not ip.is_global:
        return f"{ip} is not a public address"
    return None


def webhook_retry_delay_s(attempts: int, base_s: float, max_s: float) -> float:
    """The wait after the ``attempts``-th failed delivery: base, 2x, 4x ... capped at ``max_s``."""
    return retry_delay_s(attempts, base_s, max_s)
