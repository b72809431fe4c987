"""The FHIR referral Bundle read into the JSON contract: the examples equal their JSON twins, and every
element that cannot be read is named by its FHIR path. No I/O."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.task import Task

from services.intake.domain import Status
from services.intake.fhir import codes
from services.intake.fhir.mapping import Issue, Unmappable, fhir_path, map_bundle
from services.intake.fhir.outcome import outcome
from services.intake.fhir.resources import capability_statement, task, task_status
from services.intake.schemas import ReferralCreate
from tests.support.builders import fhir_bundle, fhir_entry, fhir_examples

pytestmark = pytest.mark.unit

EXAMPLES = fhir_examples()


def issues_of(bundle: Any) -> set[tuple[str, str]]:
    with pytest.raises(Unmappable) as caught:
        map_bundle(bundle)
    return {(i.expression, i.reason) for i in caught.value.issues}


def paths_of(bundle: Any) -> set[str]:
    return {expression for expression, _ in issues_of(bundle)}


def resource(bundle: dict[str, Any], index: int) -> dict[str, Any]:
    return dict(bundle["entry"][index]["resource"])


@pytest.mark.parametrize(("name", "bundle", "twin"), EXAMPLES, ids=[name for name, _, _ in EXAMPLES])
def test_each_example_bundle_is_the_referral_of_its_json_twin(
    name: str, bundle: dict[str, Any], twin: dict[str, Any]
) -> None:
    mapped = map_bundle(bundle)
    assert mapped.referral.model_dump(mode="json") == ReferralCreate.model_validate(twin).model_dump(
        mode="json"
    )
    assert mapped.referral.model_dump(exclude_unset=True)["clinical"].keys() == twin["clinical"].keys()


def test_the_examples_cover_what_the_demo_varies() -> None:
    referrals = [map_bundle(bundle).referral for _, bundle, _ in EXAMPLES]
    assert {r.patient.preferred_language for r in referrals} == {"en", "es"}
    assert {r.patient.consent_to_contact for r in referrals} == {True, False}
    assert {r.clinical.ecog for r in referrals} == {1, 3}
    assert {r.clinical.cd123.method for r in referrals if r.clinical.cd123} == {
        "flow_cytometry",
        "immunohistochemistry",
    }


def test_each_field_knows_the_element_it_came_from() -> None:
    bundle = fhir_bundle()
    mapped = map_bundle(bundle)
    patient, blasts = fhir_entry(bundle, kind="Patient"), fhir_entry(bundle, codes.MARROW_BLASTS)
    assert mapped.expression("patient.date_of_birth") == f"Bundle.entry[{patient}].resource.birthDate"
    assert mapped.expression("clinical.marrow_blast_percent") == (
        f"Bundle.entry[{blasts}].resource.valueQuantity.value"
    )
    assert mapped.expression("study") == "Bundle.entry[0].resource.instantiatesUri[0]"
    assert mapped.expression("nothing.like.this") == "Bundle"


def test_a_fhir_type_error_is_reported_at_its_path() -> None:
    bundle = fhir_bundle()
    blasts = fhir_entry(bundle, codes.MARROW_BLASTS)
    bundle["entry"][blasts]["resource"]["valueQuantity"]["value"] = "twenty"
    assert paths_of(bundle) == {f"Bundle.entry[{blasts}].resource.valueQuantity.value"}


def test_every_unmappable_element_is_reported_at_once() -> None:
    bundle = fhir_bundle()
    ecog, cd123 = fhir_entry(bundle, codes.ECOG), fhir_entry(bundle, codes.CD123)
    condition = fhir_entry(bundle, kind="Condition")
    consent = fhir_entry(bundle, kind="Consent")
    bundle["type"] = "transaction"
    ecog_resource = resource(bundle, ecog)
    del ecog_resource["valueInteger"]
    ecog_resource["valueString"] = "one"
    bundle["entry"][ecog]["resource"] = ecog_resource
    bundle["entry"][cd123]["resource"]["valueCodeableConcept"] = {"text": "positive"}
    bundle["entry"][condition]["resource"]["code"] = {
        "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "C92.00"}]
    }
    del bundle["entry"][consent]["resource"]["provision"]
    assert paths_of(bundle) == {
        "Bundle.type",
        f"Bundle.entry[{ecog}].resource.valueString",
        f"Bundle.entry[{cd123}].resource.valueCodeableConcept",
        f"Bundle.entry[{condition}].resource.code",
        f"Bundle.entry[{consent}].resource.provision.type",
    }


def test_the_contracts_limits_are_reported_at_the_element_that_broke_them() -> None:
    bundle = fhir_bundle()
    ecog, patient = fhir_entry(bundle, codes.ECOG), fhir_entry(bundle, kind="Patient")
    bundle["entry"][ecog]["resource"]["valueInteger"] = 7
    bundle["entry"][patient]["resource"]["birthDate"] = "2999-01-01"
    del bundle["entry"][patient]["resource"]["address"][0]["postalCode"]
    found = issues_of(bundle)
    assert {path for path, _ in found} == {
        f"Bundle.entry[{ecog}].resource.valueInteger",
        f"Bundle.entry[{patient}].resource.birthDate",
        f"Bundle.entry[{patient}].resource.address[0].postalCode",
    }
    assert (f"Bundle.entry[{ecog}].resource.valueInteger", "Input should be less than or equal to 5") in found


def test_missing_resources_and_duplicates_are_named() -> None:
    bundle = fhir_bundle()
    consent = fhir_entry(bundle, kind="Consent")
    patient = resource(bundle, fhir_entry(bundle, kind="Patient"))
    bundle["entry"][consent] = {"resource": patient}
    found = issues_of(bundle)
    assert (f"Bundle.entry[{consent}].resource", "a second Patient; a referral Bundle holds one") in found
    assert any(path == "Bundle.entry" and "a Consent is required" in why for path, why in found)


def test_an_unknown_resource_type_is_named_not_a_server_error() -> None:
    bundle = fhir_bundle()
    bundle["entry"].append({"resource": {"resourceType": "Referral"}})
    assert paths_of(bundle) == {f"Bundle.entry[{len(bundle['entry']) - 1}].resource.resourceType"}
    assert paths_of({"resourceType": "Patient"}) == {"Bundle.resourceType"}
    assert paths_of([1, 2]) == {"Bundle"}


def test_another_study_uri_and_an_inactive_request_are_refused() -> None:
    bundle = fhir_bundle()
    bundle["entry"][0]["resource"]["instantiatesUri"] = ["https://example.org/trials/other"]
    bundle["entry"][0]["resource"]["status"] = "draft"
    assert paths_of(bundle) == {
        "Bundle.entry[0].resource.instantiatesUri[0]",
        "Bundle.entry[0].resource.status",
    }


def test_a_fact_not_sent_or_without_a_value_is_unknown_never_guessed() -> None:
    bundle = fhir_bundle()
    ecog, blasts = fhir_entry(bundle, codes.ECOG), fhir_entry(bundle, codes.MARROW_BLASTS)
    absent = resource(bundle, ecog)
    del absent["valueInteger"]
    absent["dataAbsentReason"] = {"text": "not assessed"}
    bundle["entry"][ecog]["resource"] = absent
    bundle["entry"][blasts]["resource"]["status"] = "entered-in-error"
    clinical = map_bundle(bundle).referral.clinical
    assert clinical.ecog is None and clinical.marrow_blast_percent is None
    assert clinical.marrow_assessed_on is None and clinical.diagnosis == "aml"


def test_the_disease_status_comes_from_the_stage_or_the_clinical_status_and_must_agree() -> None:
    bundle = fhir_bundle()
    condition = fhir_entry(bundle, kind="Condition")
    resource_ = bundle["entry"][condition]["resource"]
    del resource_["stage"]
    assert map_bundle(bundle).referral.clinical.disease_status == "relapsed"  # clinicalStatus relapse
    resource_["clinicalStatus"]["coding"][0]["code"] = "active"
    assert map_bundle(bundle).referral.clinical.disease_status is None  # active alone says neither
    resource_["clinicalStatus"]["coding"][0]["code"] = "remission"
    resource_["stage"] = [{"summary": {"coding": [{"system": codes.REFERRAL, "code": "primary-refractory"}]}}]
    assert paths_of(bundle) == {f"Bundle.entry[{condition}].resource.stage[0].summary"}


def test_organ_function_is_dated_by_its_oldest_assessment() -> None:
    bundle = fhir_bundle()
    renal = fhir_entry(bundle, "organ-function-renal")
    bundle["entry"][renal]["resource"]["effectiveDateTime"] = "2026-10-30T08:00:00+01:00"
    organ = map_bundle(bundle).referral.clinical.organ_function
    assert organ is not None and organ.assessed_on is not None
    assert organ.assessed_on.isoformat() == "2026-10-30"


def test_the_referrer_contact_falls_back_to_the_practitioner() -> None:
    bundle = fhir_bundle()
    role, person = fhir_entry(bundle, kind="PractitionerRole"), fhir_entry(bundle, kind="Practitioner")
    bundle["entry"][person]["resource"]["telecom"] = [{"system": "email", "value": "ana@home.example.org"}]
    bundle["entry"][role]["resource"]["telecom"] = [{"system": "phone", "value": "+1 212 555 0100"}]
    referrer = map_bundle(bundle).referral.referrer
    assert (referrer.email, referrer.phone) == ("ana@home.example.org", "+1 212 555 0100")


def test_fhir_paths_spell_fhir_names() -> None:
    assert fhir_path(("entry", 3, "resource", "resource_type")) == "Bundle.entry[3].resource.resourceType"
    assert fhir_path(("entry", 0, "resource", "for_fhir")) == "Bundle.entry[0].resource.for"
    assert fhir_path(("entry", 1, "resource", "birthDate__ext")) == "Bundle.entry[1].resource._birthDate"


def test_an_outcome_is_a_valid_operation_outcome_with_paths_and_header_locations() -> None:
    response = outcome(
        422,
        "2 invalid",
        [Issue("Bundle.entry[2].resource.valueInteger", "too big"), Issue("http.Idempotency-Key", "x")],
    )
    assert response.media_type == "application/fhir+json"
    parsed = OperationOutcome.model_validate_json(response.body)
    assert [i.expression for i in parsed.issue] == [["Bundle.entry[2].resource.valueInteger"], None]
    assert parsed.issue[1].location == ["http.Idempotency-Key"]
    assert {i.code for i in parsed.issue} == {"invalid"}


@pytest.mark.parametrize(
    ("status", "decision", "expected"),
    [
        (Status.RECEIVED, None, "received"),
        (Status.NOT_ROUTED, "ineligible", "rejected"),
        (Status.NOT_ROUTED, "needs_review", "on-hold"),
        (Status.ACCEPTED, None, "accepted"),
        (Status.CLOSED, None, "completed"),
        (Status.WITHDRAWN, None, "cancelled"),
    ],
)
def test_task_status_follows_the_referral_state(status: Status, decision: str | None, expected: str) -> None:
    assert task_status(status, decision) == expected


def test_every_state_has_a_task_status_and_the_task_is_valid_fhir() -> None:
    for status in Status:
        parsed = Task.model_validate(task("0b7f6c0e-5d0a-4f4e-9a51-3f1b2b8a9c11", "CLN-1", status))
        assert parsed.businessStatus is not None and parsed.businessStatus.text == status.value
        assert parsed.for_fhir is None  # no patient identity beyond the clinic's own reference
    assert capability_statement("http://127.0.0.1/fhir/r4")["fhirVersion"] == "4.0.1"


def test_null_items_in_lists_of_primitives_are_read_as_absent_not_a_crash() -> None:
    bundle = fhir_bundle()
    patient = fhir_entry(bundle, kind="Patient")
    bundle["entry"][patient]["resource"]["name"][0]["given"] = [None, "Maria"]
    bundle["entry"][0]["resource"]["instantiatesUri"] = [None]
    assert paths_of(bundle) == {"Bundle.entry[0].resource.instantiatesUri[0]"}
    bundle["entry"][0]["resource"]["instantiatesUri"] = [None, f"{codes.STUDY_PREFIX}UCART123-AMELI-01"]
    referral = map_bundle(bundle).referral
    assert referral.patient.given_name == "Maria" and referral.study == "UCART123-AMELI-01"
