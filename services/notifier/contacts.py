"""Intake's contact API, called with the notifier's own client-credentials token.

Contact details are read at send time, used for one email and dropped: the notifier never stores them.
Every failure here is transient for the notifier (intake down, a token refused until an operator fixes
the client's scopes): the notification is tried again later, never lost.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Collection

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from services.notifier.mail import DeliveryError
from shared.auth import ServiceTokenError, ServiceTokenSource


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class PatientContact(_Contract):
    given_name: str
    family_name: str
    email: str | None = None
    preferred_language: str | None = None
    consent_to_contact: bool


class ReferrerContact(_Contract):
    name: str
    email: str


class Contact(_Contract):
    """One item of ``GET /internal/v1/contacts`` on intake (scope ``contact:read``)."""

    referral_id: uuid.UUID
    patient: PatientContact
    referrer: ReferrerContact

    def __repr__(self) -> str:  # never let a stray log line print a patient's identity
        return f"Contact(referral_id={self.referral_id})"

    __str__ = __repr__


class _ContactList(_Contract):
    items: list[Contact]


MAX_PER_READ = 100
"""Intake's limit of referrals per read."""


class ContactsClient:
    def __init__(
        self,
        base_url: str,
        tokens: ServiceTokenSource,
        *,
        timeout_s: float,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.tokens = tokens
        self.http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), auth=tokens, timeout=timeout_s, verify=verify
        )
        self._refused: str | None = None

    async def fetch(self, referral_ids: Collection[uuid.UUID]) -> dict[uuid.UUID, Contact]:
        """The contact details of those of ``referral_ids`` intake knows, read in as few calls as its
        limit allows; ``DeliveryError`` (transient) when they cannot be had now."""
        ids = [str(referral_id) for referral_id in referral_ids]
        found: dict[uuid.UUID, Contact] = {}
        for start in range(0, len(ids), MAX_PER_READ):
            params = tuple(("referral_id", referral_id) for referral_id in ids[start : start + MAX_PER_READ])
            found.update((c.referral_id, c) for c in await self._read(params))
        return found

    async def _read(self, params: tuple[tuple[str, str], ...]) -> list[Contact]:
        try:
            refused, self._refused = self._refused, None
            if refused:
                # Intake refused that token (403): the client's scopes may have been fixed since, and
                # a cached token would go on lacking them until it expires.
                await self.tokens.token(replacing=refused)
            response = await self.http.get("/internal/v1/contacts", params=params)
        except ServiceTokenError as exc:
            raise DeliveryError(f"no token for intake: {exc}") from exc
        except httpx.HTTPError as exc:
            raise DeliveryError(f"intake unreachable: {type(exc).__name__}") from exc
        if response.status_code in (401, 403):
            self._refused = response.request.headers.get("Authorization", "").removeprefix("Bearer ")
            raise DeliveryError(
                f"intake refused the notifier's token ({response.status_code}): {_detail(response)}"
            )
        if response.status_code != 200:
            raise DeliveryError(f"intake answered {response.status_code}: {_detail(response)}")
        try:
            return _ContactList.model_validate_json(response.content).items
        except ValidationError as exc:
            errors = exc.error_count()  # the errors themselves could quote contact details
            raise DeliveryError(f"intake's contact answer breaks the contract ({errors} errors)") from exc

    async def aclose(self) -> None:
        await self.http.aclose()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if not isinstance(body, dict):
        return response.reason_phrase
    return str(body.get("detail", response.reason_phrase))
