"""Service stores for tests, made as a deployment makes them: by running the service's migrations."""

from __future__ import annotations

from shared.migrations import migrate, service_migrations


async def migrated(url: str, service: str) -> str:
    """``url``'s store at ``service``'s head revision (``trialroute migrate SERVICE``); returns ``url``."""
    await migrate(url, service_migrations(service))
    return url
