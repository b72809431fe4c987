"""The patient's name and contact, read from intake for a referral the coordinator's site accepted.

Intake decides (only the accepting site's coordinator gets them) and records every read in its audit
log; the portal asks with the coordinator's own access token, so the audit names the person. Nothing
read here is logged or stored: it goes straight into the page.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

_LABELS = {
    "given_name": "Given name",
    "family_name": "Family name",
    "date_of_birth": "Date of birth",
    "sex": "Sex",
    "phone": "Phone",
    "email": "Email",
    "postal_code": "Postal code",
    "country": "Country",
    "preferred_language": "Preferred language",
}
"""The contact fields shown, in this order, with their labels (others intake may add are not shown)."""


@dataclass
class PatientContacts:
    http: httpx.AsyncClient
    intake_url: str

    async def read(self, referral_id: uuid.UUID, access_token: str) -> list[tuple[str, str]] | None:
        """Label and value of each contact field, or None when intake cannot say now (down, refused):
        the page then says so instead of failing."""
        url = f"{self.intake_url.rstrip('/')}/v1/site/referrals/{referral_id}/contact"
        try:
            response = await self.http.get(url, headers={"Authorization": f"Bearer {access_token}"})
        except httpx.HTTPError as exc:
            log.warning(
                "patient contact of referral %s: intake unreachable (%s)", referral_id, type(exc).__name__
            )
            return None
        if response.status_code != 200:
            log.warning(
                "patient contact of referral %s: intake answered %s", referral_id, response.status_code
            )
            return None
        return labelled(response.json())


def labelled(body: Any) -> list[tuple[str, str]]:
    """The known contact fields of intake's answer (flat, or under ``patient``), labelled, in order;
    absent or null ones (phone and email without consent to contact) are left out."""
    fields = body.get("patient", body) if isinstance(body, dict) else {}
    if not isinstance(fields, dict):
        return []
    return [(label, str(fields[key])) for key, label in _LABELS.items() if fields.get(key) not in (None, "")]
