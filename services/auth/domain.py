"""The auth service's rules, as pure functions over plain data: no I/O, no clock of their own.

- which scopes and which audience a client gets in a token;
- how a client proves who it is (a secret, or a key: a JWK Set URL or a registered JWK Set), and how
  long a signed client assertion may live;
- when a signing key is published, signs, stops signing and is retired;
- people's accounts: roles and the scopes they carry, passwords good enough to set, where a sign-in
  may send the browser back to.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from shared.auth import Scope

CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,99}$")


class RegistrationError(ValueError):
    """A client registration the rules refuse (unknown scope, no audience, two tenants...)."""


@dataclass(frozen=True)
class Client:
    """A registered client as the rules see it: its secret only as an argon2id hash, or (a client that
    signs in with ``private_key_jwt``) no secret and its public keys' JWK Set URL or JWK Set."""

    client_id: str
    secret_hash: str | None
    scopes: tuple[str, ...]
    audiences: tuple[str, ...]
    clinic_id: str | None
    site_code: str | None
    enabled: bool
    created_at: datetime
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None

    @property
    def signs_in_with_key(self) -> bool:
        return self.jwks_url is not None or self.jwks is not None

    @property
    def auth_method(self) -> str:
        """How it authenticates at the token endpoint, in RFC 8414's words (for listings)."""
        return "private_key_jwt" if self.signs_in_with_key else "client_secret"


def check_registration(
    client_id: str,
    scopes: Sequence[str],
    audiences: Sequence[str],
    clinic_id: str | None,
    site_code: str | None,
) -> None:
    """Refuse a registration that could never get a useful token, or would act for two tenants."""
    if not CLIENT_ID.match(client_id):
        raise RegistrationError("client id: 3-100 letters, digits, '.', '_' or '-', starting alphanumeric")
    unknown = sorted(set(scopes) - {s.value for s in Scope})
    if unknown:
        raise RegistrationError(f"unknown scope(s): {', '.join(unknown)}")
    if not scopes:
        raise RegistrationError("a client needs at least one scope")
    if not audiences or any(not a.strip() for a in audiences):
        raise RegistrationError("a client needs at least one audience (the services it may call)")
    if clinic_id and site_code:
        raise RegistrationError("a client acts for a clinic or for a site, not both")


