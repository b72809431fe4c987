"""The event contract's documents agree with the models: the generated schemas and the topics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.contracts import DEAD_LETTER_FILE, ENVELOPE_FILE, REGENERATE, render, schema_files, write
from shared.events import DEAD_LETTER_SUFFIX, EVENT_TYPES, TOPICS

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[3] / "docs"
SCHEMAS = DOCS / "schemas"


def test_docs_schemas_are_what_the_event_models_generate() -> None:
    expected = {name: render(schema) for name, schema in schema_files().items()}
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in SCHEMAS.glob("*.json")}
    stale = sorted(n for n in on_disk if n not in expected)
    missing = sorted(n for n in expected if n not in on_disk)
    differ = sorted(n for n in expected if n in on_disk and on_disk[n] != expected[n])
    assert not (stale or missing or differ), (
        f"docs/schemas is out of date with shared/events.py (stale {stale}, missing {missing}, "
        f"differ {differ}); run: {REGENERATE}"
    )


def test_one_schema_per_registered_type_and_version_plus_the_envelope_and_dead_letter() -> None:
    names = set(schema_files())
    assert names == {ENVELOPE_FILE, DEAD_LETTER_FILE} | {f"{t}.v{v}.json" for t, v in EVENT_TYPES}
    screened = schema_files()["referral.screened.v1.json"]
    assert screened["$schema"].endswith("/draft/2020-12/schema")
    assert {"decision", "score", "criteria", "routable"} <= set(screened["required"])


def test_writing_is_deterministic_and_removes_stale_files(tmp_path: Path) -> None:
    (tmp_path / "referral.gone.v1.json").write_text("{}\n")
    write(tmp_path)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    write(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == first
    assert "referral.gone.v1.json" not in first
    text = first[ENVELOPE_FILE].decode()
    assert text.endswith("}\n") and json.loads(text)["title"] == "Envelope"


def test_every_topic_and_its_dead_letter_topic_is_documented() -> None:
    events_doc = (DOCS / "events.md").read_text(encoding="utf-8")
    undocumented = [t for t in TOPICS if f"`{t}`" not in events_doc]
    assert not undocumented, f"docs/events.md does not document {undocumented}"
    assert f"`<topic>{DEAD_LETTER_SUFFIX}`" in events_doc
    for event_type, version in EVENT_TYPES:
        assert f"schemas/{event_type}.v{version}.json" in events_doc
