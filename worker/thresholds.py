"""The thresholds file: calibrated `duplicate` / `suggest` thresholds, per queue, on disk.

``triage calibrate`` writes it; the worker reads it (TRIAGE_THRESHOLDS_FILE). JSON::

    {
      "version": 1,
      "model": "local:all-MiniLM-L6-v2",          # the embedder the scores came from, or null
      "default": {"duplicate": 0.78, "suggest": 0.61},
      "queues": {"billing": {"duplicate": 0.81, "suggest": 0.64}},
      "calibration": {...}                        # provenance, free-form, not read back
    }

A queue without its own entry uses ``default``. Thresholds are cosine similarities of unit
vectors, so they live in [-1, 1]; ``suggest`` must not exceed ``duplicate`` (else the
`suggest` band would be empty and the routing order in :class:`Thresholds` meaningless).
Every problem is a :class:`ValueError` naming the file, so a bad file stops the worker at
start with a message that says what to fix instead of routing on nonsense.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from worker.routing import Thresholds

VERSION = 1


@dataclass(frozen=True)
class ThresholdTable:
    default: Thresholds
    # Read-only view: the table is shared by every batch of a worker process.
    queues: Mapping[str, Thresholds] = field(default_factory=lambda: MappingProxyType({}))
    model: str | None = None

    def for_queue(self, queue: str | None) -> Thresholds:
        if queue is None:
            return self.default
        return self.queues.get(queue, self.default)


def _check_pair(where: str, value: object) -> Thresholds:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object with duplicate and suggest")
    numbers: dict[str, float] = {}
    for key in ("duplicate", "suggest"):
        if key not in value:
            raise ValueError(f"{where}: missing key {key!r}")
        raw = value[key]
        # bool is an int subclass: `true` must not pass as 1.0.
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise ValueError(f"{where}.{key}: expected a number, got {raw!r}")
        number = float(raw)
        if not math.isfinite(number) or not -1.0 <= number <= 1.0:
            raise ValueError(
                f"{where}.{key}: {raw!r} is outside [-1, 1] (thresholds are cosine similarities)"
            )
        numbers[key] = number
    if numbers["suggest"] > numbers["duplicate"]:
        raise ValueError(
            f"{where}: suggest ({numbers['suggest']}) must not exceed "
            f"duplicate ({numbers['duplicate']})"
        )
    return Thresholds(duplicate=numbers["duplicate"], suggest=numbers["suggest"])


def _parse(doc: object) -> ThresholdTable:
    """Validate a decoded document; messages are relative to the file (the caller adds it)."""
    if not isinstance(doc, dict):
        raise ValueError("expected a JSON object at the top level")
    if "version" not in doc:
        raise ValueError("missing key 'version'")
    if doc["version"] != VERSION:
        raise ValueError(f"unsupported version {doc['version']!r} (this program reads {VERSION})")
    if "default" not in doc:
        raise ValueError("missing key 'default'")
    default = _check_pair("default", doc["default"])
    raw_queues = doc.get("queues", {})
    if not isinstance(raw_queues, dict):
        raise ValueError("queues: expected an object mapping queue name to thresholds")
    queues: dict[str, Thresholds] = {}
    for name, pair in raw_queues.items():
        if not name:
            raise ValueError("queues: empty queue name")
        queues[name] = _check_pair(f"queues.{name}", pair)
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise ValueError(f"model: expected a string or null, got {model!r}")
    return ThresholdTable(default=default, queues=MappingProxyType(queues), model=model)


def _reject_constant(name: str) -> float:
    # json.loads accepts NaN / Infinity by default; they are not JSON and never a threshold.
    raise ValueError(f"{name} is not a valid number")


def load_thresholds(path: Path) -> ThresholdTable:
    """Read and validate a thresholds file; any problem is a ValueError naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"thresholds file {path}: cannot read it: {exc}") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"thresholds file {path}: not valid JSON: {exc}") from None
    try:
        return _parse(doc)
    except ValueError as exc:
        raise ValueError(f"thresholds file {path}: {exc}") from None


def table_to_dict(table: ThresholdTable, calibration: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "version": VERSION,
        "model": table.model,
        "default": {"duplicate": table.default.duplicate, "suggest": table.default.suggest},
        "queues": {
            name: {"duplicate": t.duplicate, "suggest": t.suggest}
            for name, t in sorted(table.queues.items())
        },
        "calibration": dict(calibration),
    }


def save_thresholds(path: Path, table: ThresholdTable, calibration: Mapping[str, Any]) -> None:
    """Write the file atomically: a worker reading it never sees half a file.

    The table is validated first with the same rules as :func:`load_thresholds`, so a file
    this function writes is always one the worker accepts.
    """
    path = Path(path)
    doc = table_to_dict(table, calibration)
    try:
        _parse(doc)
    except ValueError as exc:
        raise ValueError(f"thresholds file {path}: refusing to write: {exc}") from None
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file sits in the target's folder: os.replace is atomic only within
    # one file system.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; the worker may run as another user, and
        # thresholds are not secret.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
