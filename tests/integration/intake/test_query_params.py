"""Every malformed query parameter of intake's list routes is a 422 problem naming it (F3): never a 500,
never a reset connection. Cursors are opaque, so a crafted one is tried in every shape its encoding
allows; times are tried at the edges of what a datetime can hold once in UTC."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest

from shared.problems import PROBLEM_JSON
from tests.integration.intake.conftest import RunningIntake, Tokens, bearer

pytestmark = pytest.mark.integration

RID = str(uuid.uuid4())


def crafted(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


BAD_CURSORS = [
    crafted(["2026-01-01T00:00:00+00:00", 5]),  # an id that is no string
    crafted(["2026-01-01T00:00:00+00:00", None]),
    crafted(["2026-01-01T00:00:00+00:00", ["x"]]),
    crafted(["2026-01-01T00:00:00+00:00", {"a": 1}]),
    crafted([1, RID]),
    crafted(["0001-01-01T00:00:00+14:00", RID]),  # before year 1 in UTC
    crafted(["9999-12-31T23:59:59-14:00", RID]),  # after year 9999 in UTC
    crafted(["2026-01-01T00:00:00", RID]),  # naive
    crafted(["2026-01-01T00:00:00+00:00", "not-a-uuid"]),
    crafted(["2026-01-01T00:00:00+00:00", RID, "extra"]),
    crafted({"at": "2026-01-01T00:00:00+00:00", "id": RID}),
    crafted("ab"),
    crafted(12),
    crafted(None),
    crafted([]),
    crafted([[], []]),
    base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),  # not UTF-8
    "!!!!",
    "é",
    "\x00",
    "a",
]
BAD_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2026-01-01T00:00:00",
    "2026-13-01T00:00:00Z",
    "2026-01-01T00:00:00+25:00",
    "not-a-time",
    "",
    "\x00",
    "9" * 60,
    "1e400",
]


async def test_every_malformed_list_parameter_is_a_named_422(
    module_intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    cases = (
        [("cursor", value) for value in BAD_CURSORS]
        + [("cursor", "x" * 201)]
        + [("updated_since", value) for value in BAD_TIMES]
        + [("limit", value) for value in ("0", "201", "-1", "abc", "1.5", "1e3", "9" * 40, "")]
        + [("status", value) for value in ("lost", "", "\x00", "RECEIVED")]
    )
    for name, value in cases:
        response = await http.get(
            f"{module_intake.url}/v1/referrals", params={name: value}, headers=bearer(tokens.clinic_a)
        )
        assert response.status_code == 422, (name, value, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["errors"][0]["field"].startswith(name), (name, value)


async def test_the_edges_that_have_a_utc_time_are_answered(
    module_intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    for value in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00-14:00", "9999-12-31T23:59:59Z"):
        response = await http.get(
            f"{module_intake.url}/v1/referrals",
            params={"updated_since": value},
            headers=bearer(tokens.clinic_a),
        )
        assert response.status_code == 200, (value, response.text)


async def test_every_malformed_contacts_parameter_is_a_named_422(
    module_intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{module_intake.url}/internal/v1/contacts"
    for query in ("", "referral_id=", "referral_id=not-a-uuid", "referral_id=%00", "referral_id=1"):
        response = await http.get(f"{url}?{query}", headers=bearer(tokens.notifier))
        assert response.status_code == 422, (query, response.text)
        assert response.headers["content-type"] == PROBLEM_JSON
        assert response.json()["errors"][0]["field"].startswith("referral_id"), query
    too_many = "&".join(f"referral_id={uuid.uuid4()}" for _ in range(101))
    response = await http.get(f"{url}?{too_many}", headers=bearer(tokens.notifier))
    assert response.status_code == 422
