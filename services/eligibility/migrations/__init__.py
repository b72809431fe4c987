"""eligibility's store migrations: one revision per module here (``m<NNNN>_<slug>.py``), applied by
``trialroute migrate eligibility``;
the next one is written by ``scripts/revision.sh eligibility "what changes"``
(docs/migrations.md)."""

from pathlib import Path

from services.eligibility import SERVICE
from services.eligibility.store import TABLES
from shared.migrations import Migrations

MIGRATIONS = Migrations(SERVICE, TABLES, Path(__file__).resolve().parent)
