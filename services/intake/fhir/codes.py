"""The code systems and codes a referral Bundle is read by (the table in docs/fhir.md).

LOINC and SNOMED CT where they have a code for the fact; the project's CodeSystem ``REFERRAL`` where
they do not (the study's own vocabulary: organ-function verdicts, prior-therapy facts, ...).
"""

from __future__ import annotations

from typing import Final

LOINC: Final = "http://loinc.org"
SNOMED: Final = "http://snomed.info/sct"
UCUM: Final = "http://unitsofmeasure.org"
CONDITION_CLINICAL: Final = "http://terminology.hl7.org/CodeSystem/condition-clinical"
IDENTIFIER_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v2-0203"
PLACER: Final = "PLAC"
"""The identifier type of the clinic's own id of the referral (its placer order number)."""

BASE: Final = "https://trialroute.example.org/fhir"
REFERRAL: Final = f"{BASE}/CodeSystem/referral"
"""The project's CodeSystem: facts and values that LOINC and SNOMED CT do not code."""
REFERRAL_STATUS: Final = f"{BASE}/CodeSystem/referral-status"
"""A Task's ``businessStatus``: intake's states (services.intake.domain.Status), verbatim."""
CRITERION: Final = f"{BASE}/CodeSystem/criterion"
"""A Task ``input``'s type: a criterion id of docs/trial/criteria.md (or ``question``, a site's words)."""
STUDY_PREFIX: Final = f"{BASE}/ResearchStudy/"
"""``ServiceRequest.instantiatesUri``: this prefix, then the study id (e.g. ``UCART123-AMELI-01``)."""

# --- LOINC -----------------------------------------------------------------------------------------
MARROW_BLASTS: Final = "11150-2"
"""Blasts/100 cells in bone marrow (a percentage: ``valueQuantity``, unit ``%``)."""
ECOG: Final = "89247-1"
"""ECOG performance status score (``valueInteger`` 0-5)."""
LABS: Final = {
    "2160-0": "Creatinine [Mass/volume] in Serum or Plasma",
    "1975-2": "Bilirubin.total [Mass/volume] in Serum or Plasma",
    "1742-6": "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
    "1920-8": "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
    "10230-1": "Left ventricular Ejection fraction",
}
"""Organ-function labs: accepted as the evidence of an organ-function verdict, never judged here (the
study publishes no thresholds; docs/trial/criteria.md)."""

# --- SNOMED CT -------------------------------------------------------------------------------------
DIAGNOSES: Final = {
    "91861009": "aml",  # Acute myeloid leukemia, disease (disorder)
    "110004001": "apl",  # Acute promyelocytic leukemia, FAB M3 (disorder)
    "109995007": "mds",  # Myelodysplastic syndrome (disorder)
    "91857003": "all",  # Acute lymphoid leukemia, disease (disorder)
}
POSITIVE: Final = "10828004"
NEGATIVE: Final = "260385009"
IMMUNOHISTOCHEMISTRY: Final = "117617002"
REFERRAL_PROCEDURE: Final = "3457005"
"""Patient referral (procedure): ``ServiceRequest.code`` in the examples; not required."""

# --- condition-clinical ----------------------------------------------------------------------------
CLINICAL_STATUS: Final = {"relapse": "relapsed", "recurrence": "relapsed", "remission": "remission"}
"""``Condition.clinicalStatus`` codes that say the disease status; ``active`` alone does not."""

# --- the project's CodeSystem (REFERRAL) -----------------------------------------------------------
DISEASE_STATUS: Final = {
    "relapsed": "relapsed",
    "primary-refractory": "primary_refractory",
    "newly-diagnosed": "newly_diagnosed",
    "remission": "remission",
}
"""``Condition.stage.summary``: the disease status in the study's words."""
OTHER_DIAGNOSIS: Final = "other-diagnosis"
CD123: Final = "cd123"
CD123_METHODS: Final = {"flow-cytometry": "flow_cytometry", "immunohistochemistry": "immunohistochemistry"}
OTHER_METHOD: Final = "other-method"
ORGAN_SYSTEMS: Final = {
    "organ-function-bone-marrow": "bone_marrow",
    "organ-function-renal": "renal",
    "organ-function-hepatic": "hepatic",
    "organ-function-pulmonary": "pulmonary",
    "organ-function-cardiac": "cardiac",
}
ORGAN_STATUS: Final = ("adequate", "inadequate", "unknown")
BOOLEAN_FACTS: Final = {
    "cns-leukemia": ("cns_leukemia",),
    "active-infection": ("active_infection",),
    "donor-identified": ("donor_identified",),
    "transplant-strategy-defined": ("transplant_strategy_defined",),
    "prior-gene-or-cell-therapy": ("prior_therapy", "gene_or_cell_therapy"),
}
"""Yes/no facts: an Observation with ``valueBoolean``."""
ALLOGENEIC_SCT_COUNT: Final = "allogeneic-sct-count"
LAST_ANTI_CD20: Final = "last-anti-cd20"
NEVER: Final = "never"
