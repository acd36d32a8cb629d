"""Bulk import: read tickets from CSV or JSONL, reporting each bad row with its line number.

Accepted columns / keys: ``id`` (or ``ticket_id``); optional ``subject`` (or ``title``,
``summary``); the body in ``body``, ``content`` or ``description``; optional
``created_at`` (ISO 8601), ``queue``, ``tags`` (a JSON list, or a string separated by
``,`` or ``;``), ``source``. A file of just ``id,content`` works as is.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.tickets import Ticket, describe_validation_error

ID_KEYS = ("id", "ticket_id")
SUBJECT_KEYS = ("subject", "title", "summary")
BODY_KEYS = ("body", "content", "description")


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


def detect_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".csv", ".tsv", ".txt"):
        return "csv"
    raise ValueError(
        f"{path}: cannot tell the format from {suffix!r}; use .csv or .jsonl or pass --format"
    )


def read_tickets(path: Path, *, source: str, fmt: str | None = None) -> Iterator[Ticket | RowError]:
    """Yield a Ticket or a RowError per data row, in file order."""
    fmt = fmt or detect_format(path)
    if fmt == "jsonl":
        yield from _read_jsonl(path, source)
    elif fmt == "csv":
        yield from _read_csv(path, source)
    else:
        raise ValueError(f"unknown format {fmt!r}: use csv or jsonl")


def _read_csv(path: Path, source: str) -> Iterator[Ticket | RowError]:
    # utf-8-sig: spreadsheets often write a BOM that would otherwise end up in the first header.
    with path.open(newline="", encoding="utf-8-sig") as fh:
        sample = fh.read(8192)
        fh.seek(0)
        delimiter = (
            "\t" if path.suffix.lower() == ".tsv" or sample.count("\t") > sample.count(",") else ","
        )
        reader = csv.DictReader(fh, delimiter=delimiter)
        fields = [f.strip().lower() for f in reader.fieldnames or []]
        if not any(k in fields for k in ID_KEYS):
            yield RowError(
                1,
                f"header has no id column (expected one of {', '.join(ID_KEYS)}; got {', '.join(fields) or 'nothing'})",
            )
            return
        if not any(k in fields for k in BODY_KEYS + SUBJECT_KEYS):
            yield RowError(1, f"header has no text column (expected one of {', '.join(BODY_KEYS)})")
            return
        reader.fieldnames = fields
        line = reader.line_num + 1
        for row in reader:
            if None in row:
                yield RowError(line, f"{len(row[None])} more field(s) than the header has")  # type: ignore[index]
            else:
                yield _build(row, source, line)
            line = reader.line_num + 1


def _read_jsonl(path: Path, source: str) -> Iterator[Ticket | RowError]:
    with path.open(encoding="utf-8-sig") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                yield RowError(line_no, f"invalid JSON: {exc.msg} at column {exc.colno}")
                continue
            if not isinstance(obj, dict):
                yield RowError(line_no, f"expected a JSON object, got {type(obj).__name__}")
                continue
            yield _build({str(k).lower(): v for k, v in obj.items()}, source, line_no)


def _first(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        v = row.get(k)
        if v is not None and v != "":
            return v
    return None


def _tags(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value).strip()
    if text.startswith("["):
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            loaded = None
        if isinstance(loaded, list):
            return _tags(loaded)
    return [t.strip() for t in re.split(r"[;,]", text) if t.strip()]


def _build(row: dict[str, Any], source: str, line: int) -> Ticket | RowError:
    ticket_id = _first(row, ID_KEYS)
    if ticket_id is None:
        return RowError(line, "missing id")
    data = {
        "source": row.get("source") or source,
        "ticket_id": str(ticket_id),
        "subject": _first(row, SUBJECT_KEYS),
        "body": _first(row, BODY_KEYS) or "",
        "created_at": _first(row, ("created_at", "created")),
        "queue": _first(row, ("queue",)),
        "tags": _tags(row.get("tags")),
    }
    try:
        return Ticket.model_validate(data)
    except ValidationError as exc:
        return RowError(line, f"id {ticket_id}: {describe_validation_error(exc)}")
