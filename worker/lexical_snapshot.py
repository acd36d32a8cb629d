"""The BM25 index persisted: one file a starting worker maps instead of rebuilding.

Why it exists: rebuilding the index from SQL costs about 100 CPU seconds at a million stored
tickets (docs/performance.md, "Lexical index at start-up"), and a worker scaled out under load
must decide within seconds. A snapshot holds the index in compressed-sparse-row form; a worker
maps it read-only (every worker on a host shares the pages), then reads from SQL only the
tickets stored after the snapshot's watermark into the index's in-memory part
(:meth:`LexicalIndex.refresh`). Scores combine both parts' statistics, so they equal those of
an index rebuilt from SQL.

The file, little-endian::

    MAGIC (8 bytes) | header length (uint64) | header (UTF-8 JSON) | padding to 64
    | arrays, each starting at a multiple of 64 from the data start

The header records the format version, the tokenizer settings, the match scope field, the
watermark (the highest ``triage_tickets.id`` read), the document count and total length, the
scope labels, each array's dtype / offset / count, and the CRC-32 of the data. Arrays:
``offsets`` (int64, terms + 1), ``docs`` (int32) and ``tfs`` (float32) for the postings,
``lengths`` (float32) and ``scopes`` (int32) per document, and the NUL-separated UTF-8
``terms``, ``sources`` and ``ticket_ids`` (uint8; SQL text and ``\\w`` tokens hold no NUL).

A snapshot is written to a temporary file in the same directory and renamed over the old one,
so a reader sees the old file or the new one, never part of one. Anything a worker cannot use
(missing, truncated, corrupt, another format version, tokenizer or scope field, or tickets
deleted since) is logged as a WARNING naming why, and the worker rebuilds from SQL.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tickets import purge as purge_sql
from tickets.db import ScopeField, TicketRow
from tickets.model import TicketKey
from worker.lexical import LexicalIndex, MappedPart, tokenizer_settings

logger = logging.getLogger(__name__)

MAGIC = b"TRBM25\x00\x00"
FORMAT_VERSION = 1
_ALIGN = 64
_LENGTH = struct.Struct("<Q")


class SnapshotUnusable(Exception):
    """Why a snapshot file cannot serve this process."""


def snapshot_path(directory: Path, scope_field: ScopeField) -> Path:
    """The snapshot of a deployment matching ``scope_field`` (one file per match scope, as
    scope labels are part of the index)."""
    return directory / f"bm25-{scope_field or 'global'}.snapshot"


def _blob(strings: list[str]) -> npt.NDArray[np.uint8]:
    return np.frombuffer("\0".join(strings).encode(), dtype=np.uint8)


def _strings(blob: npt.NDArray[np.uint8], count: int) -> list[str]:
    if count == 0:
        return []
    out = blob.tobytes().decode().split("\0")
    if len(out) != count:
        raise SnapshotUnusable(f"{len(out)} strings where the header says {count}")
    return out


def _arrays(index: LexicalIndex) -> dict[str, npt.NDArray[Any]]:
    """The index, both parts, as the snapshot's arrays."""
    terms = index.terms()
    counts = np.zeros(len(terms) + 1, dtype=np.int64)
    parts = []
    for row, term in enumerate(terms):
        pieces = list(index.postings(term))
        parts.append(pieces)
        counts[row + 1] = sum(len(docs) for docs, _ in pieces)
    offsets = np.cumsum(counts)
    docs = np.empty(int(offsets[-1]), dtype=np.int32)
    tfs = np.empty(int(offsets[-1]), dtype=np.float32)
    for row, pieces in enumerate(parts):
        at = int(offsets[row])
        for part_docs, part_tfs in pieces:
            docs[at : at + len(part_docs)] = part_docs
            tfs[at : at + len(part_docs)] = part_tfs
            at += len(part_docs)
    arrays = {
        "offsets": offsets,
        "docs": docs,
        "tfs": tfs,
        "lengths": np.ascontiguousarray(index.lengths(), dtype=np.float32),
        "scopes": np.ascontiguousarray(index.scope_labels(), dtype=np.int32),
        "terms": _blob(terms),
        "sources": _blob([k.source for k in index.keys]),
        "ticket_ids": _blob([k.ticket_id for k in index.keys]),
    }
    return {name: np.ascontiguousarray(arr) for name, arr in arrays.items()}


def _padding(at: int) -> int:
    return -at % _ALIGN


