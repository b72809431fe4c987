"""A process imports only what its role uses: every process starts from the ``trialroute`` command line,
so importing it must not pull in the site router's pandas and pgeocode (~50 MB resident in each process).
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("pandas", "pgeocode", "numpy")


def _modules_after(statement: str) -> set[str]:
    """The heavy modules imported by ``statement``, in a fresh interpreter (this one has imported more)."""
    probe = f"import json, sys; {statement}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_importing_the_command_line_does_not_import_pandas() -> None:
    assert _modules_after("import services.cli") == set()


def test_building_the_command_tree_does_not_import_pandas() -> None:
    """Every command and group is registered (what ``trialroute --help`` walks) without them."""
    assert (
        _modules_after("import typer.main, services.cli; typer.main.get_command(services.cli.app)") == set()
    )


def test_the_probe_sees_pandas_when_it_is_imported() -> None:
    """The check above can fail: the same probe reports the site router's geocoder once it loads."""
    statement = "from services.site_router.geo import Geocoder; Geocoder().warm(['BE'])"
    assert _modules_after(statement) >= {"pandas", "pgeocode"}


def test_the_site_router_geocodes_without_pandas_in_its_own_process() -> None:
    """With an index directory (the service's), pgeocode builds the index in a child process once; the
    service reads the compact index and never imports pandas itself."""
    statement = (
        "import tempfile; from pathlib import Path; from services.site_router.geo import Geocoder; "
        "g = Geocoder(index_dir=Path(tempfile.mkdtemp())); g.warm(['BE']); assert g.locate('1000', 'BE')"
    )
    assert _modules_after(statement) == set()


def test_the_site_router_with_a_trials_few_sites_never_imports_numpy() -> None:
    """The whole service (every role's modules) and its site index over the trial's sites rank without
    numpy (~11 MB resident); only an index of `ARRAY_INDEX_MIN_SITES` sites or more imports it."""
    sites = "[SiteView(f'S{i}', 40.0 + i / 10, -74.0, 'recruiting', 3, 0) for i in range(n)]"
    statement = (
        "import services.site_router.bootstrap; from services.site_router.domain import SiteIndex, SiteView, "
        f"ARRAY_INDEX_MIN_SITES as n; n -= 1; assert SiteIndex({sites}).choose(40.0, -74.0).site.code == 'S0'"
    )
    assert _modules_after(statement) == set()
    many = statement.replace("n -= 1", "n += 0")
    assert _modules_after(many) == {"numpy"}
