"""Which referral fields settle each criterion: its JSON path (docs/referral.md) and FHIR element
(docs/fhir.md).

Eligibility owns the criteria and their verdicts (docs/trial/criteria.md); intake owns the referral and
its FHIR mapping. An information request names, for each criterion left ``unknown``, the fields a clinic
can send to settle it. This table is the one place that joins the two, kept beside the referral model
so both services read it, and checked against eligibility's registered evaluators by a unit test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_TR = "TR"
"""Short for the project CodeSystem ``https://trialroute.example.org/fhir/CodeSystem/referral``."""


@dataclass(frozen=True, slots=True)
class SettlingField:
    """A referral field: its dotted JSON path in the referral and the FHIR element it is read from."""

    json_path: str
    fhir: str


def _obs(code: str, value: str, system: str = _TR) -> str:
    return f"Observation[{system} {code}].{value}"


CRITERION_FIELDS: Mapping[str, tuple[SettlingField, ...]] = {
    "age": (SettlingField("patient.date_of_birth", "Patient.birthDate"),),
    "rr_aml": (
        SettlingField("clinical.diagnosis", "Condition.code"),
        SettlingField("clinical.disease_status", "Condition.stage.summary"),
    ),
    "marrow_blasts": (
        SettlingField("clinical.marrow_blast_percent", _obs("11150-2", "valueQuantity.value", "LOINC")),
    ),
    "cd123_positive": (
        SettlingField("clinical.cd123.positive", _obs("cd123", "valueCodeableConcept")),
        SettlingField("clinical.cd123.method", _obs("cd123", "method")),
    ),
    "ecog": (SettlingField("clinical.ecog", _obs("89247-1", "valueInteger", "LOINC")),),
    "organ_function": (
        *(
            SettlingField(
                f"clinical.organ_function.{system}",
                _obs(f"organ-function-{system.replace('_', '-')}", "valueCodeableConcept"),
            )
            for system in ("bone_marrow", "renal", "hepatic", "pulmonary", "cardiac")
        ),
        SettlingField(
            "clinical.organ_function.assessed_on", "Observation[TR organ-function-*].effectiveDateTime"
        ),
    ),
    "donor_strategy": (
        SettlingField("clinical.donor_identified", _obs("donor-identified", "valueBoolean")),
        SettlingField(
            "clinical.transplant_strategy_defined", _obs("transplant-strategy-defined", "valueBoolean")
        ),
    ),
    "apl_or_cns": (
        SettlingField("clinical.diagnosis", "Condition.code"),
        SettlingField("clinical.cns_leukemia", _obs("cns-leukemia", "valueBoolean")),
    ),
    "prior_gene_cell_therapy": (
        SettlingField(
            "clinical.prior_therapy.gene_or_cell_therapy", _obs("prior-gene-or-cell-therapy", "valueBoolean")
        ),
    ),
    "prior_allo_sct": (
        SettlingField(
            "clinical.prior_therapy.allogeneic_sct_count", _obs("allogeneic-sct-count", "valueInteger")
        ),
    ),
    "recent_anti_cd20": (
        SettlingField(
            "clinical.prior_therapy.last_anti_cd20_on",
            _obs("last-anti-cd20", "valueDateTime") + " (or valueCodeableConcept TR never)",
        ),
    ),
    "active_infection": (
        SettlingField("clinical.active_infection", _obs("active-infection", "valueBoolean")),
    ),
}
"""Every criterion id of docs/trial/criteria.md, with the fields its verdict is decided from."""


def _value(referral: Mapping[str, Any], json_path: str) -> Any:
    node: Any = referral
    for part in json_path.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def settling_fields(criterion_id: str, referral: Mapping[str, Any]) -> tuple[SettlingField, ...]:
    """The fields to send to settle ``criterion_id``: those absent (or null) in ``referral`` (a dict
    with the referral's ``clinical`` block, and ``patient`` if known); when none is absent (the values
    given do not settle it: a CD123 result by immunohistochemistry, an organ-function assessment outside
    the screening window), all of the criterion's fields, to be corrected or brought up to date."""
    fields = CRITERION_FIELDS.get(criterion_id, ())
    missing = tuple(
        f for f in fields if not f.json_path.startswith("patient.") and _value(referral, f.json_path) is None
    )
    return missing or fields
