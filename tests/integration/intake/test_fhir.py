"""FHIR R4 referrals over real HTTP, real tokens and PostgreSQL: a Bundle becomes the same referral as
its JSON twin, under the same idempotency and tenancy; every error is an OperationOutcome."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.task import Task

from services.intake.fhir import codes
from tests.integration.intake.conftest import IDENTITY, RunningIntake, Tokens, bearer
from tests.support.builders import fhir_bundle, fhir_entry, fhir_examples

pytestmark = pytest.mark.integration

FHIR_JSON = "application/fhir+json"


def fhir(token: str | None = None, **headers: str) -> dict[str, str]:
    return {"Content-Type": FHIR_JSON, **(bearer(token) if token else {}), **headers}


def operation_outcome(response: httpx.Response, status: int) -> OperationOutcome:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == FHIR_JSON
    return OperationOutcome.model_validate(response.json())


async def post_bundle(
    intake: RunningIntake, http: httpx.AsyncClient, token: str, bundle: Any, **headers: str
) -> httpx.Response:
    return await http.post(
        f"{intake.url}/fhir/r4/Bundle", content=json.dumps(bundle), headers=fhir(token, **headers)
    )


async def test_a_bundle_becomes_the_same_referral_as_its_json_twin(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    name, bundle, twin = fhir_examples()[4]  # needs review: CD123 by IHC
    twin["clinic_reference"] = "JSON-TWIN"
    response = await post_bundle(intake, http, tokens.clinic_a, bundle)
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].split(";")[0] == FHIR_JSON
    created = Task.model_validate(response.json())
    assert response.headers["location"] == f"/fhir/r4/Task/{created.id}"
    assert created.status == "received" and created.businessStatus is not None
    assert created.businessStatus.text == "received"

    json_twin = await http.post(f"{intake.url}/v1/referrals", json=twin, headers=bearer(tokens.clinic_a))
    assert json_twin.status_code == 202, json_twin.text
    from_fhir = (
        await http.get(f"{intake.url}/v1/referrals/{created.id}", headers=bearer(tokens.clinic_a))
    ).json()
    from_json = (
        await http.get(f"{intake.url}{json_twin.headers['location']}", headers=bearer(tokens.clinic_a))
    ).json()
    for view in (from_fhir, from_json):
        view.pop("id"), view.pop("clinic_reference")
        for moment in ("created_at", "updated_at", "status_at"):
            view.pop(moment)
        view.pop("timeline")
    assert from_fhir == from_json
    assert from_fhir["clinical"]["cd123"] == {"positive": True, "method": "immunohistochemistry"}

    # The same events leave intake, without the patient's identity.
    fhir_event, json_event = (json.loads(r.payload)["data"] for r in await intake.outbox())
    assert (
        fhir_event["clinical"] == json_event["clinical"]
        and fhir_event["age_years"] == json_event["age_years"]
    )
    assert not any(item in json.dumps(fhir_event) for item in ["Demo", "demo.patient@example.com"])
    assert name.startswith("5-")


async def test_a_replay_with_the_same_key_answers_the_first_task(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    first = await post_bundle(intake, http, tokens.clinic_a, fhir_bundle(), **{"Idempotency-Key": "f-1"})
    again = await post_bundle(intake, http, tokens.clinic_a, fhir_bundle(), **{"Idempotency-Key": "f-1"})
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
    assert await intake.count() == 1 and len(await intake.outbox()) == 1

    other = await post_bundle(
        intake, http, tokens.clinic_a, fhir_bundle("CLN-OTHER"), **{"Idempotency-Key": "f-1"}
    )
    refused = operation_outcome(other, 422)
    assert [i.location for i in refused.issue] == [["http.Idempotency-Key"]]


async def test_a_duplicate_clinic_reference_is_a_409_naming_the_open_referral(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    first = await post_bundle(intake, http, tokens.clinic_a, fhir_bundle("DUP-1"))
    second = await post_bundle(intake, http, tokens.clinic_a, fhir_bundle("DUP-1"))
    conflict = operation_outcome(second, 409)
    assert first.json()["id"] in (conflict.issue[0].diagnostics or "")
    assert await intake.count() == 1


async def test_a_task_follows_the_referral_and_another_clinics_is_not_found(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    created = await post_bundle(intake, http, tokens.clinic_a, fhir_bundle())
    url = f"{intake.url}{created.headers['location']}"
    own = await http.get(url, headers=bearer(tokens.clinic_a_reader))
    assert own.status_code == 200 and own.headers["content-type"].split(";")[0] == FHIR_JSON
    read = Task.model_validate(own.json())
    assert read.id == created.json()["id"] and read.status == "received"
    assert read.focus is not None and read.focus.identifier is not None
    assert read.focus.identifier.value == "DEMO-0001" and read.for_fhir is None
    assert not any(item in own.text for item in [*IDENTITY, "Demo"])

    withdrawn = await http.post(
        f"{intake.url}/v1/referrals/{read.id}/withdraw", json={}, headers=bearer(tokens.clinic_a)
    )
    assert withdrawn.status_code == 200
    after = Task.model_validate((await http.get(url, headers=bearer(tokens.clinic_a))).json())
    assert after.status == "cancelled" and after.businessStatus is not None
    assert after.businessStatus.coding is not None
    assert (after.businessStatus.coding[0].system, after.businessStatus.coding[0].code) == (
        codes.REFERRAL_STATUS,
        "withdrawn",
    )

    stranger = await http.get(url, headers=bearer(tokens.clinic_b))
    assert operation_outcome(stranger, 404).issue[0].code == "not-found"
    nonsense = await http.get(f"{intake.url}/fhir/r4/Task/not-an-id", headers=bearer(tokens.clinic_a))
    operation_outcome(nonsense, 404)


async def test_each_unmappable_element_is_reported_with_its_path_and_nothing_is_stored(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    bundle = fhir_bundle()
    blasts, ecog = fhir_entry(bundle, codes.MARROW_BLASTS), fhir_entry(bundle, codes.ECOG)
    patient = fhir_entry(bundle, kind="Patient")
    bundle["entry"][blasts]["resource"]["valueQuantity"]["value"] = "lots"
    bundle["entry"][ecog]["resource"]["valueInteger"] = 9
    bundle["entry"][patient]["resource"]["birthDate"] = "1968"
    response = await post_bundle(intake, http, tokens.clinic_a, bundle)
    parsed = operation_outcome(response, 422)
    # A FHIR type error stops at parsing: the other elements are read once the Bundle is valid FHIR.
    assert [i.expression for i in parsed.issue] == [[f"Bundle.entry[{blasts}].resource.valueQuantity.value"]]

    bundle["entry"][blasts]["resource"]["valueQuantity"]["value"] = 23.5
    parsed = operation_outcome(await post_bundle(intake, http, tokens.clinic_a, bundle), 422)
    assert {p for i in parsed.issue for p in i.expression or []} == {
        f"Bundle.entry[{ecog}].resource.valueInteger",
        f"Bundle.entry[{patient}].resource.birthDate",
    }
    assert all(i.diagnostics and i.severity == "error" for i in parsed.issue)

    other_study = fhir_bundle()
    other_study["entry"][0]["resource"]["instantiatesUri"] = [f"{codes.STUDY_PREFIX}OTHER-STUDY"]
    parsed = operation_outcome(await post_bundle(intake, http, tokens.clinic_a, other_study), 422)
    assert parsed.issue[0].expression == ["Bundle.entry[0].resource.instantiatesUri[0]"]
    assert "unknown study" in (parsed.issue[0].diagnostics or "")
    assert await intake.count() == 0 and await intake.outbox() == []


async def test_wrong_media_type_bad_json_and_missing_tokens_are_operation_outcomes(
    intake: RunningIntake, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    url = f"{intake.url}/fhir/r4/Bundle"
    xml = await http.post(
        url, content="<Bundle/>", headers={**bearer(tokens.clinic_a), "Content-Type": "application/fhir+xml"}
    )
    assert operation_outcome(xml, 415).issue[0].code == "not-supported"
    broken = await http.post(url, content="{", headers=fhir(tokens.clinic_a))
    operation_outcome(broken, 422)
    anonymous = await http.post(url, content=json.dumps(fhir_bundle()), headers=fhir())
    assert operation_outcome(anonymous, 401).issue[0].code == "login"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    reader = await post_bundle(intake, http, tokens.clinic_a_reader, fhir_bundle())
    assert operation_outcome(reader, 403).issue[0].code == "forbidden"
    service = await post_bundle(intake, http, tokens.notifier, fhir_bundle())
    operation_outcome(service, 403)
    unknown = await http.get(f"{intake.url}/fhir/r4/Patient/1", headers=bearer(tokens.clinic_a))
    operation_outcome(unknown, 404)
    assert await intake.count() == 0


async def test_metadata_needs_no_token_and_lists_what_is_supported(
    intake: RunningIntake, http: httpx.AsyncClient
) -> None:
    response = await http.get(f"{intake.url}/fhir/r4/metadata")
    assert response.status_code == 200 and response.headers["content-type"].split(";")[0] == FHIR_JSON
    statement = CapabilityStatement.model_validate(response.json())
    assert statement.fhirVersion == "4.0.1" and statement.rest is not None
    supported = {r.type: [i.code for i in r.interaction or []] for r in statement.rest[0].resource or []}
    assert supported == {"Bundle": ["create"], "Task": ["read"]}


async def test_the_openapi_documents_the_fhir_routes_with_their_outcomes(
    intake: RunningIntake, http: httpx.AsyncClient
) -> None:
    document = (await http.get(f"{intake.url}/openapi.json")).json()
    post = document["paths"]["/fhir/r4/Bundle"]["post"]
    assert post["security"] == [{"oauth2_client_credentials": ["referrals:write"]}]
    assert list(post["responses"]["422"]["content"]) == [FHIR_JSON]
    assert "Idempotency-Key" in post["description"]
    task = document["paths"]["/fhir/r4/Task/{referral_id}"]["get"]
    assert task["security"] == [{"oauth2_client_credentials": ["referrals:read"]}]
