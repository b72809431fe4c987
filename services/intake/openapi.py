"""OpenAPI that a clinic can integrate from alone: every field described with an example, every error.

The request models are the shared contract (``shared.referral``), which carries no documentation of
its own; the descriptions of ``docs/referral.md`` are added here, to the generated schema, rather than
by copying the models.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from shared.referral import EXAMPLE_REFERRAL as EXAMPLE

REFERRAL_EXAMPLE = {"referral": {"summary": "the example of the referral contract", "value": EXAMPLE}}

_UNKNOWN = "; null or absent means not known"
DESCRIPTIONS: dict[str, dict[str, str]] = {
    "ReferralCreate": {
        "study": "optional; this deployment's study when absent; any other study is a 422",
        "clinic_reference": "1-64 characters: the clinic's own id for the case, unique among its open "
        "referrals; never another system's medical record number",
        "patient": "the patient; names, birth date, email and phone never leave intake",
        "referrer": "the referring physician",
        "clinical": "clinical facts; any field may be null or absent, meaning not known (the criterion it "
        "decides becomes unknown, never not met)",
    },
    "Patient": {
        "given_name": "1-100 characters",
        "family_name": "1-100 characters",
        "date_of_birth": "YYYY-MM-DD, not in the future; only the age in whole years leaves intake",
        "sex": "optional: female, male, other or unknown",
        "email": "optional; without it the patient gets no email",
        "phone": "optional, up to 40 characters",
        "preferred_language": "BCP 47 tag; default en",
        "postal_code": "1-20 characters; with the country it finds the nearest site (an unknown postal "
        "code is not an error here: routing reports it)",
        "country": "ISO 3166-1 alpha-2 (us and US are both accepted)",
        "consent_to_contact": "false: the patient is never emailed",
    },
    "Referrer": {"name": "required, 1-100 characters", "email": "required", "phone": "optional"},
    "ClinicalData": {
        "diagnosis": "aml, apl, mds, all or other; anything but aml/apl fails rr_aml" + _UNKNOWN,
        "disease_status": "relapsed or primary_refractory satisfy rr_aml; also newly_diagnosed, remission"
        + _UNKNOWN,
        "marrow_blast_percent": "number 0-100" + _UNKNOWN,
        "marrow_assessed_on": "YYYY-MM-DD" + _UNKNOWN,
        "cd123": "met only when positive by flow cytometry; positive by another method is unknown",
        "cns_leukemia": "boolean" + _UNKNOWN,
        "ecog": "integer 0-5" + _UNKNOWN,
        "organ_function": "any inadequate: not met; all five adequate within the screening window: met",
        "prior_therapy": "earlier treatments",
        "active_infection": "boolean" + _UNKNOWN,
        "donor_identified": "with transplant_strategy_defined, both true: donor_strategy met",
        "transplant_strategy_defined": "with donor_identified, both true: donor_strategy met",
    },
    "Cd123": {"positive": "boolean", "method": "flow_cytometry, immunohistochemistry or other"},
    "OrganFunction": {
        "assessed_on": "YYYY-MM-DD of the assessment; decides whether it is inside the screening window",
        **{s: "adequate, inadequate or unknown" for s in ("bone_marrow", "renal", "hepatic", "pulmonary")},
        "cardiac": "adequate, inadequate or unknown",
    },
    "PriorTherapy": {
        "gene_or_cell_therapy": "includes any CAR product",
        "allogeneic_sct_count": "integer >= 0",
        "last_anti_cd20_on": "YYYY-MM-DD or never; within 3 months before the referral day: present",
    },
}
EXAMPLES: dict[str, dict[str, Any]] = {
    "ReferralCreate": EXAMPLE,
    "Patient": EXAMPLE["patient"],
    "Referrer": EXAMPLE["referrer"],
    "ClinicalData": EXAMPLE["clinical"],
    "Cd123": EXAMPLE["clinical"]["cd123"],
    "OrganFunction": EXAMPLE["clinical"]["organ_function"],
    "PriorTherapy": EXAMPLE["clinical"]["prior_therapy"],
    "AmendmentCreate": {"clinical": EXAMPLE["clinical"]},
}

_PROBLEMS: dict[int, tuple[str, dict[str, dict[str, Any]]]] = {
    401: (
        "no valid bearer token",
        {"missing": {"title": "Unauthorized", "detail": "a bearer token is required"}},
    ),
    403: (
        "the token lacks the scope, or does not act for a clinic",
        {"scope": {"title": "Forbidden", "detail": "the token lacks the scope referrals:write"}},
    ),
    404: (
        "no such referral for this clinic (another clinic's referral is not found either)",
        {"absent": {"title": "Not found", "detail": "no such referral for this clinic"}},
    ),
    409: (
        "a duplicate clinic_reference, a state that forbids the change, or an Idempotency-Key in flight",
        {
            "duplicate": {
                "title": "Conflict",
                "detail": "an open referral with this clinic_reference exists; amend or withdraw it instead",
                "existing_id": "0b7f6c0e-5d0a-4f4e-9a51-3f1b2b8a9c11",
            },
            "accepted": {
                "title": "Conflict",
                "detail": "the site accepted the referral; it can no longer be amended; contact the site",
                "current_status": "accepted",
            },
            "in_flight": {
                "title": "Conflict",
                "detail": "a request with this Idempotency-Key is still in progress; retry later",
            },
        },
    ),
    413: (
        "the body exceeds 64 KiB",
        {"too_large": {"title": "Payload too large", "detail": "the body exceeds 65536 bytes"}},
    ),
    415: (
        "the body is not JSON",
        {"media": {"title": "Unsupported media type", "detail": "send application/json, not text/plain"}},
    ),
    422: (
        "invalid fields (all of them, each with its JSON path and reason), an unknown study, or an "
        "Idempotency-Key reused with another body",
        {
            "invalid": {
                "title": "Unprocessable content",
                "detail": "2 invalid field(s)",
                "errors": [
                    {"field": "patient.date_of_birth", "reason": "must not be after 2026-11-10"},
                    {"field": "clinical.ecog", "reason": "Input should be less than or equal to 5"},
                ],
            }
        },
    ),
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entries of these error statuses (their content is fixed up by ``enrich``)."""
    from services.intake.schemas import Problem

    return {code: {"model": Problem, "description": _PROBLEMS[code][0]} for code in codes}


