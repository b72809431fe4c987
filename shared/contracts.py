"""JSON Schemas of the event contract, generated from the pydantic models in ``shared.events``.

The models are the contract; ``docs/schemas/`` holds what they generate, one file per (type, version)
(``referral.screened.v1.json``) plus ``envelope.json`` and ``dead_letter.json``, for readers that are
not Python. A unit test fails when the files and the models disagree; regenerate with::

    python -m shared.contracts docs/schemas

Only ``EVENT_TYPES``, ``Envelope`` and ``DeadLetter`` are read, so the files follow the registry
whatever else the event classes declare.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shared.dead_letters import DeadLetter
from shared.events import EVENT_TYPES, Envelope

__all__ = ["DEAD_LETTER_FILE", "ENVELOPE_FILE", "REGENERATE", "render", "schema_files", "write"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENVELOPE_FILE = "envelope.json"
DEAD_LETTER_FILE = "dead_letter.json"
REGENERATE = "python -m shared.contracts docs/schemas"


def schema_files() -> dict[str, dict[str, Any]]:
    """``{file name: JSON Schema}`` for the envelope and every registered (type, version)."""
    files = {
        ENVELOPE_FILE: _schema(Envelope.model_json_schema()),
        DEAD_LETTER_FILE: _schema(DeadLetter.model_json_schema()),
    }
    for (event_type, version), model in EVENT_TYPES.items():
        files[f"{event_type}.v{version}.json"] = _schema(model.model_json_schema())
    return files


def _schema(generated: dict[str, Any]) -> dict[str, Any]:
    return {"$schema": JSON_SCHEMA_DIALECT, **generated}


def render(schema: dict[str, Any]) -> str:
    """The file text: sorted keys, two-space indent, a final newline, so that output is byte-stable."""
    return json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write(directory: Path) -> list[str]:
    """Write every schema file into ``directory`` and delete stale ``*.json``; returns the names written."""
    directory.mkdir(parents=True, exist_ok=True)
    files = schema_files()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, schema in files.items():
        (directory / name).write_text(render(schema), encoding="utf-8")
    return sorted(files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shared.contracts", description="Write the event contract's JSON Schemas."
    )
    parser.add_argument("directory", type=Path, help="where to write them, e.g. docs/schemas")
    args = parser.parse_args(argv)
    for name in write(args.directory):
        print(args.directory / name)


if __name__ == "__main__":
    main()
