"""``screen``: the offline evaluator on the command line, one JSON line per referral file.

Mount it in the ``trialroute`` entry point with ``root.add_typer(app)`` (no name: the command joins
the root as ``trialroute screen``). Standalone, ``app`` has a single command, so typer runs it
directly: ``CliRunner().invoke(app, ["--as-of", "2026-11-10", "referral.json"])``.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from services.eligibility.rules import load_ruleset
from services.eligibility.screen import screen_files

__all__ = ["app"]

app = typer.Typer(help="Eligibility pre-screening of referral files.", add_completion=False)


def _day(value: str) -> date:
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return date.fromisoformat(value)
    except ValueError:
        pass
    raise typer.BadParameter(f"{value!r} is not a day as YYYY-MM-DD")


@app.command("screen")
def screen(
    files: Annotated[list[Path], typer.Argument(help="Referral JSON files, as a clinic would POST them.")],
    as_of: Annotated[
        date | None,
        typer.Option("--as-of", parser=_day, metavar="YYYY-MM-DD", help="Referral day (default: today)."),
    ] = None,
    ruleset: Annotated[
        str | None,
        typer.Option("--ruleset", help="Rule-set version (default: the newest packaged)."),
    ] = None,
    cohort: Annotated[
        str | None,
        typer.Option("--cohort", help="dose_escalation or dose_expansion (default: the rule set's)."),
    ] = None,
    screening_window_days: Annotated[
        int | None,
        typer.Option(
            "--screening-window-days", min=0, help="Organ-function window (default: the rule set's)."
        ),
    ] = None,
) -> None:
    """Print one JSON line per FILE (its assessment, or its error); exit 1 if any file failed."""
    try:
        rules = load_ruleset(ruleset)
        settings = rules.settings(cohort=cohort, screening_window_days=screening_window_days)
    except (LookupError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    day = as_of or date.today()
    failed = False
    for result, ok in screen_files(files, day, rules, settings):
        typer.echo(json.dumps(result, ensure_ascii=False))
        failed = failed or not ok
    if failed:
        raise typer.Exit(code=1)
