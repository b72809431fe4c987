"""HL7 FHIR R4 in front of intake: a referral Bundle in, a Task per referral out (docs/fhir.md).

The Bundle is parsed with ``fhir.resources`` (its R4B models: fhir.resources 8 ships R5 as the default
and R4B, which reads R4 JSON for every resource used here) and mapped to the same ``ReferralCreate`` the
JSON API takes, so screening, idempotency and tenancy are the JSON routes' own.
"""