def write_snapshot(index: LexicalIndex, path: Path) -> int:
    """Write ``index`` to ``path`` atomically; returns the file's size in bytes."""
    arrays = _arrays(index)
    layout: dict[str, dict[str, Any]] = {}
    at = 0
    crc = 0
    for name, arr in arrays.items():
        layout[name] = {"dtype": arr.dtype.str, "offset": at, "count": int(arr.size)}
        crc = zlib.crc32(arr.data, crc)
        at += arr.nbytes
        pad = _padding(at)
        crc = zlib.crc32(b"\0" * pad, crc)
        at += pad
    header = {
        "format": "triage-bm25-snapshot",
        "version": FORMAT_VERSION,
        "tokenizer": tokenizer_settings(),
        "scope_field": index.scope_field,
        "watermark": index.watermark,
        "documents": len(index),
        "terms": len(arrays["offsets"]) - 1,
        "total_length": index.total_length,
        "labels": index.labels,
        "written_at": datetime.now(UTC).isoformat(),
        "arrays": layout,
        "data_bytes": at,
        "crc32": crc,
    }
    head = json.dumps(header).encode()
    prefix = MAGIC + _LENGTH.pack(len(head)) + head
    prefix += b"\0" * _padding(len(prefix))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory: the rename below stays on one file system, so it is atomic.
    tmp = path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(prefix)
            for arr in arrays.values():
                fh.write(arr.data)
                fh.write(b"\0" * _padding(arr.nbytes))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    _clear_leftovers(path)
    return len(prefix) + at


_HOST = socket.gethostname().replace(".", "_")
_STALE_S = 86400


