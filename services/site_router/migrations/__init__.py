"""site_router's store migrations: one revision per module here (``m<NNNN>_<slug>.py``), applied by
``trialroute migrate site_router``;
the next one is written by ``scripts/revision.sh site_router "what changes"``
(docs/migrations.md)."""

from pathlib import Path

from services.site_router import SERVICE
from services.site_router.store import TABLES
from shared.migrations import Migrations

MIGRATIONS = Migrations(SERVICE, TABLES, Path(__file__).resolve().parent)
