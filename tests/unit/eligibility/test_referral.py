"""The referral contract (docs/referral.md): what intake accepts and what the offline evaluator reads."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from shared.referral import EXAMPLE_REFERRAL as EXAMPLE
from shared.referral import ClinicalData, ReferralPayload, ScreeningInput
from tests.support.builders import referral_body

pytestmark = pytest.mark.unit

TODAY = date(2026, 11, 10)


def errors(data: Any) -> dict[str, str]:
    """``{"a.b": message}`` for every validation error, as intake would report them."""
    with pytest.raises(ValidationError) as caught:
        ReferralPayload.model_validate(data, context={"today": TODAY})
    return {".".join(str(p) for p in e["loc"]): e["msg"] for e in caught.value.errors()}


def test_the_example_of_referral_md_is_valid() -> None:
    payload = ReferralPayload.model_validate(EXAMPLE, context={"today": TODAY})
    assert payload.patient.date_of_birth == date(1968, 3, 14)
    assert payload.clinical.prior_therapy is not None
    assert payload.clinical.prior_therapy.last_anti_cd20_on == "never"
    assert payload.clinical.organ_function is not None
    assert payload.clinical.organ_function.assessed_on == date(2026, 11, 5)


def test_json_mode_gives_the_same_model() -> None:
    from_json = ReferralPayload.model_validate_json(json.dumps(EXAMPLE), context={"today": TODAY})
    assert from_json == ReferralPayload.model_validate(EXAMPLE, context={"today": TODAY})


def test_unknown_fields_are_ignored_at_every_level() -> None:
    data = referral_body(patient={"nickname": "M"}, clinical={"karnofsky": 80})
    data["extra_top"] = 1
    data["clinical"]["cd123"]["lab"] = "x"
    payload = ReferralPayload.model_validate(data, context={"today": TODAY})
    assert "nickname" not in payload.patient.model_dump()
    assert "karnofsky" not in payload.clinical.model_dump()


@pytest.mark.parametrize("clinical", [None, {}])
def test_a_missing_clinical_block_means_nothing_known(clinical: dict[str, Any] | None) -> None:
    data = referral_body()
    data["clinical"] = clinical
    assert ReferralPayload.model_validate(data, context={"today": TODAY}).clinical == ClinicalData()
    del data["clinical"]
    assert ReferralPayload.model_validate(data, context={"today": TODAY}).clinical == ClinicalData()


def test_every_clinical_field_may_be_null() -> None:
    nulls = {name: None for name in EXAMPLE["clinical"]}
    assert ReferralPayload.model_validate(
        referral_body(clinical=nulls), context={"today": TODAY}
    ).clinical == (ClinicalData())


def test_nested_clinical_fields_may_be_null() -> None:
    data = referral_body()
    data["clinical"]["cd123"] = {"positive": None, "method": None}
    data["clinical"]["organ_function"] = {"assessed_on": None, "renal": None}
    data["clinical"]["prior_therapy"] = {"last_anti_cd20_on": None}
    ReferralPayload.model_validate(data, context={"today": TODAY})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ecog", "1"),
        ("ecog", True),
        ("ecog", 1.0),
        ("ecog", 6),
        ("ecog", -1),
        ("marrow_blast_percent", "23.5"),
        ("marrow_blast_percent", 100.1),
        ("marrow_blast_percent", -0.1),
        ("marrow_blast_percent", True),
        ("marrow_blast_percent", float("nan")),
        ("cns_leukemia", "false"),
        ("cns_leukemia", 0),
        ("active_infection", "no"),
        ("donor_identified", 1),
        ("diagnosis", "AML"),
        ("diagnosis", "cml"),
        ("disease_status", "refractory"),
        ("marrow_assessed_on", "2026-11-2"),
        ("marrow_assessed_on", "2026-02-30"),
        ("marrow_assessed_on", "2026-11-02T00:00:00"),
        ("marrow_assessed_on", 1793577600),
    ],
)
def test_clinical_types_are_strict(field: str, value: Any) -> None:
    assert f"clinical.{field}" in errors(referral_body(clinical={field: value}))


def test_integral_blast_percent_is_a_number() -> None:
    payload = ReferralPayload.model_validate(
        referral_body(clinical={"marrow_blast_percent": 5}), context={"today": TODAY}
    )
    assert payload.clinical.marrow_blast_percent == 5.0


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("cd123", "method"), "flow"),
        (("cd123", "positive"), "yes"),
        (("organ_function", "renal"), "good"),
        (("organ_function", "assessed_on"), "05/11/2026"),
        (("prior_therapy", "allogeneic_sct_count"), -1),
        (("prior_therapy", "allogeneic_sct_count"), "1"),
        (("prior_therapy", "gene_or_cell_therapy"), "false"),
        (("prior_therapy", "last_anti_cd20_on"), "Never"),
        (("prior_therapy", "last_anti_cd20_on"), "2026-13-01"),
        (("prior_therapy", "last_anti_cd20_on"), 0),
    ],
)
def test_nested_clinical_fields_are_strict(path: tuple[str, str], value: Any) -> None:
    data = referral_body()
    data["clinical"][path[0]][path[1]] = value
    assert set(errors(data)) == {f"clinical.{path[0]}.{path[1]}"}


@pytest.mark.parametrize("value", ["never", "2026-09-01"])
def test_last_anti_cd20_is_a_date_or_never(value: str) -> None:
    data = referral_body()
    data["clinical"]["prior_therapy"]["last_anti_cd20_on"] = value
    payload = ReferralPayload.model_validate(data, context={"today": TODAY})
    assert payload.clinical.prior_therapy is not None
    expected = value if value == "never" else date.fromisoformat(value)
    assert payload.clinical.prior_therapy.last_anti_cd20_on == expected


def test_a_bad_calendar_day_is_named_as_such() -> None:
    data = referral_body(clinical={"marrow_assessed_on": "2026-02-30"})
    assert errors(data)["clinical.marrow_assessed_on"].startswith("not a calendar day")


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("patient", "given_name"),
        ("patient", "family_name"),
        ("patient", "date_of_birth"),
        ("patient", "postal_code"),
        ("patient", "country"),
        ("patient", "consent_to_contact"),
        ("referrer", "name"),
        ("referrer", "email"),
    ],
)
def test_required_fields(section: str, field: str) -> None:
    data = referral_body()
    del data[section][field]
    assert errors(data) == {f"{section}.{field}": "Field required"}


@pytest.mark.parametrize("field", ["clinic_reference", "patient", "referrer"])
def test_required_top_level_fields(field: str) -> None:
    data = referral_body()
    del data[field]
    assert errors(data) == {field: "Field required"}


@pytest.mark.parametrize("field", ["sex", "email", "phone", "preferred_language"])
def test_optional_patient_fields(field: str) -> None:
    data = referral_body()
    del data["patient"][field]
    del data["referrer"]["phone"]
    del data["study"]
    payload = ReferralPayload.model_validate(data, context={"today": TODAY})
    assert payload.study is None
    assert payload.patient.preferred_language == "en"


def test_date_of_birth_is_not_after_the_reference_day() -> None:
    assert errors(referral_body(patient={"date_of_birth": "2026-11-11"})) == {
        "patient.date_of_birth": "must not be after 2026-11-10"
    }
    born_today = referral_body(patient={"date_of_birth": "2026-11-10"})
    assert ReferralPayload.model_validate(born_today, context={"today": TODAY}).patient.date_of_birth == TODAY


def test_date_of_birth_defaults_to_the_real_today_without_a_context() -> None:
    with pytest.raises(ValidationError, match="must not be after"):
        ReferralPayload.model_validate(referral_body(patient={"date_of_birth": "2999-01-01"}))


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("patient", "email", "maria.lopez"),
        ("patient", "email", "maria@localhost"),
        ("referrer", "email", "not an email"),
        ("patient", "sex", "f"),
        ("patient", "country", "USA"),
        ("patient", "country", "U1"),
        ("patient", "preferred_language", "english language"),
        ("patient", "consent_to_contact", "yes"),
        ("patient", "given_name", ""),
        ("patient", "given_name", "   "),
        ("patient", "family_name", "x" * 101),
        ("patient", "postal_code", 10021),
    ],
)
def test_patient_and_referrer_rules(section: str, field: str, value: Any) -> None:
    assert f"{section}.{field}" in errors(referral_body(**{section: {field: value}}))


@pytest.mark.parametrize("value", ["", "x" * 65, 42])
def test_clinic_reference_is_1_to_64_characters(value: Any) -> None:
    data = referral_body()
    data["clinic_reference"] = value
    assert "clinic_reference" in errors(data)


def test_country_case_is_normalized_and_language_tags_are_bcp47() -> None:
    data = referral_body(patient={"country": " us", "preferred_language": "es-419"})
    payload = ReferralPayload.model_validate(data, context={"today": TODAY})
    assert payload.patient.country == "US"
    assert payload.patient.preferred_language == "es-419"


def test_models_are_frozen() -> None:
    payload = ReferralPayload.model_validate(EXAMPLE, context={"today": TODAY})
    with pytest.raises(ValidationError):
        payload.clinical.ecog = 0  # type: ignore[misc]


def test_screening_input_carries_an_age_not_a_birth_date() -> None:
    clinical = ClinicalData.model_validate(EXAMPLE["clinical"])
    inp = ScreeningInput.model_validate(
        {"age_years": 58, "clinical": EXAMPLE["clinical"], "referral_day": "2026-11-10"}
    )
    assert inp == ScreeningInput(age_years=58, clinical=clinical, referral_day=TODAY)
    assert ScreeningInput(age_years=None, clinical=ClinicalData(), referral_day=TODAY).age_years is None
    with pytest.raises(ValidationError):
        ScreeningInput(age_years=-1, clinical=clinical, referral_day=TODAY)


def test_the_clinical_block_survives_an_event_round_trip() -> None:
    """Intake dumps the block into the event as JSON; eligibility validates it back unchanged."""
    clinical = ReferralPayload.model_validate(EXAMPLE, context={"today": TODAY}).clinical
    dumped = clinical.model_dump(mode="json")
    assert dumped["prior_therapy"]["last_anti_cd20_on"] == "never"
    assert dumped["organ_function"]["assessed_on"] == "2026-11-05"
    assert ClinicalData.model_validate_json(json.dumps(dumped)) == clinical


def test_json_schemas_for_openapi() -> None:
    schema = ReferralPayload.model_json_schema()
    patient = schema["$defs"]["Patient"]["properties"]
    assert patient["country"]["pattern"] == "^[A-Z]{2}$"
    assert patient["date_of_birth"]["format"] == "date"
    last = schema["$defs"]["PriorTherapy"]["properties"]["last_anti_cd20_on"]["anyOf"]
    assert {"const": "never", "type": "string"} in last
    assert ScreeningInput.model_json_schema()["required"] == ["age_years", "clinical", "referral_day"]