def _clear_leftovers(path: Path) -> None:
    """Remove the temporary files of writers that died before their rename: this host's
    whose process is gone, and any a day old (another host's writer)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 2 : -len(".tmp")].split(".")
        try:
            if len(parts) == 3 and parts[0] == _HOST:
                try:
                    os.kill(int(parts[1]), 0)
                except ProcessLookupError:
                    tmp.unlink(missing_ok=True)
                    continue
            if time.time() - tmp.stat().st_mtime > _STALE_S:
                tmp.unlink(missing_ok=True)
        except (OSError, ValueError):
            continue


def _fsync_dir(directory: Path) -> None:
    """The rename itself survives a power cut once the directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The header and the offset of the data."""
    try:
        with path.open("rb") as fh:
            start = fh.read(len(MAGIC) + _LENGTH.size)
            if len(start) < len(MAGIC) + _LENGTH.size or start[: len(MAGIC)] != MAGIC:
                raise SnapshotUnusable("not a BM25 snapshot file (bad magic bytes)")
            (length,) = _LENGTH.unpack(start[len(MAGIC) :])
            head = fh.read(length)
    except FileNotFoundError as exc:
        raise SnapshotUnusable("no snapshot file") from exc
    except OSError as exc:
        raise SnapshotUnusable(f"cannot read it: {exc}") from exc
    if len(head) != length:
        raise SnapshotUnusable("truncated header")
    try:
        header = json.loads(head)
    except ValueError as exc:
        raise SnapshotUnusable(f"corrupt header: {exc}") from exc
    if not isinstance(header, dict):
        raise SnapshotUnusable("corrupt header: not an object")
    prefix = len(MAGIC) + _LENGTH.size + length
    return header, prefix + _padding(prefix)


def load_snapshot(path: Path, *, scope_field: ScopeField = None) -> LexicalIndex:
    """The index in ``path``, mapped read-only; raises :class:`SnapshotUnusable`."""
    header, data_start = read_header(path)
    if header.get("format") != "triage-bm25-snapshot" or header.get("version") != FORMAT_VERSION:
        raise SnapshotUnusable(
            f"format {header.get('format')!r} version {header.get('version')!r}, this "
            f"worker reads version {FORMAT_VERSION}"
        )
    if header.get("tokenizer") != tokenizer_settings():
        raise SnapshotUnusable(
            f"written with other tokenizer settings ({header.get('tokenizer')}, this worker "
            f"tokenizes with {tokenizer_settings()})"
        )
    if header.get("scope_field") != scope_field:
        raise SnapshotUnusable(
            f"written for match scope field {header.get('scope_field')!r}, this worker "
            f"matches by {scope_field!r}"
        )
    try:
        data_bytes = int(header["data_bytes"])
        layout = header["arrays"]
        size = path.stat().st_size
        if size < data_start + data_bytes:
            raise SnapshotUnusable(
                f"truncated: {size} bytes, the header describes {data_start + data_bytes}"
            )
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_bytes,))
        if zlib.crc32(data.data) != header["crc32"]:
            raise SnapshotUnusable("corrupt: the data's CRC-32 differs from the header's")
        arrays = {
            name: np.frombuffer(
                data, dtype=np.dtype(spec["dtype"]), count=spec["count"], offset=spec["offset"]
            )
            for name, spec in layout.items()
        }
        n = int(header["documents"])
        keys = list(
            map(
                TicketKey,
                _strings(arrays["sources"], n),
                _strings(arrays["ticket_ids"], n),
            )
        )
        terms = _strings(arrays["terms"], int(header["terms"]))
        offsets = arrays["offsets"]
        if (
            len(offsets) != len(terms) + 1
            or len(arrays["lengths"]) != n
            or len(arrays["scopes"]) != n
            or int(offsets[-1]) != len(arrays["docs"])
            or len(arrays["tfs"]) != len(arrays["docs"])
        ):
            raise SnapshotUnusable("corrupt: array sizes disagree with the header")
        mapped = MappedPart(
            terms=dict(zip(terms, range(len(terms)), strict=True)),
            offsets=offsets,
            docs=arrays["docs"],
            tfs=arrays["tfs"],
            lengths=arrays["lengths"],
            scopes=arrays["scopes"],
        )
        return LexicalIndex.from_mapped(
            mapped,
            keys,
            total_length=int(header["total_length"]),
            labels=list(header["labels"]),
            watermark=int(header["watermark"]),
            scope_field=scope_field,
        )
    except SnapshotUnusable:
        raise
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise SnapshotUnusable(f"corrupt: {type(exc).__name__}: {exc}") from exc


def _check_no_deletions(index: LexicalIndex, engine: Engine) -> None:
    """A ticket row deleted after the snapshot was written would stay in it: refuse then."""
    with Session(engine) as session:
        stored = session.scalar(
            select(func.count()).select_from(TicketRow).where(TicketRow.id <= index.watermark)
        )
    if int(stored or 0) < len(index):
        raise SnapshotUnusable(
            f"it holds {len(index)} tickets up to id {index.watermark}, SQL holds {stored}: "
            "tickets were deleted since it was written"
        )


@contextmanager
def _timed() -> Iterator[list[float]]:
    out: list[float] = []
    wall, cpu = time.perf_counter(), time.process_time()
    yield out
    out.extend((time.perf_counter() - wall, time.process_time() - cpu))


def _forget_purged(index: LexicalIndex, engine: Engine) -> None:
    """Tickets purged since the snapshot was written never score (tickets/purge.py): a
    purge removes the snapshot files, and this covers one written while a purge ran."""
    after = 0
    while True:
        with Session(engine) as session:
            after, keys = purge_sql.tombstones_after(session, after)
        if not keys:
            return
        index.forget(keys)


def remove_snapshots(directory: Path | None) -> int:
    """Delete every BM25 snapshot in ``directory`` (after a purge: a snapshot holds the
    purged tickets' terms); workers then rebuild from SQL until the next
    `triage lexical snapshot` writes one again. How many were removed."""
    if directory is None:
        return 0
    removed = 0
    for path in directory.glob("bm25-*.snapshot"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def open_index(
    engine: Engine, *, directory: Path | None, scope_field: ScopeField = None
) -> LexicalIndex:
    """The BM25 index of every stored ticket: mapped from the snapshot in ``directory`` and
    caught up from SQL, or rebuilt from SQL without a usable snapshot (or ``directory``)."""
    index: LexicalIndex | None = None
    path = None
    if directory is not None:
        path = snapshot_path(directory, scope_field)
        try:
            with _timed() as loaded:
                index = load_snapshot(path, scope_field=scope_field)
                _check_no_deletions(index, engine)
        except SnapshotUnusable as exc:
            logger.warning(
                "lexical snapshot %s not used (%s): rebuilding the BM25 index from SQL", path, exc
            )
            index = None
    if index is None:
        index = LexicalIndex(scope_field=scope_field)
        with _timed() as took:
            index.refresh(engine)
        logger.info(
            "lexical index: %d tickets read from SQL in %.1f s (%.1f s CPU)", len(index), *took
        )
        return index
    _forget_purged(index, engine)
    mark = index.watermark
    with _timed() as took:
        added = index.refresh(engine)
    logger.info(
        "lexical index: %d tickets from the snapshot %s (up to ticket id %d, mapped in %.1f s, "
        "%.1f s CPU), %d caught up from SQL in %.1f s",
        index.mapped_size,
        path,
        mark,
        loaded[0],
        loaded[1],
        added,
        took[0],
    )
    return index


def update_snapshot(
    engine: Engine, directory: Path, *, scope_field: ScopeField = None, rebuild: bool = False
) -> dict[str, Any]:
    """Bring the snapshot in ``directory`` up to the stored tickets: the current snapshot
    plus the tickets stored since (or everything from SQL with ``rebuild``, or when the
    snapshot is unusable), written atomically. What happened, for the caller to print."""
    path = snapshot_path(directory, scope_field)
    index = None
    reason = "--rebuild"
    if not rebuild:
        try:
            index = load_snapshot(path, scope_field=scope_field)
            _check_no_deletions(index, engine)
        except SnapshotUnusable as exc:
            reason = str(exc)
            index = None
    rebuilt = index is None
    if index is None:
        logger.warning("lexical snapshot %s rebuilt from SQL (%s)", path, reason)
        index = LexicalIndex(scope_field=scope_field)
    before = len(index)
    with _timed() as read:
        index.refresh(engine)
    out: dict[str, Any] = {
        "path": str(path),
        "rebuilt": rebuilt,
        "documents": len(index),
        "added": len(index) - before,
        "watermark": index.watermark,
        "read_s": round(read[0], 2),
    }
    if not rebuilt and len(index) == before:
        out.update(written=False, bytes=path.stat().st_size)
        return out
    with _timed() as wrote:
        size = write_snapshot(index, path)
    out.update(written=True, bytes=size, write_s=round(wrote[0], 2))
    return out
