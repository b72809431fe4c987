"""The offline evaluator: ``screen_files`` and the ``screen`` command."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from services.eligibility.cli import app
from services.eligibility.domain import StudySettings
from services.eligibility.rules import load_ruleset
from services.eligibility.screen import screen_files
from shared.referral import EXAMPLE_REFERRAL as EXAMPLE
from tests.support.builders import referral_body

pytestmark = pytest.mark.unit

AS_OF = date(2026, 11, 10)
runner = CliRunner()


def write(directory: Path, name: str, data: Any) -> Path:
    path = directory / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def screen(
    paths: list[Path], as_of: date = AS_OF, settings: StudySettings | None = None
) -> list[tuple[dict, bool]]:
    return list(screen_files(paths, as_of, load_ruleset(), settings or StudySettings()))


def verdicts(result: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["verdict"] for c in result["criteria"]}


# --- screen_files ---------------------------------------------------------------------------------


def test_the_example_referral_is_eligible(tmp_path: Path) -> None:
    path = write(tmp_path, "example.json", EXAMPLE)
    [(result, ok)] = screen([path])
    assert ok
    assert {k: result[k] for k in ("file", "decision", "score", "ruleset")} == {
        "file": str(path),
        "decision": "eligible",
        "score": 1.0,
        "ruleset": "ucart123-v1",
    }
    assert len(result["criteria"]) == 12
    assert set(result["criteria"][0]) == {"id", "verdict", "reason"}


@pytest.mark.parametrize(
    ("born", "verdict"),
    [("2008-11-11", "not_met"), ("2008-11-10", "met"), ("1961-11-10", "met"), ("1960-11-10", "not_met")],
)
def test_age_is_counted_on_the_as_of_day(tmp_path: Path, born: str, verdict: str) -> None:
    path = write(tmp_path, "r.json", referral_body(patient={"date_of_birth": born}))
    [(result, _)] = screen([path])
    assert verdicts(result)["age"] == verdict


def test_the_as_of_day_moves_every_window(tmp_path: Path) -> None:
    path = write(tmp_path, "r.json", EXAMPLE)
    [(later, _)] = screen([path], as_of=date(2026, 12, 4))  # assessment of 5 Nov is 29 days old
    assert (later["decision"], verdicts(later)["organ_function"]) == ("needs_review", "unknown")


def test_invalid_json_and_invalid_referrals_are_reported_in_order(tmp_path: Path) -> None:
    paths = [
        write(tmp_path, "a.json", EXAMPLE),
        write(tmp_path, "b.json", '{"clinic_reference": '),
        write(tmp_path, "c.json", referral_body(patient={"date_of_birth": "2027-01-01"})),
        tmp_path / "missing.json",
        write(tmp_path, "d.json", referral_body(clinical={"ecog": 3})),
    ]
    results = screen(paths)
    assert [(r["file"], ok) for r, ok in results] == [
        (str(p), ok) for p, ok in zip(paths, [1, 0, 0, 0, 1], strict=True)
    ]
    assert results[1][0] == {
        "file": str(paths[1]),
        "error": "$: invalid JSON: Expecting value at line 1 column 22",
    }
    assert results[2][0]["error"] == "patient.date_of_birth: must not be after 2026-11-10"
    assert results[3][0]["error"].startswith("$: cannot read the file")
    assert results[4][0]["decision"] == "ineligible"


def test_every_invalid_field_is_named(tmp_path: Path) -> None:
    data = referral_body()
    del data["patient"]["given_name"]
    data["clinical"]["ecog"] = "1"
    data["clinical"]["prior_therapy"]["last_anti_cd20_on"] = "last spring"
    [(result, ok)] = screen([write(tmp_path, "r.json", data)])
    assert not ok
    assert result["error"].split("; ") == [
        "patient.given_name: Field required",
        "clinical.ecog: Input should be a valid integer",
        "clinical.prior_therapy.last_anti_cd20_on: expected a date as YYYY-MM-DD or 'never'",
    ]


@pytest.mark.parametrize(("content", "error"), [("[]", "$: Input should be"), ("\xff", "$: ")])
def test_a_file_that_is_not_a_referral_object(tmp_path: Path, content: str, error: str) -> None:
    path = tmp_path / "r.json"
    path.write_bytes(content.encode("latin-1"))
    [(result, ok)] = screen([path])
    assert not ok and result["error"].startswith(error)


def test_another_study_is_refused_and_no_study_means_this_one(tmp_path: Path) -> None:
    other = write(tmp_path, "other.json", {**EXAMPLE, "study": "OTHER-01"})
    unnamed = write(tmp_path, "unnamed.json", {k: v for k, v in EXAMPLE.items() if k != "study"})
    [(refused, refused_ok), (accepted, accepted_ok)] = screen([other, unnamed])
    assert (refused_ok, refused["error"].startswith("study: unknown study 'OTHER-01'")) == (False, True)
    assert (accepted_ok, accepted["decision"]) == (True, "eligible")


def test_the_cohort_setting_reaches_the_engine(tmp_path: Path) -> None:
    path = write(tmp_path, "r.json", referral_body(clinical={"donor_identified": False}))
    [(escalation, _)] = screen([path])
    [(expansion, _)] = screen([path], settings=StudySettings(cohort="dose_expansion"))
    assert (escalation["decision"], expansion["decision"]) == ("ineligible", "eligible")
    assert verdicts(expansion)["donor_strategy"] == "not_applicable"


# --- the screen command ---------------------------------------------------------------------------


def lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines()]


def test_cli_prints_one_json_line_per_file(tmp_path: Path) -> None:
    first = write(tmp_path, "1.json", EXAMPLE)
    second = write(tmp_path, "2.json", referral_body(clinical={"ecog": None}))
    outcome = runner.invoke(app, ["--as-of", "2026-11-10", str(first), str(second)])
    assert outcome.exit_code == 0, outcome.output
    assert [(r["file"], r["decision"]) for r in lines(outcome.output)] == [
        (str(first), "eligible"),
        (str(second), "needs_review"),
    ]


def test_cli_exits_1_after_printing_every_file(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.json", "not json")
    good = write(tmp_path, "good.json", EXAMPLE)
    outcome = runner.invoke(app, ["--as-of", "2026-11-10", str(bad), str(good)])
    assert outcome.exit_code == 1
    printed = lines(outcome.output)
    assert printed[0] == {"file": str(bad), "error": "$: invalid JSON: Expecting value at line 1 column 1"}
    assert printed[1]["decision"] == "eligible"


def test_cli_as_of_decides_the_age(tmp_path: Path) -> None:
    path = write(tmp_path, "r.json", referral_body(patient={"date_of_birth": "1960-11-11"}))
    before = lines(runner.invoke(app, ["--as-of", "2026-11-10", str(path)]).output)[0]
    on_birthday = lines(runner.invoke(app, ["--as-of", "2026-11-11", str(path)]).output)[0]
    assert (verdicts(before)["age"], verdicts(on_birthday)["age"]) == ("met", "not_met")


def test_cli_defaults_to_today(tmp_path: Path) -> None:
    outcome = runner.invoke(app, [str(write(tmp_path, "r.json", EXAMPLE))])
    assert outcome.exit_code == 0
    assert lines(outcome.output)[0]["decision"] in {"eligible", "needs_review", "ineligible"}


@pytest.mark.parametrize("day", ["2026-11-31", "10/11/2026", "20261110", "today"])
def test_cli_refuses_a_bad_as_of(tmp_path: Path, day: str) -> None:
    outcome = runner.invoke(app, ["--as-of", day, str(write(tmp_path, "r.json", EXAMPLE))])
    assert outcome.exit_code == 2


@pytest.mark.parametrize(
    "option", [["--ruleset", "ucart123-v9"], ["--cohort", "phase_2"], ["--screening-window-days", "-1"]]
)
def test_cli_refuses_bad_settings(tmp_path: Path, option: list[str]) -> None:
    outcome = runner.invoke(app, [*option, str(write(tmp_path, "r.json", EXAMPLE))])
    assert outcome.exit_code == 2


def test_cli_settings_options(tmp_path: Path) -> None:
    path = write(tmp_path, "r.json", referral_body(clinical={"donor_identified": False}))
    args = ["--as-of", "2026-12-01", "--cohort", "dose_expansion", "--screening-window-days", "26", str(path)]
    [result] = lines(runner.invoke(app, args).output)
    assert (result["decision"], verdicts(result)["organ_function"]) == ("eligible", "met")


def test_cli_requires_a_file() -> None:
    assert runner.invoke(app, []).exit_code == 2


def test_the_command_mounts_as_trialroute_screen(tmp_path: Path) -> None:
    root = typer.Typer()

    @root.command("version")
    def version() -> None:
        typer.echo("0")

    root.add_typer(app)
    outcome = runner.invoke(
        root, ["screen", "--as-of", "2026-11-10", str(write(tmp_path, "r.json", EXAMPLE))]
    )
    assert outcome.exit_code == 0, outcome.output
    assert lines(outcome.output)[0]["decision"] == "eligible"
