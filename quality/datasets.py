"""Loaders for the labelled evaluation data (public sets; docs/quality.md, "Data", gives their sources).

Two kinds:
- retrieval sets: a corpus of reports plus duplicate links (GitBugs: Jira / Bugzilla CSV
  exports and their ``-combined.csv`` link files);
- pair sets: ``(text_a, text_b, label)`` rows (BQ, ATEC, LCQMC, STS-B en / zh).

Everything is read as UTF-8 with any byte-order mark removed (ATEC carries one at the start
of the file *and* inside fields), and files are only read, never written.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

# A graded STS pair (0-5) counts as a duplicate at ≥ 4 ("mostly equivalent") and as a
# non-duplicate at ≤ 2 ("not equivalent, share some details" or less); pairs in between are
# left out of the binary metrics and only enter the Spearman correlation.
STS_POSITIVE = 4.0
STS_NEGATIVE = 2.0

PairFormat = Literal["bq", "atec", "lcqmc", "stsb", "zh-sts"]
PAIR_FORMATS: tuple[PairFormat, ...] = ("bq", "atec", "lcqmc", "stsb", "zh-sts")


class DatasetError(ValueError):
    """A data file is not in the expected format; the message names the file and line."""


@dataclass(frozen=True)
class Report:
    report_id: str
    summary: str
    description: str
    created: datetime


@dataclass(frozen=True)
class RetrievalSet:
    """Reports in Created order (ties keep file order) and undirected duplicate links."""

    name: str
    reports: tuple[Report, ...]
    links: frozenset[tuple[str, str]]  # each pair once, (smaller id, larger id)
    links_in_file: int  # link pairs named by the file, before keeping those in the corpus

    def duplicates(self) -> dict[int, frozenset[int]]:
        """Report index -> indexes of its linked reports (only reports with a link)."""
        index = {r.report_id: i for i, r in enumerate(self.reports)}
        out: dict[int, set[int]] = {}
        for a, b in self.links:
            out.setdefault(index[a], set()).add(index[b])
            out.setdefault(index[b], set()).add(index[a])
        return {i: frozenset(js) for i, js in out.items()}


@dataclass(frozen=True)
class Pair:
    text_a: str
    text_b: str
    label: int | None  # 1 duplicate, 0 not, None: graded in between (STS only)
    score: float | None = None  # the graded similarity, STS only


def _clean(value: str) -> str:
    return value.replace("\ufeff", "").strip()


def parse_created(value: str) -> datetime:
    """Jira exports `30/Sep/21 17:20`; Bugzilla ones ISO 8601 (`2020-01-02 17:14:21+00:00`)."""
    value = _clean(value)
    for fmt in ("%d/%b/%y %H:%M", "%d/%b/%Y %H:%M", "%d/%b/%y %I:%M %p"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=UTC)
        except ValueError:
            pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise DatasetError(f"unrecognised Created date {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _open_text(path: Path) -> io.TextIOWrapper:
    # utf-8-sig drops a BOM at the start; newline="" lets csv handle CRLF and quoted newlines.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def load_corpus(path: Path) -> list[Report]:
    """A GitBugs corpus CSV (Summary, Issue id, Created, Description, …) in Created order."""
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        missing = {"Summary", "Issue id", "Created", "Description"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        reports = []
        seen: set[str] = set()
        for line, row in enumerate(reader, start=2):
            report_id = _clean(row["Issue id"])
            if not report_id or report_id in seen:
                continue  # an id twice would make the links ambiguous; the first one wins
            seen.add(report_id)
            try:
                created = parse_created(row["Created"])
            except DatasetError as exc:
                raise DatasetError(f"{path}:{line}: {exc}") from None
            reports.append(
                Report(report_id, row["Summary"] or "", row["Description"] or "", created)
            )
    # Stable sort: reports created in the same minute keep the file's order.
    return sorted(reports, key=lambda r: r.created)


def load_links(path: Path) -> list[tuple[str, str]]:
    """``Issue id, Duplicate id`` rows; a cell may name several ids ("1, 2, 3")."""
    pairs: list[tuple[str, str]] = []
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return []
        for row in reader:
            if len(row) < 2:
                continue
            lefts = re.findall(r"\w+", row[0])
            rights = re.findall(r"\w+", row[1])
            pairs.extend((a, b) for a in lefts for b in rights if a != b)
    return pairs


def load_retrieval_set(corpus: Path, links: Path, *, limit: int | None = None) -> RetrievalSet:
    """Corpus + links, keeping the links whose both ends are in the (possibly limited) corpus."""
    reports = load_corpus(corpus)
    if limit is not None:
        reports = reports[:limit]  # the earliest ones: what a helpdesk had at that point
    ids = {r.report_id for r in reports}
    named = load_links(links)
    kept = frozenset((min(a, b), max(a, b)) for a, b in named if a in ids and b in ids and a != b)
    name = corpus.stem.removesuffix("_bugs")
    unique_named = {(min(a, b), max(a, b)) for a, b in named}
    return RetrievalSet(name, tuple(reports), kept, len(unique_named))


# --- pair sets -------------------------------------------------------------------------------


def detect_format(path: Path) -> PairFormat:
    """Guess the pair format from the file name (the shared data's names), else the header."""
    name = path.name.lower()
    for fmt, hints in (
        ("stsb", ("stsbenchmark",)),
        ("zh-sts", ("zh_stsb", "sts-b.test", "sts-b")),
        ("atec", ("atec",)),
        ("lcqmc", ("lcqmc",)),
        ("bq", ("bq_",)),
    ):
        if any(h in name for h in hints):
            return fmt  # type: ignore[return-value]
    with _open_text(path) as handle:
        first = handle.readline()
    if first.strip().lower().startswith("sentence1,sentence2"):
        return "bq"
    raise DatasetError(f"{path}: cannot tell the pair format; pass --format")


def _label(value: str, where: str) -> int:
    value = _clean(value)
    if value not in ("0", "1"):
        raise DatasetError(f"{where}: label {value!r} is not 0 or 1")
    return int(value)


def _graded(text_a: str, text_b: str, raw: str, where: str) -> Pair:
    try:
        score = float(_clean(raw))
    except ValueError:
        raise DatasetError(f"{where}: score {raw!r} is not a number") from None
    label = 1 if score >= STS_POSITIVE else 0 if score <= STS_NEGATIVE else None
    return Pair(text_a, text_b, label, score)


def _tab_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    # Plain split, not csv: STS-B and LCQMC sentences hold unbalanced quote characters.
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line.split("\t")


def iter_pairs(path: Path, fmt: PairFormat, *, split: str = "test") -> Iterator[Pair]:
    """Yield the pairs of one file. ``split`` picks the STS-B English split (train/dev/test)."""
    if fmt == "bq":
        with _open_text(path) as handle:
            reader = csv.reader(handle)
            header = [_clean(h) for h in next(reader, [])]
            if header[:3] != ["sentence1", "sentence2", "label"]:
                raise DatasetError(f"{path}: expected header sentence1,sentence2,label")
            for number, row in enumerate(reader, start=2):
                if len(row) < 3:
                    raise DatasetError(f"{path}:{number}: expected 3 fields, got {len(row)}")
                yield Pair(_clean(row[0]), _clean(row[1]), _label(row[2], f"{path}:{number}"))
    elif fmt == "atec":
        # Measured on the shared copy: tab-separated, CRLF, no header, BOMs inside fields.
        for number, fields in _tab_rows(path):
            if len(fields) < 4:
                raise DatasetError(f"{path}:{number}: expected id, s1, s2, label")
            yield Pair(_clean(fields[1]), _clean(fields[2]), _label(fields[3], f"{path}:{number}"))
    elif fmt == "lcqmc":
        for number, fields in _tab_rows(path):
            if len(fields) < 3:
                raise DatasetError(f"{path}:{number}: expected s1, s2, label")
            yield Pair(_clean(fields[0]), _clean(fields[1]), _label(fields[2], f"{path}:{number}"))
    elif fmt == "zh-sts":
        for number, fields in _tab_rows(path):
            if len(fields) < 3:
                raise DatasetError(f"{path}:{number}: expected s1, s2, score")
            yield _graded(_clean(fields[0]), _clean(fields[1]), fields[2], f"{path}:{number}")
    elif fmt == "stsb":
        # split, genre, dataset, year, sid, score, sentence1, sentence2 (+ optional sources).
        for number, fields in _tab_rows(path):
            if number == 1 and _clean(fields[0]) == "split":
                continue
            if len(fields) < 8:
                raise DatasetError(f"{path}:{number}: expected 8 tab-separated fields")
            if _clean(fields[0]) != split:
                continue
            yield _graded(_clean(fields[6]), _clean(fields[7]), fields[5], f"{path}:{number}")
    else:
        raise DatasetError(f"unknown pair format {fmt!r}")


def load_pairs(
    path: Path,
    fmt: PairFormat | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    seed: int = 0,
) -> tuple[PairFormat, list[Pair]]:
    """All pairs of ``path``, or a seeded random sample of ``limit`` of them (files may be
    ordered by label or source, so the first N would not be representative)."""
    fmt = fmt or detect_format(path)
    pairs = list(iter_pairs(path, fmt, split=split))
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    return fmt, pairs
