"""The auth rules: which scopes and audience a token gets, and a signing key's life."""

from datetime import UTC, datetime, timedelta

import pytest

from services.auth.domain import (
    AssertionLifetimeRefused,
    AudienceRefused,
    KeySchedule,
    RegistrationError,
    check_assertion_expiry,
    check_jwks_url,
    check_registration,
    choose_audience,
    grant_scopes,
    plan_rotation,
    published,
    signing_kid,
)

pytestmark = pytest.mark.unit

ALLOWED = ("referrals:write", "referrals:read")
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


class TestScopes:
    def test_nothing_requested_grants_everything_allowed(self) -> None:
        assert grant_scopes(None, ALLOWED) == "referrals:write referrals:read"
        assert grant_scopes("  ", ALLOWED) == "referrals:write referrals:read"

    def test_grants_the_intersection_of_requested_and_allowed(self) -> None:
        assert grant_scopes("referrals:read ops", ALLOWED) == "referrals:read"

    def test_refuses_when_nothing_requested_is_allowed(self) -> None:
        assert grant_scopes("ops", ALLOWED) is None


class TestAudience:
    def test_defaults_to_the_first_allowed(self) -> None:
        assert choose_audience([], ["intake", "eligibility"]) == "intake"

    def test_grants_an_allowed_request(self) -> None:
        assert choose_audience(["eligibility", "eligibility"], ["intake", "eligibility"]) == "eligibility"

    @pytest.mark.parametrize("requested", [["site_router"], ["intake", "eligibility"]])
    def test_refuses_other_or_several_resources(self, requested: list[str]) -> None:
        with pytest.raises(AudienceRefused):
            choose_audience(requested, ["intake", "eligibility"])


class TestRegistration:
    def test_accepts_a_clinic_client(self) -> None:
        check_registration("clinic-0001", ["referrals:write"], ["intake"], "C1", None)

    @pytest.mark.parametrize(
        ("client_id", "scopes", "audiences", "clinic", "site", "reason"),
        [
            ("x", ["ops"], ["intake"], None, None, "client id"),
            ("bad:id", ["ops"], ["intake"], None, None, "client id"),
            ("svc", ["admin"], ["intake"], None, None, "unknown scope"),
            ("svc", [], ["intake"], None, None, "at least one scope"),
            ("svc", ["ops"], [], None, None, "audience"),
            ("svc", ["ops"], ["intake"], "C1", "S1", "not both"),
        ],
    )
    def test_refuses(
        self, client_id: str, scopes: list[str], audiences: list[str], clinic: str, site: str, reason: str
    ) -> None:
        with pytest.raises(RegistrationError, match=reason):
            check_registration(client_id, scopes, audiences, clinic, site)


def _rotate(keys: list[KeySchedule], kid: str, now: datetime, delay_s: int = 60) -> list[KeySchedule]:
    plan = plan_rotation(
        keys,
        kid,
        now,
        publish_delay=timedelta(seconds=delay_s),
        token_lifetime=timedelta(seconds=300),
        retire_leeway=timedelta(seconds=30),
    )
    kept = {k.kid: k for k in plan.ending}
    return [*kept.values(), plan.new_key]


class TestKeyRotation:
    def test_first_key_signs_from_its_start(self) -> None:
        keys = _rotate([], "k1", T0, delay_s=0)
        assert signing_kid(keys, T0) == "k1"
        assert [k.kid for k in published(keys, T0)] == ["k1"]

    def test_new_key_is_published_before_it_signs(self) -> None:
        keys = _rotate(_rotate([], "k1", T0, delay_s=0), "k2", T0 + 100 * SECOND)
        before = T0 + 159 * SECOND
        assert signing_kid(keys, before) == "k1"
        assert {k.kid for k in published(keys, before)} == {"k1", "k2"}
        assert signing_kid(keys, T0 + 160 * SECOND) == "k2"

    def test_old_key_retires_when_its_last_token_has_expired(self) -> None:
        keys = _rotate(_rotate([], "k1", T0, delay_s=0), "k2", T0 + 100 * SECOND)
        old = next(k for k in keys if k.kid == "k1")
        assert old.signs_until == T0 + 160 * SECOND
        assert old.retire_at == T0 + (160 + 300 + 30) * SECOND
        assert {k.kid for k in published(keys, T0 + 489 * SECOND)} == {"k1", "k2"}
        assert {k.kid for k in published(keys, T0 + 490 * SECOND)} == {"k2"}

    def test_a_pending_key_replaced_before_it_signs_never_signs(self) -> None:
        keys = _rotate(_rotate(_rotate([], "k1", T0, delay_s=0), "k2", T0), "k3", T0)
        assert signing_kid(keys, T0) == "k1"
        assert signing_kid(keys, T0 + 60 * SECOND) == "k3"

    def test_keys_retired_already_are_dropped(self) -> None:
        keys = _rotate(_rotate([], "k1", T0, delay_s=0), "k2", T0, delay_s=0)
        later = T0 + timedelta(hours=1)
        plan = plan_rotation(
            keys,
            "k3",
            later,
            publish_delay=timedelta(0),
            token_lifetime=timedelta(seconds=300),
            retire_leeway=timedelta(0),
        )
        assert plan.expired == ["k1"]
        assert [k.kid for k in plan.ending] == ["k2"]

    def test_a_longer_earlier_lifetime_keeps_its_retirement(self) -> None:
        late = KeySchedule("k1", T0, T0, signs_until=T0, retire_at=T0 + timedelta(hours=2))
        plan = plan_rotation(
            [late],
            "k2",
            T0 + SECOND,
            publish_delay=timedelta(0),
            token_lifetime=timedelta(seconds=300),
            retire_leeway=timedelta(0),
        )
        assert plan.ending[0].retire_at == T0 + timedelta(hours=2)


class TestClientAssertions:
    def test_exp_at_most_the_lifetime_ahead_plus_leeway(self) -> None:
        check_assertion_expiry(1300, 1000, max_lifetime_s=300, leeway_s=0)
        check_assertion_expiry(1329.5, 1000, max_lifetime_s=300, leeway_s=30)
        with pytest.raises(AssertionLifetimeRefused, match="at most 300 seconds"):
            check_assertion_expiry(1301, 1000, max_lifetime_s=300, leeway_s=0)
        with pytest.raises(AssertionLifetimeRefused):
            check_assertion_expiry(1000 + 3600, 1000, max_lifetime_s=300, leeway_s=30)

    @pytest.mark.parametrize("exp", [None, "1300", True, [1300]])
    def test_exp_must_be_a_number(self, exp: object) -> None:
        with pytest.raises(AssertionLifetimeRefused, match="number"):
            check_assertion_expiry(exp, 1000, max_lifetime_s=300, leeway_s=30)


class TestJwksUrl:
    @pytest.mark.parametrize(
        "url",
        [
            "https://ehr.clinic.example/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/j",
        ],
    )
    def test_https_or_loopback_http(self, url: str) -> None:
        check_jwks_url(url)

    @pytest.mark.parametrize(
        "url",
        ["http://ehr.clinic.example/jwks", "ftp://x/jwks", "https:///jwks", "jwks.json", "http://10.0.0.1/"],
    )
    def test_anything_else_is_refused(self, url: str) -> None:
        with pytest.raises(RegistrationError, match="https"):
            check_jwks_url(url)