def enrich(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the contract's descriptions and examples, and make every error ``application/problem+json``."""
    for name, component in schema.get("components", {}).get("schemas", {}).items():
        docs, examples = DESCRIPTIONS.get(name, {}), EXAMPLES.get(name, {})
        for field, prop in component.get("properties", {}).items():
            if field in docs and "description" not in prop:
                prop["description"] = docs[field]
            if "examples" not in prop and "example" not in prop and field in examples:
                prop["examples"] = [copy.deepcopy(examples[field])]
        if name in EXAMPLES and "examples" not in component:
            component["examples"] = [copy.deepcopy(EXAMPLES[name])]
    components = schema.get("components", {}).get("schemas", {})
    for component in components.values():
        if "properties" in component and "examples" not in component:
            component["examples"] = [_example_of(component, components)]
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            for code, response in operation.get("responses", {}).items():
                if int(code) >= 400 and int(code) in _PROBLEMS and not path.startswith("/fhir/"):
                    response["content"] = _problem_content(int(code), path)
    return schema


def _example_of(node: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    """A whole example object assembled from its fields' examples, following references."""
    if depth > 8:
        return None
    if "$ref" in node:
        target = components[node["$ref"].rsplit("/", 1)[-1]]
        if target.get("examples"):
            return copy.deepcopy(target["examples"][0])
        return _example_of(target, components, depth + 1)
    if node.get("examples"):
        return copy.deepcopy(node["examples"][0])
    if "properties" in node:
        return {f: _example_of(p, components, depth + 1) for f, p in node["properties"].items()}
    if node.get("type") == "array" and "items" in node:
        return [_example_of(node["items"], components, depth + 1)]
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        return _example_of(branches[0], components, depth + 1) if branches else None
    if "enum" in node:
        return node["enum"][0]
    return None


def _problem_content(code: int, path: str) -> dict[str, Any]:
    examples = {
        name: {"value": {"type": "about:blank", "status": code, "instance": path, **body}}
        for name, body in _PROBLEMS[code][1].items()
    }
    return {
        "application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"},
            "examples": examples,
        }
    }


def install(app: FastAPI) -> None:
    """Serve the enriched document (built once, on first request)."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    enriched = False

    def openapi() -> dict[str, Any]:
        nonlocal enriched
        if not enriched:
            app.openapi_schema = enrich(generate())
            enriched = True
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
