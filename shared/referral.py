"""The referral a partner clinic submits (version 1 of the contract in ``docs/referral.md``).

Intake validates ``POST /v1/referrals`` with :class:`ReferralPayload`; the eligibility service
receives :class:`ScreeningInput` (age in whole years, never the birth date) and the offline
evaluator builds one from a payload. Types are strict (no ``"1"`` for ``1``, no ``1`` for ``true``,
dates only as ``YYYY-MM-DD``) because a silently coerced clinical value would be a silently wrong
verdict. Unknown fields are ignored: the contract lets clients send more optional fields.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

__all__ = [
    "Cd123",
    "Cd123Method",
    "ClinicalData",
    "Diagnosis",
    "DiseaseStatus",
    "OrganFunction",
    "OrganStatus",
    "Patient",
    "PriorTherapy",
    "ReferralPayload",
    "Referrer",
    "ScreeningInput",
    "Sex",
]

_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")

Diagnosis = Literal["aml", "apl", "mds", "all", "other"]
DiseaseStatus = Literal["relapsed", "primary_refractory", "newly_diagnosed", "remission"]
Cd123Method = Literal["flow_cytometry", "immunohistochemistry", "other"]
OrganStatus = Literal["adequate", "inadequate", "unknown"]
Sex = Literal["female", "male", "other", "unknown"]


def _parse_day(value: Any, *, allow_never: bool = False) -> Any:
    """Accept a ``date`` or a ``YYYY-MM-DD`` string only (no timestamps, no datetimes)."""
    if value is None or (allow_never and value == "never"):
        return value
    if type(value) is date:
        return value
    if isinstance(value, str) and _ISO_DAY.fullmatch(value):
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise PydanticCustomError(
                "date_value", "not a calendar day: {reason}", {"reason": str(exc)}
            ) from exc
    expected = "a date as YYYY-MM-DD or 'never'" if allow_never else "a date as YYYY-MM-DD"
    raise PydanticCustomError("date_format", "expected {expected}", {"expected": expected})


def _day_or_never(value: Any) -> Any:
    return _parse_day(value, allow_never=True)


def _country_code(value: Any) -> Any:
    """Clinics write ``us`` as often as ``US``; the code itself is still checked by the pattern."""
    return value.strip().upper() if isinstance(value, str) else value


Day = Annotated[date, BeforeValidator(_parse_day)]
DayOrNever = Annotated[date | Literal["never"] | None, BeforeValidator(_day_or_never)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, strict=True)]
Phone = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40, strict=True)]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$"), BeforeValidator(_country_code)]
LanguageTag = Annotated[
    str, StringConstraints(strict=True, pattern=r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$", max_length=35)
]
Percent = Annotated[StrictFloat, Field(ge=0, le=100, allow_inf_nan=False)]
Ecog = Annotated[StrictInt, Field(ge=0, le=5)]
Count = Annotated[StrictInt, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Cd123(_Model):
    """CD123 status of the blasts; only a positive flow-cytometry result satisfies the study."""

    positive: StrictBool | None = None
    method: Cd123Method | None = None


class OrganFunction(_Model):
    """The last organ-function assessment; its date decides whether it is inside the screening window."""

    assessed_on: Day | None = None
    bone_marrow: OrganStatus | None = None
    renal: OrganStatus | None = None
    hepatic: OrganStatus | None = None
    pulmonary: OrganStatus | None = None
    cardiac: OrganStatus | None = None


class PriorTherapy(_Model):
    gene_or_cell_therapy: StrictBool | None = None
    allogeneic_sct_count: Count | None = None
    last_anti_cd20_on: DayOrNever = None


class ClinicalData(_Model):
    """The clinical block. Every field may be null or absent: that means "not known"."""

    diagnosis: Diagnosis | None = None
    disease_status: DiseaseStatus | None = None
    marrow_blast_percent: Percent | None = None
    marrow_assessed_on: Day | None = None
    cd123: Cd123 | None = None
    cns_leukemia: StrictBool | None = None
    ecog: Ecog | None = None
    organ_function: OrganFunction | None = None
    prior_therapy: PriorTherapy | None = None
    active_infection: StrictBool | None = None
    donor_identified: StrictBool | None = None
    transplant_strategy_defined: StrictBool | None = None


class Patient(_Model):
    given_name: Name
    family_name: Name
    date_of_birth: Day
    sex: Sex | None = None
    email: EmailStr | None = None
    phone: Phone | None = None
    preferred_language: LanguageTag = "en"
    postal_code: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20, strict=True)
    ]
    country: CountryCode
    consent_to_contact: StrictBool

    @field_validator("date_of_birth")
    @classmethod
    def _born_by_reference_day(cls, value: date, info: ValidationInfo) -> date:
        """Not in the future; the offline evaluator passes its ``--as-of`` day as ``context["today"]``."""
        context = info.context if isinstance(info.context, dict) else {}
        today = context.get("today") or date.today()
        if value > today:
            raise PydanticCustomError(
                "date_future", "must not be after {today}", {"today": today.isoformat()}
            )
        return value


class Referrer(_Model):
    name: Name
    email: EmailStr
    phone: Phone | None = None


def _empty_if_null(value: Any) -> Any:
    return {} if value is None else value


class ReferralPayload(_Model):
    """The full body of ``POST /v1/referrals``. ``study`` is checked against the deployment by the caller."""

    study: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64)] | None = None
    clinic_reference: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, strict=True)
    ]
    patient: Patient
    referrer: Referrer
    clinical: Annotated[ClinicalData, BeforeValidator(_empty_if_null)] = Field(default_factory=ClinicalData)


class ScreeningInput(_Model):
    """What the eligibility engine decides from: events carry the age in whole years, not the birth date."""

    age_years: Annotated[StrictInt, Field(ge=0)] | None
    clinical: ClinicalData
    referral_day: Day


EXAMPLE_REFERRAL: dict[str, Any] = {
    "study": "UCART123-AMELI-01",
    "clinic_reference": "CLN-2026-00042",
    "patient": {
        "given_name": "Maria",
        "family_name": "Lopez",
        "date_of_birth": "1968-03-14",
        "sex": "female",
        "email": "maria.lopez@example.com",
        "phone": "+1 212 555 0142",
        "preferred_language": "en",
        "postal_code": "10021",
        "country": "US",
        "consent_to_contact": True,
    },
    "referrer": {"name": "Dr. Ana Smith", "email": "asmith@clinic.example.org", "phone": "+1 212 555 0100"},
    "clinical": {
        "diagnosis": "aml",
        "disease_status": "relapsed",
        "marrow_blast_percent": 23.5,
        "marrow_assessed_on": "2026-11-02",
        "cd123": {"positive": True, "method": "flow_cytometry"},
        "cns_leukemia": False,
        "ecog": 1,
        "organ_function": {
            "assessed_on": "2026-11-05",
            "bone_marrow": "adequate",
            "renal": "adequate",
            "hepatic": "adequate",
            "pulmonary": "adequate",
            "cardiac": "adequate",
        },
        "prior_therapy": {
            "gene_or_cell_therapy": False,
            "allogeneic_sct_count": 1,
            "last_anti_cd20_on": "never",
        },
        "active_infection": False,
        "donor_identified": True,
        "transplant_strategy_defined": True,
    },
}
"""The example of the referral contract (``docs/referral.md``), verbatim; copy before changing it."""
