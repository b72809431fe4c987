"""insights' store migrations: one revision per module here (``m<NNNN>_<slug>.py``), applied by
``trialroute migrate insights``;
the next one is written by ``scripts/revision.sh insights "what changes"``
(docs/migrations.md)."""

from pathlib import Path

from services.insights import SERVICE
from services.insights.store import TABLES
from shared.migrations import Migrations

MIGRATIONS = Migrations(SERVICE, TABLES, Path(__file__).resolve().parent)
