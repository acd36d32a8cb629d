"""Bulk import: read tickets from CSV or JSONL, reporting each bad row with its line number.

Accepted columns / keys: ``id`` (or ``ticket_id``); optional ``subject`` (or ``title``,
``summary``); the body in ``body``, ``content`` or ``description``; optional
``created_at`` (ISO 8601), ``queue``, ``tags`` (a JSON list, or a string separated by
``,`` or ``;``), ``source``. A file of just ``id,content`` works as is.

Nothing in one row stops the others: a row that is not valid in the file's encoding, a
field over the size limit, or a ticket id already seen earlier in the file is a RowError
naming its line, and reading goes on.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from tickets.model import Ticket, describe_validation_error

ID_KEYS = ("id", "ticket_id")
SUBJECT_KEYS = ("subject", "title", "summary")
BODY_KEYS = ("body", "content", "description")
# The largest field (CSV) or line (JSONL) taken by default: TRIAGE_MAX_BODY_BYTES' default,
# the largest request `triage serve` accepts, so a file takes what the HTTP API would.
MAX_FIELD_BYTES = 1_048_576
# Undecodable bytes are read as lone surrogates (the "surrogateescape" error handler,
# https://docs.python.org/3/library/codecs.html#error-handlers): a valid file never decodes
# to one, so finding one marks exactly the rows that were not valid in the file's encoding.
_UNDECODED = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True)
class RowError:
    line: int
    reason: str
    # "duplicate": a valid ticket whose id came earlier in the file (skipped, counted apart).
    kind: Literal["invalid", "duplicate"] = "invalid"

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


def check_encoding(encoding: str) -> str:
    """The encoding name as given, or ValueError if Python has no codec by that name."""
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(
            f"unknown encoding {encoding!r} (e.g. utf-8, cp1252, latin-1, utf-16)"
        ) from None
    return encoding


def read_tickets(
    path: Path,
    *,
    source: str,
    fmt: str | None = None,
    encoding: str = "utf-8",
    max_field_bytes: int = MAX_FIELD_BYTES,
) -> Iterator[Ticket | RowError]:
    """Yield a Ticket or a RowError per data row, in file order.

    A ticket whose (source, id) came earlier in the file is a RowError of kind "duplicate":
    the first one goes in, the repeats are reported, never silently dropped.
    """
    fmt = fmt or detect_format(path)
    reader = _Reader(path, source, check_encoding(encoding), max_field_bytes)
    if fmt == "jsonl":
        rows = reader.jsonl()
    elif fmt == "csv":
        rows = reader.csv()
    else:
        raise ValueError(f"unknown format {fmt!r}: use csv or jsonl")
    first_seen: dict[tuple[str, str], int] = {}
    for line, row in rows:
        if isinstance(row, Ticket):
            first = first_seen.setdefault(row.key, line)
            if first != line:
                yield RowError(
                    line,
                    f"duplicate id {row.ticket_id}, first seen on line {first}",
                    kind="duplicate",
                )
                continue
        yield row


class _Reader:
    def __init__(self, path: Path, source: str, encoding: str, max_field_bytes: int) -> None:
        self.path = path
        self.source = source
        self.encoding = encoding
        self.max_field_bytes = max_field_bytes

    def _open(self, **kwargs: Any) -> Any:
        # utf-8-sig for utf-8: spreadsheets often write a BOM that would otherwise end up in
        # the first header. The other codecs that use a BOM (utf-16, utf-32) drop it themselves.
        utf8 = codecs.lookup(self.encoding).name == "utf-8"
        return self.path.open(
            encoding="utf-8-sig" if utf8 else self.encoding, errors="surrogateescape", **kwargs
        )

    def _undecodable(self, text: str, where: str) -> str | None:
        """The reason a decoded text is not valid in the encoding, or None."""
        bad = _UNDECODED.search(text)
        if bad is None:
            return None
        byte = ord(bad.group()) - 0xDC00
        shown = f"byte 0x{byte:02X}" if 0x80 <= byte <= 0xFF else "an invalid sequence"
        hint = ""
        if codecs.lookup(self.encoding).name == "utf-8":
            hint = "; a spreadsheet saved on Windows is usually --encoding cp1252"
        return f"not valid {self.encoding} ({shown} {where}{hint})"

    def _too_long(self, text: str, what: str) -> str | None:
        # A character is at most 4 bytes in UTF-8: most fields need no encoding to know.
        if len(text) * 4 <= self.max_field_bytes:
            return None
        size = len(text.encode("utf-8", "surrogatepass"))
        if size <= self.max_field_bytes:
            return None
        return (
            f"{what} is {size:,} bytes, over the limit of {self.max_field_bytes:,} "
            "(TRIAGE_MAX_BODY_BYTES)"
        )

    def csv(self) -> Iterator[tuple[int, Ticket | RowError]]:
        # The csv module's own cap (128 KiB by default, process-wide) would end the whole
        # file at one long field; fields are measured against max_field_bytes here instead.
        csv.field_size_limit(sys.maxsize)
        with self._open(newline="") as fh:
            yield from self._csv_rows(fh)

    def _csv_rows(self, fh: Any) -> Iterator[tuple[int, Ticket | RowError]]:
        sample = fh.read(8192)
        fh.seek(0)
        delimiter = (
            "\t"
            if self.path.suffix.lower() == ".tsv" or sample.count("\t") > sample.count(",")
            else ","
        )
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            header = []
        if why := self._undecodable(",".join(header), "in the header"):
            yield 1, RowError(1, why)
            return
        fields = [f.strip().lower() for f in header]
        if not any(k in fields for k in ID_KEYS):
            yield (
                1,
                RowError(
                    1,
                    f"header has no id column (expected one of {', '.join(ID_KEYS)}; got {', '.join(fields) or 'nothing'})",
                ),
            )
            return
        if not any(k in fields for k in BODY_KEYS + SUBJECT_KEYS):
            yield (
                1,
                RowError(1, f"header has no text column (expected one of {', '.join(BODY_KEYS)})"),
            )
            return
        line = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader goes on from the next line
                yield line, RowError(line, f"unreadable CSV: {exc}")
                line = reader.line_num + 1
                continue
            if values:  # csv.DictReader's rule: a blank line is no row
                yield line, self._csv_row(fields, values, line)
            line = reader.line_num + 1

    def _csv_row(self, fields: list[str], values: list[str], line: int) -> Ticket | RowError:
        if len(values) > len(fields):
            return RowError(line, f"{len(values) - len(fields)} more field(s) than the header has")
        for name, value in zip(fields, values, strict=False):
            why = self._undecodable(value, f"in column {name!r}")
            if why is None:
                why = self._too_long(value, f"column {name!r}")
            if why is not None:
                return RowError(line, why)
        row: dict[str, Any] = dict.fromkeys(fields)
        row.update(zip(fields, values, strict=False))
        return _build(row, self.source, line)

    def jsonl(self) -> Iterator[tuple[int, Ticket | RowError]]:
        with self._open() as fh:
            for line_no, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                yield line_no, self._jsonl_row(raw, line_no)

    def _jsonl_row(self, raw: str, line_no: int) -> Ticket | RowError:
        bad = _UNDECODED.search(raw)
        why = self._undecodable(raw, f"at column {bad.start() + 1}") if bad else None
        if why is None:
            why = self._too_long(raw.rstrip("\r\n"), "the line")
        if why is not None:
            return RowError(line_no, why)
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            return RowError(line_no, f"invalid JSON: {exc.msg} at column {exc.colno}")
        if not isinstance(obj, dict):
            return RowError(line_no, f"expected a JSON object, got {type(obj).__name__}")
        return _build({str(k).lower(): v for k, v in obj.items()}, self.source, line_no)


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
