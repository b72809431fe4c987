"""Bad input: a 422 naming every invalid field, 413 and 415 at the door, never a 500, nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from shared.referral import EXAMPLE_REFERRAL as EXAMPLE
from tests.integration.intake.conftest import RunningIntake, Tokens, bearer
from tests.support.builders import referral_body

pytestmark = pytest.mark.integration

TOMORROW = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()


def without(path: str) -> dict[str, Any]:
    body = referral_body()
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    del node[leaf]
    return body


def changed(path: str, value: Any) -> dict[str, Any]:
    body = referral_body()
    *parents, leaf = path.split(".")
    node = body
    for part in parents:
        node = node[part]
    node[leaf] = value
    return body


# One case per rule of docs/referral.md: (the body, the JSON paths the 422 must name).
CASES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "clinic_reference required": (without("clinic_reference"), {"clinic_reference"}),
    "clinic_reference not empty": (changed("clinic_reference", ""), {"clinic_reference"}),
    "clinic_reference at most 64": (changed("clinic_reference", "x" * 65), {"clinic_reference"}),
    "given_name required": (without("patient.given_name"), {"patient.given_name"}),
    "family_name at most 100": (changed("patient.family_name", "x" * 101), {"patient.family_name"}),
    "date_of_birth required": (without("patient.date_of_birth"), {"patient.date_of_birth"}),
    "date_of_birth not in the future": (
        changed("patient.date_of_birth", TOMORROW),
        {"patient.date_of_birth"},
    ),
    "date_of_birth ISO 8601": (changed("patient.date_of_birth", "14/03/1968"), {"patient.date_of_birth"}),
    "sex from the list": (changed("patient.sex", "f"), {"patient.sex"}),
    "email an email": (changed("patient.email", "maria at example"), {"patient.email"}),
    "preferred_language BCP 47": (
        changed("patient.preferred_language", "english!"),
        {"patient.preferred_language"},
    ),
    "postal_code required": (without("patient.postal_code"), {"patient.postal_code"}),
    "country alpha-2": (changed("patient.country", "USA"), {"patient.country"}),
    "consent required": (without("patient.consent_to_contact"), {"patient.consent_to_contact"}),
    "consent a boolean": (changed("patient.consent_to_contact", "yes"), {"patient.consent_to_contact"}),
    "referrer name required": (without("referrer.name"), {"referrer.name"}),
    "referrer email required": (without("referrer.email"), {"referrer.email"}),
    "diagnosis from the list": (changed("clinical.diagnosis", "cml"), {"clinical.diagnosis"}),
    "disease_status from the list": (
        changed("clinical.disease_status", "stable"),
        {"clinical.disease_status"},
    ),
    "blast percent at most 100": (
        changed("clinical.marrow_blast_percent", 100.5),
        {"clinical.marrow_blast_percent"},
    ),
    "blast percent a number": (
        changed("clinical.marrow_blast_percent", "23"),
        {"clinical.marrow_blast_percent"},
    ),
    "marrow_assessed_on a day": (
        changed("clinical.marrow_assessed_on", "2026-13-01"),
        {"clinical.marrow_assessed_on"},
    ),
    "cd123 method from the list": (changed("clinical.cd123.method", "pcr"), {"clinical.cd123.method"}),
    "cns_leukemia a boolean": (changed("clinical.cns_leukemia", 0), {"clinical.cns_leukemia"}),
    "ecog 0-5": (changed("clinical.ecog", 6), {"clinical.ecog"}),
    "ecog an integer": (changed("clinical.ecog", 1.5), {"clinical.ecog"}),
    "organ status from the list": (
        changed("clinical.organ_function.renal", "good"),
        {"clinical.organ_function.renal"},
    ),
    "sct count >= 0": (
        changed("clinical.prior_therapy.allogeneic_sct_count", -1),
        {"clinical.prior_therapy.allogeneic_sct_count"},
    ),
    "anti-CD20 a day or never": (
        changed("clinical.prior_therapy.last_anti_cd20_on", "long ago"),
        {"clinical.prior_therapy.last_anti_cd20_on"},
    ),
    "donor_identified a boolean": (
        changed("clinical.donor_identified", "true"),
        {"clinical.donor_identified"},
    ),
    "patient required": (without("patient"), {"patient"}),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_each_rule_of_the_contract_is_a_422_naming_the_field(
    case: str, module_intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    intake = module_intake
    body, fields = CASES[case]
    response = await http.post(f"{intake.url}/v1/referrals", json=body, headers=bearer(tokens.clinic_a))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert {e["field"] for e in problem["errors"]} == fields, problem
    assert all(e["reason"] for e in problem["errors"])
    assert await intake.count() == 0 and await intake.outbox() == []


async def test_every_invalid_field_is_listed_at_once(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    body = referral_body(patient={"date_of_birth": TOMORROW, "country": "USA"}, clinical={"ecog": 9})
    del body["referrer"]["email"]
    response = await http.post(f"{intake.url}/v1/referrals", json=body, headers=bearer(tokens.clinic_a))
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {
        "patient.date_of_birth", "patient.country", "clinical.ecog", "referrer.email",
    }  # fmt: skip


async def test_unknown_clinical_values_are_accepted(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    nulls = referral_body("CLN-NULLS")
    nulls["clinical"] = {key: None for key in EXAMPLE["clinical"]}
    absent = referral_body("CLN-ABSENT")
    absent["clinical"] = None
    minimal = referral_body("CLN-MIN")
    for field in ("sex", "email", "phone", "preferred_language"):
        del minimal["patient"][field]
    for body in (nulls, absent, minimal):
        response = await http.post(f"{intake.url}/v1/referrals", json=body, headers=bearer(tokens.clinic_a))
        assert response.status_code == 202, response.text
    assert await intake.count() == 3


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 422),
        (b"", 422),
        (b"[1, 2]", 422),
        (b'"a string"', 422),
        (b"null", 422),
        ('{"clinic_reference": "\u00e9"}'.encode("latin-1"), 400),  # not UTF-8: not even text
    ],
)
async def test_malformed_bodies_are_a_422_never_a_500(
    content: bytes, status: int, module_intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    intake = module_intake
    response = await http.post(
        f"{intake.url}/v1/referrals",
        content=content,
        headers=bearer(tokens.clinic_a, **{"Content-Type": "application/json"}),
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await intake.count() == 0


async def test_a_body_over_64_kib_is_a_413(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    assert intake.settings.max_body_bytes == 65_536
    big = referral_body(referrer={"name": "x" * 70_000})
    response = await http.post(f"{intake.url}/v1/referrals", json=big, headers=bearer(tokens.clinic_a))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"

    async def chunks() -> AsyncIterator[bytes]:  # streamed: no Content-Length to refuse up front
        yield b'{"clinic_reference": "'
        for _ in range(80):
            yield b"x" * 1024
        yield b'"}'

    streamed = await http.post(
        f"{intake.url}/v1/referrals",
        content=chunks(),
        headers=bearer(tokens.clinic_a, **{"Content-Type": "application/json"}),
    )
    assert streamed.status_code == 413, streamed.text
    assert streamed.headers["content-type"] == "application/problem+json"
    assert await intake.count() == 0


async def test_a_body_that_is_not_json_is_a_415(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        response = await http.post(
            f"{intake.url}/v1/referrals",
            content=b"clinic_reference=CLN-1",
            headers=bearer(tokens.clinic_a, **{"Content-Type": content_type}),
        )
        assert response.status_code == 415, response.text
        assert response.headers["content-type"] == "application/problem+json"
    charset = await http.post(
        f"{intake.url}/v1/referrals",
        json=referral_body(),
        headers=bearer(tokens.clinic_a, **{"Content-Type": "application/json; charset=utf-8"}),
    )
    assert charset.status_code == 202
    assert await intake.count() == 1


async def test_bad_headers_and_paths_are_422s(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    long_key = await http.post(
        f"{intake.url}/v1/referrals",
        json=referral_body(),
        headers=bearer(tokens.clinic_a, **{"Idempotency-Key": "k" * 256}),
    )
    assert long_key.status_code == 422
    assert [e["field"] for e in long_key.json()["errors"]] == ["Idempotency-Key"]
    not_an_id = await http.get(f"{intake.url}/v1/referrals/not-a-uuid", headers=bearer(tokens.clinic_a))
    assert not_an_id.status_code == 422 and not_an_id.json()["errors"][0]["field"] == "referral_id"
    assert await intake.count() == 0