def check_jwks_url(url: str) -> None:
    """A client's JWK Set URL: ``https`` (SMART Backend Services requires TLS), or ``http`` to a
    loopback address only (a client on the same machine: development and tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and _is_loopback(parts.hostname):
        return
    raise RegistrationError("JWK Set URL: an https URL (http only to a loopback address)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AssertionLifetimeRefused(ValueError):
    """A client assertion that lives longer than allowed (SMART Backend Services: 5 minutes)."""


def check_assertion_expiry(exp: object, now: float, *, max_lifetime_s: int, leeway_s: int) -> None:
    """``exp`` must be a number at most ``max_lifetime_s`` ahead of ``now`` (plus ``leeway_s`` for the
    client's clock running ahead of ours); whether it has passed already is checked with the
    signature (authlib)."""
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise AssertionLifetimeRefused("the assertion's 'exp' must be a number (seconds since the epoch)")
    if exp > now + max_lifetime_s + leeway_s:
        raise AssertionLifetimeRefused(f"the assertion's 'exp' may be at most {max_lifetime_s} seconds ahead")


def grant_scopes(requested: str | None, allowed: Sequence[str]) -> str | None:
    """The scope of the token: what was asked and is allowed (RFC 6749 §3.3), all allowed if nothing
    was asked, ``None`` (refused) if nothing asked is allowed."""
    if not requested or not requested.strip():
        granted = list(allowed)
    else:
        wanted = set(requested.split())
        granted = [s for s in allowed if s in wanted]
    return " ".join(granted) or None


class AudienceRefused(ValueError):
    """The requested resource is not one this client may get a token for (RFC 8707 invalid_target)."""


def choose_audience(requested: Iterable[str], allowed: Sequence[str]) -> str:
    """The one audience of the token: the requested one if allowed, else the client's first."""
    wanted = {r for r in requested if r}
    if not wanted:
        if not allowed:
            raise AudienceRefused("the client may not get tokens for any resource")
        return allowed[0]
    if len(wanted) > 1:
        raise AudienceRefused("ask for one resource per token")
    (audience,) = wanted
    if audience not in allowed:
        raise AudienceRefused(f"the client may not get tokens for '{audience}'")
    return audience


@dataclass(frozen=True)
class KeySchedule:
    """A signing key's life: published from ``created_at``, signs in [signs_from, signs_until),
    published until ``retire_at`` (when the last token it signed has expired)."""

    kid: str
    created_at: datetime
    signs_from: datetime
    signs_until: datetime | None = None
    retire_at: datetime | None = None

    def signs_at(self, now: datetime) -> bool:
        return self.signs_from <= now and (self.signs_until is None or now < self.signs_until)

    def published_at(self, now: datetime) -> bool:
        return self.retire_at is None or now < self.retire_at


def signing_kid(keys: Iterable[KeySchedule], now: datetime) -> str | None:
    """The key that signs now: of those in their signing window, the latest to start."""
    candidates = [k for k in keys if k.signs_at(now)]
    if not candidates:
        return None
    return max(candidates, key=lambda k: (k.signs_from, k.created_at, k.kid)).kid


def published(keys: Iterable[KeySchedule], now: datetime) -> list[KeySchedule]:
    """The keys in the JWKS now: every key from its creation until its retirement."""
    return sorted((k for k in keys if k.published_at(now)), key=lambda k: k.created_at)


@dataclass(frozen=True)
class Rotation:
    new_key: KeySchedule
    ending: list[KeySchedule]
    """Existing keys with their new ``signs_until`` and ``retire_at``."""
    expired: list[str]
    """Keys retired before ``now``: nothing verifies with them any more, so they can be deleted."""


def plan_rotation(
    keys: Sequence[KeySchedule],
    kid: str,
    now: datetime,
    *,
    publish_delay: timedelta,
    token_lifetime: timedelta,
    retire_leeway: timedelta,
) -> Rotation:
    """A new key that signs after ``publish_delay``; every other key stops signing then and is
    retired once the tokens it signed have expired (plus leeway for clock skew)."""
    starts = now + publish_delay
    new_key = KeySchedule(kid=kid, created_at=now, signs_from=starts)
    ending = []
    for key in keys:
        if key.retire_at is not None and key.retire_at <= now:
            continue
        stop = starts if key.signs_until is None else min(key.signs_until, starts)
        stop = max(stop, key.signs_from)
        retire = stop + token_lifetime + retire_leeway
        if key.retire_at is not None:
            retire = max(retire, key.retire_at)  # tokens signed under a longer lifetime still count
        ending.append(replace(key, signs_until=stop, retire_at=retire))
    expired = [k.kid for k in keys if k.retire_at is not None and k.retire_at <= now]
    return Rotation(new_key=new_key, ending=ending, expired=expired)


class Role(StrEnum):
    """What a person does: a coordinator works for one or more sites; ops run the system."""

    COORDINATOR = "coordinator"
    OPS = "ops"


ROLE_SCOPES: dict[Role, tuple[Scope, ...]] = {
    Role.COORDINATOR: (Scope.SITE_REFERRALS, Scope.SITE_CONTACT),
    Role.OPS: (Scope.OPS,),
}
"""The scopes a person's token carries (the portal client's own list narrows them further)."""

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 256
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,189}\.[^@\s]{2,63}$")
SITE_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class AccountError(ValueError):
    """An account the rules refuse (bad email, coordinator without a site...), with the field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class User:
    """A person's account as the rules and listings see it (never the hashes or the TOTP secret)."""

    id: str
    email: str
    display_name: str
    role: Role
    site_codes: tuple[str, ...]
    disabled: bool
    has_password: bool
    totp_confirmed: bool
    created_at: datetime
    updated_at: datetime

    def scopes(self, client_scopes: Iterable[str]) -> list[str]:
        allowed = set(client_scopes)
        return [s.value for s in ROLE_SCOPES[self.role] if s.value in allowed]


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_account(email: str, display_name: str, role: str, site_codes: Sequence[str]) -> Role:
    """The account's role, or ``AccountError`` naming the field the rules refuse."""
    if not EMAIL.match(normalize_email(email)):
        raise AccountError("email", "not an email address")
    if not display_name.strip() or len(display_name) > 200:
        raise AccountError("display_name", "1 to 200 characters")
    try:
        chosen = Role(role)
    except ValueError:
        raise AccountError("role", f"one of {', '.join(r.value for r in Role)}") from None
    if chosen is Role.COORDINATOR and not site_codes:
        raise AccountError("site_codes", "a coordinator works for at least one site")
    if chosen is Role.OPS and site_codes:
        raise AccountError("site_codes", "ops work for no site")
    for code in site_codes:
        if not SITE_CODE.match(code):
            raise AccountError("site_codes", f"{code!r} is not a site code")
    return chosen


def password_problem(password: str, email: str) -> str | None:
    """Why a new password is refused, or ``None``: NIST SP 800-63B's rules (a length, not the login;
    no composition rules: any characters, spaces included)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"use at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"use at most {MAX_PASSWORD_LENGTH} characters"
    lowered = password.strip().lower()
    email = normalize_email(email)
    if lowered in {email, email.split("@")[0]}:
        return "do not use your email address"
    if len(set(password)) < 3:
        return "use more than one or two different characters"
    return None
