"""The pure rules of people's accounts and sign-in: roles and scopes, account and password checks,
where a sign-in may return to, the portal clients' settings and the session cookie's signature."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr, ValidationError

from services.auth.codes import Person, PortalClient, person_claims
from services.auth.config import AuthSettings, WebClient
from services.auth.domain import AccountError, Role, User, check_account, password_problem
from shared.settings import OAuthSettings, ServiceSettings
from shared.web.signin import WebSignIn, WebSignInSettings, safe_next

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def user(role: Role, sites: tuple[str, ...] = ()) -> User:
    return User("u1", "a@b.example", "A B", role, sites, False, True, False, NOW, NOW)


def test_roles_carry_their_scopes_narrowed_by_the_portal() -> None:
    assert user(Role.COORDINATOR, ("WCM",)).scopes(["site:referrals", "ops"]) == ["site:referrals"]
    assert user(Role.OPS).scopes(["site:referrals", "ops"]) == ["ops"]
    assert user(Role.OPS).scopes(["site:referrals"]) == []


def test_person_claims_name_the_user_and_a_coordinators_sites() -> None:
    coordinator = person_claims(Person(user(Role.COORDINATOR, ("WCM", "DFCI")), NOW))
    assert coordinator == {"user": "u1", "name": "A B", "site_codes": ["WCM", "DFCI"]}
    assert "site_codes" not in person_claims(Person(user(Role.OPS), NOW))


@pytest.mark.parametrize(
    ("email", "name", "role", "sites", "field"),
    [
        ("not-an-email", "A", "ops", [], "email"),
        ("a@b.example", " ", "ops", [], "display_name"),
        ("a@b.example", "A", "admin", [], "role"),
        ("a@b.example", "A", "coordinator", [], "site_codes"),
        ("a@b.example", "A", "ops", ["WCM"], "site_codes"),
        ("a@b.example", "A", "coordinator", ["no spaces"], "site_codes"),
    ],
)
def test_accounts_the_rules_refuse_name_the_field(
    email: str, name: str, role: str, sites: list[str], field: str
) -> None:
    with pytest.raises(AccountError) as refused:
        check_account(email, name, role, sites)
    assert refused.value.field == field


def test_valid_accounts() -> None:
    assert check_account("A@B.example", "A", "coordinator", ["WCM", "DFCI"]) is Role.COORDINATOR
    assert check_account("ops@b.example", "Ops", "ops", []) is Role.OPS


@pytest.mark.parametrize(
    ("password", "refused"),
    [
        ("short", True),
        ("elevenchars", True),
        ("a@b.example", True),
        ("A@B.EXAMPLE ", True),
        ("aaaaaaaaaaaaaaaa", True),
        ("x" * 257, True),
        ("twelve chars", False),
        ("correct horse battery staple", False),
        ("ñandú über ÿ 12", False),
    ],
)
def test_passwords_follow_nist_800_63b(password: str, refused: bool) -> None:
    assert (password_problem(password, "a@b.example") is not None) is refused


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/portal/page?x=1", "/portal/page?x=1"),
        ("//evil.example/x", "/home"),
        ("/\\evil.example", "/home"),
        ("https://evil.example/", "/home"),
        ("/a\r\nSet-Cookie: x=1", "/home"),
        ("", "/home"),
        (None, "/home"),
    ],
)
def test_after_sign_in_only_a_path_here(target: str | None, expected: str) -> None:
    assert safe_next(target, "/home") == expected


def test_portal_clients_need_exact_absolute_redirects() -> None:
    client = WebClient(
        client_id="site-portal",
        redirect_uris=["https://p.example/portal/callback"],
        audiences=["site_router"],
        scopes=[],
    )
    portal = PortalClient(client)
    assert portal.check_redirect_uri("https://p.example/portal/callback")
    assert not portal.check_redirect_uri("https://p.example/portal/callback/")
    assert not portal.check_redirect_uri("https://p.example/portal/callback?x=1")
    assert portal.check_endpoint_auth_method("none", "token")
    assert not portal.check_endpoint_auth_method("client_secret_basic", "token")
    assert not portal.check_grant_type("client_credentials")
    confidential = PortalClient(client.model_copy(update={"secret": SecretStr("s3cret")}))
    assert confidential.check_client_secret("s3cret") and not confidential.check_client_secret("other")
    assert not confidential.check_endpoint_auth_method("none", "token")
    for bad in ("/portal/callback", "ftp://p.example/cb", "https://p.example/cb#frag"):
        with pytest.raises(ValidationError):
            WebClient(client_id="x", redirect_uris=[bad], audiences=["a"], scopes=[])


def test_totp_required_by_default_in_production_only() -> None:
    assert not AuthSettings(environment="development").requires_totp
    assert AuthSettings(environment="production", key_encryption_secret=SecretStr("k")).requires_totp
    assert not AuthSettings(
        environment="production", key_encryption_secret=SecretStr("k"), totp_required=False
    ).requires_totp


def _web(clock: list[float], idle_s: int = 60, public_url: str = "http://p.example") -> WebSignIn:
    settings = ServiceSettings(public_url=public_url, oauth=OAuthSettings(issuer="https://auth.example"))
    web = WebSignInSettings(client_id="site-portal", idle_timeout_s=idle_s)
    return WebSignIn(settings, web, prefix="/portal", clock=lambda: clock[0])


def test_session_cookie_signed_and_idle_expiring() -> None:
    clock = [1_900_000_000.0]
    web = _web(clock)
    cookie = web._session.dumps({"t": "token", "c": "csrf"})
    assert web._session.loads(cookie, max_age=60) == {"t": "token", "c": "csrf"}
    clock[0] += 61
    with pytest.raises(Exception, match="age"):
        web._session.loads(cookie, max_age=60)
    other = _web(clock)
    assert other._session.loads(cookie) == {"t": "token", "c": "csrf"}  # same secret: replicas agree
    with pytest.raises(Exception, match="Signature"):
        web._session.loads(cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1])


def test_urls_and_secure_cookies_follow_the_public_url() -> None:
    clock = [0.0]
    assert not _web(clock).secure
    https = _web(clock, public_url="https://p.example")
    assert https.secure
    assert https.redirect_uri == "https://p.example/portal/callback"
    assert https.authorization_url == "https://auth.example/oauth/authorize"
    assert https.signin_url("/portal/page?a=1") == "/portal/signin?next=%2Fportal%2Fpage%3Fa%3D1"


def test_default_session_secret_refused_outside_development() -> None:
    settings = ServiceSettings(environment="production", oauth=OAuthSettings(issuer="https://auth.example"))
    with pytest.raises(ValueError, match="WEB_SESSION_SECRET"):
        WebSignIn(settings, WebSignInSettings(client_id="site-portal"))
