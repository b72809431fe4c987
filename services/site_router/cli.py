"""``trialroute sites``: the site router's staff commands (mounted by ``services/cli.py``).

    trialroute sites import [FILE]     upsert sites by code (default: the shipped trial sites)
    trialroute sites import --ctgov RECORD [--codes FILE]
                                       upsert a ClinicalTrials.gov record's locations (ctgov.py)
    trialroute sites list              one line per site with its slots

The import is also a plain function (``services.site_router.sites.import_sites(db, path)``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:  # imported by the commands when they run: every process imports this module
    from services.site_router import store
    from services.site_router.config import SiteRouterSettings
    from services.site_router.sites import ImportReport

__all__ = ["app"]

app = typer.Typer(help="Study sites (site router).", no_args_is_help=True, add_completion=False)


async def _import(settings: SiteRouterSettings, path: Path, ctgov: Path | None, codes: Path) -> ImportReport:
    from services.site_router.geo import Geocoder
    from services.site_router.migrations import MIGRATIONS
    from services.site_router.sites import import_ctgov, import_sites
    from shared.db import Database
    from shared.migrations import prepare_store

    db = Database(settings.database_url)
    geocoder = Geocoder(index_dir=settings.geonames_index_dir)
    try:
        await prepare_store(db, MIGRATIONS, settings)
        if ctgov is None:
            return await import_sites(db, path, geocoder)
        return await import_ctgov(
            db, ctgov, geocoder, codes_file=codes, default_capacity=settings.ctgov_default_capacity
        )
    finally:
        await db.dispose()


@app.command("import")
def import_command(
    file: Annotated[
        Path | None,
        typer.Argument(help="sites JSON ({'sites': [...]} or a list); default: the trial's sites"),
    ] = None,
    ctgov: Annotated[
        Path | None,
        typer.Option(
            "--ctgov",
            help="a ClinicalTrials.gov API v2 study record (JSON) instead of a sites file; capacities "
            "already set are kept, new sites get SITE_ROUTER_CTGOV_DEFAULT_CAPACITY",
        ),
    ] = None,
    codes: Annotated[
        Path | None,
        typer.Option(
            help="with --ctgov: {'codes': {facility: site code}} for sites that have a code; default: "
            "the codes shipped for the trial's sites"
        ),
    ] = None,
) -> None:
    """Create or update sites by code; coordinates come from their postal codes."""
    from services.site_router.config import SiteRouterSettings
    from services.site_router.ctgov import SHIPPED_CODES_FILE
    from services.site_router.sites import SEED_FILE, SiteImportError

    try:
        report = asyncio.run(
            _import(SiteRouterSettings(), file or SEED_FILE, ctgov, codes or SHIPPED_CODES_FILE)
        )
    except SiteImportError as exc:
        for problem in exc.problems:
            typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"created {len(report.created)} ({' '.join(report.created) or '-'}), "
        f"updated {len(report.updated)} ({' '.join(report.updated) or '-'}), "
        f"routed from the waitlist {report.routed_from_waitlist}"
    )


async def _list(settings: SiteRouterSettings) -> list[store.Site]:
    from services.site_router import store
    from services.site_router.migrations import MIGRATIONS
    from shared.db import Database
    from shared.migrations import prepare_store

    db = Database(settings.database_url)
    try:
        await prepare_store(db, MIGRATIONS, settings)
        async with db.session() as session:
            return list(await store.list_sites(session))
    finally:
        await db.dispose()


@app.command("list")
def list_command() -> None:
    """One tab-separated line per site: code, status, open/capacity, city, country."""
    from services.site_router.config import SiteRouterSettings

    for site in asyncio.run(_list(SiteRouterSettings())):
        typer.echo(
            f"{site.code}\t{site.status}\t{site.open_count}/{site.capacity}\t{site.city}\t{site.country}"
        )
