"""What a route can ask of a verified token's principal."""

import pytest

from shared.auth import SCOPE_DESCRIPTIONS, Principal, Scope
from shared.problems import Forbidden

pytestmark = pytest.mark.unit

CLINIC = Principal("clinic-1", "clinic-1", frozenset({Scope.REFERRALS_READ}), clinic_id="C1")
SITE = Principal("site-1", "site-1", frozenset({Scope.SITE_REFERRALS}), site_code="S1")


def test_tenant_helpers_return_the_tenant_or_refuse_with_403() -> None:
    assert CLINIC.require_clinic() == "C1"
    assert SITE.require_site() == "S1"
    with pytest.raises(Forbidden):
        CLINIC.require_site()
    with pytest.raises(Forbidden):
        SITE.require_clinic()


def test_has_checks_every_scope() -> None:
    assert CLINIC.has(Scope.REFERRALS_READ)
    assert not CLINIC.has(Scope.REFERRALS_READ, Scope.REFERRALS_WRITE)


def test_principal_is_frozen() -> None:
    with pytest.raises(AttributeError):
        CLINIC.clinic_id = "C2"  # type: ignore[misc]


def test_every_scope_is_described() -> None:
    assert set(SCOPE_DESCRIPTIONS) == set(Scope)
    assert Scope("referrals:write") is Scope.REFERRALS_WRITE
    assert Scope.OPS.description


def test_a_coordinators_token_acts_for_each_of_their_sites() -> None:
    from shared.auth import _principal

    two = _principal({"client_id": "site-portal", "sub": "u1", "user": "u1", "site_codes": ["S1", "S2", 3]})
    assert two.require_sites() == {"S1", "S2"}
    assert two.site_code is None, "with two sites, a route must say which one"
    assert two.user == "u1"
    one = _principal({"client_id": "site-1", "site_code": "S1"})
    assert one.require_sites() == {"S1"} and one.require_site() == "S1"
    with pytest.raises(Forbidden):
        CLINIC.require_sites()
