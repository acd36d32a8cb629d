"""The persisted BM25 index: a mapped snapshot plus the catch-up from SQL scores exactly as
an index rebuilt from SQL; an unusable snapshot is refused with its reason; a crashed write
leaves the old one; a real worker started on a snapshot decides with both parts."""

from __future__ import annotations

import json
import logging
import os
import random
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, delete
from sqlalchemy.orm import Session

from config.settings import Settings
from tests.conftest import (
    ROOT,
    WorkerProcess,
    decisions,
    ingest,
    n_rows,
    run_triage,
    tickets_csv,
    wait_for,
)
from tickets import db
from tickets.model import Ticket
from worker.lexical import LexicalIndex
from worker.lexical_snapshot import (
    MAGIC,
    load_snapshot,
    open_index,
    read_header,
    snapshot_path,
    update_snapshot,
)

LATIN = ["app", "crash", "login", "error", "timeout", "refund", "invoice", "datanode",
         "NullPointerException", "HADOOP-1234", "ＡＰＰ１", "the", "a", "of"]  # fmt: skip
HANZI = "用户反映订单未发货请尽快处理退款申请账号无法登录密码错误系统崩溃"


def random_text(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(0, 18)):
        if rng.random() < 0.4:  # a run of Chinese characters: one token per character
            words.append("".join(rng.choices(HANZI, k=rng.randint(1, 8))))
        else:
            words.append(rng.choice(LATIN))
    return " ".join(words)


def store(engine: Engine, rng: random.Random, first: int, count: int) -> list[str]:
    """``count`` tickets with random subjects and bodies, in queues alpha / beta / none."""
    texts, rows = [], []
    for n in range(first, first + count):
        ticket = Ticket(
            source="s",
            ticket_id=str(n),
            subject=random_text(rng) or None,
            body=random_text(rng),
            queue=rng.choice(["alpha", "beta", None]),
        )
        texts.append(f"{ticket.subject or ''} {ticket.body}")
        rows.append(db.ticket_values(ticket, content_hash=str(n), backfill=True, model="m"))
    with Session(engine) as session:
        db.save_batch(session, rows, [])
        session.commit()
    return texts


def rebuilt(engine: Engine, scope_field: str | None = None) -> LexicalIndex:
    index = LexicalIndex(scope_field=scope_field)  # type: ignore[arg-type]
    index.refresh(engine)
    return index


def assert_same_scores(got: LexicalIndex, want: LexicalIndex, queries: list[str]) -> None:
    assert got.keys == want.keys
    for query in queries:
        mine, theirs = got.scores(query), want.scores(query)
        # Exactly: the same float operations on the same statistics.
        assert np.array_equal(mine, theirs), query
        assert got.top(mine, 10) == want.top(theirs, 10)
        assert got.score_texts(query, ["用户 订单 app crash"]) == want.score_texts(
            query, ["用户 订单 app crash"]
        )


@pytest.mark.parametrize("scope_field", [None, "queue"])
def test_a_snapshot_and_its_catch_up_score_as_a_rebuilt_index(
    database_url: str, tmp_path: Path, scope_field: str | None
) -> None:
    engine = db.make_engine(database_url)
    rng = random.Random(5)
    texts = store(engine, rng, 0, 120)
    written = update_snapshot(engine, tmp_path, scope_field=scope_field)  # type: ignore[arg-type]
    assert written["written"] and written["rebuilt"] and written["documents"] == 120
    texts += store(engine, rng, 120, 40)
    queries = [*rng.sample(texts, 40), *(random_text(rng) for _ in range(20)), "订单未发货"]
    queries.append("ａｐｐ１ 用户")  # full-width forms match their NFKC forms

    index = open_index(engine, directory=tmp_path, scope_field=scope_field)  # type: ignore[arg-type]
    assert (index.mapped_size, len(index)) == (120, 160)  # 40 caught up from SQL
    want = rebuilt(engine, scope_field)
    assert_same_scores(index, want, queries)
    if scope_field is not None:
        for query in queries[:10]:
            for scope in ("alpha", "beta", None):
                assert index.top(index.scores(query), 10, scope=scope) == want.top(
                    want.scores(query), 10, scope=scope
                )

    # The writer again: the snapshot plus the 40, rewritten as one mapped part.
    again = update_snapshot(engine, tmp_path, scope_field=scope_field)  # type: ignore[arg-type]
    assert (again["rebuilt"], again["added"], again["documents"]) == (False, 40, 160)
    index = open_index(engine, directory=tmp_path, scope_field=scope_field)  # type: ignore[arg-type]
    assert (index.mapped_size, len(index)) == (160, 160)
    assert_same_scores(index, want, queries)
    # Nothing new: the file is left as it is.
    assert not update_snapshot(engine, tmp_path, scope_field=scope_field)["written"]  # type: ignore[arg-type]
    engine.dispose()


def rewrite_header(path: Path, change: Callable[[dict[str, object]], None]) -> None:
    header, start = read_header(path)
    data = path.read_bytes()[start:]
    change(header)
    head = json.dumps(header).encode()
    prefix = MAGIC + struct.pack("<Q", len(head)) + head
    prefix += b"\0" * (-len(prefix) % 64)
    path.write_bytes(prefix + data)


def truncate(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 100)


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-200] ^= 0x5A  # in the ticket ids, the last array
    path.write_bytes(bytes(data))


def other_tokenizer(path: Path) -> None:
    rewrite_header(path, lambda h: h["tokenizer"].update(cjk="bigram"))  # type: ignore[attr-defined]


def other_version(path: Path) -> None:
    rewrite_header(path, lambda h: h.update(version=99))


def not_a_snapshot(path: Path) -> None:
    path.write_text("ticket_id,body\n1,hello\n")


UNUSABLE = {
    "missing": (lambda path: path.unlink(), "no snapshot file"),
    "truncated": (truncate, "truncated"),
    "corrupt": (flip_a_byte, "CRC-32"),
    "other tokenizer": (other_tokenizer, "other tokenizer settings"),
    "other version": (other_version, "version 99"),
    "not a snapshot": (not_a_snapshot, "bad magic bytes"),
}


def test_an_unusable_snapshot_is_refused_with_its_reason_and_rebuilt(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = db.make_engine(database_url)
    rng = random.Random(9)
    texts = store(engine, rng, 0, 60)
    queries = [*texts[:10], "用户 订单"]
    want = rebuilt(engine)
    path = snapshot_path(tmp_path, None)
    caplog.set_level(logging.WARNING, "worker.lexical_snapshot")
    for name, (spoil, reason) in UNUSABLE.items():
        update_snapshot(engine, tmp_path, rebuild=True)
        assert load_snapshot(path).mapped_size == 60  # usable before it is spoilt
        spoil(path)
        caplog.clear()
        index = open_index(engine, directory=tmp_path)
        assert (index.mapped_size, len(index)) == (0, 60), name  # rebuilt from SQL
        assert_same_scores(index, want, queries)
        [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert reason in warning.getMessage() and str(path) in warning.getMessage(), name

    # Another match scope's labels: refused, not misread.
    update_snapshot(engine, tmp_path, rebuild=True)
    path.rename(snapshot_path(tmp_path, "queue"))
    caplog.clear()
    assert open_index(engine, directory=tmp_path, scope_field="queue").mapped_size == 0
    assert "match scope field None" in caplog.text

    # Tickets purged from SQL after the snapshot was written would stay in it: refused.
    update_snapshot(engine, tmp_path)
    with Session(engine) as session:
        session.execute(delete(db.TicketRow).where(db.TicketRow.ticket_id == "3"))
        session.commit()
    caplog.clear()
    index = open_index(engine, directory=tmp_path)
    assert (index.mapped_size, len(index)) == (0, 59)
    assert "deleted since" in caplog.text
    assert_same_scores(index, rebuilt(engine), queries)
    # The writer rebuilds it then, by itself.
    out = update_snapshot(engine, tmp_path)
    assert out["rebuilt"] and out["documents"] == 59
    assert open_index(engine, directory=tmp_path).mapped_size == 59
    engine.dispose()


CRASHING_WRITER = """
import os, signal, sys
from pathlib import Path
from sqlalchemy import create_engine
import worker.lexical_snapshot as snap

# The process dies the moment the new file is complete, before the rename: the worst
# moment for a reader if the write were not atomic.
def crash(*_):
    os.kill(os.getpid(), signal.SIGKILL)

snap.os.replace = crash
snap.update_snapshot(create_engine(sys.argv[1]), Path(sys.argv[2]))
"""


def test_a_writer_killed_mid_write_leaves_the_old_snapshot(
    database_url: str, tmp_path: Path
) -> None:
    engine = db.make_engine(database_url)
    rng = random.Random(13)
    texts = store(engine, rng, 0, 50)
    update_snapshot(engine, tmp_path)
    path = snapshot_path(tmp_path, None)
    before = path.read_bytes()
    store(engine, rng, 50, 30)
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, database_url, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    # The killed writer's complete temporary file is there; the snapshot is the old one.
    assert [p.name for p in tmp_path.glob(".*.tmp")] and path.read_bytes() == before
    index = open_index(engine, directory=tmp_path)
    assert (index.mapped_size, len(index)) == (50, 80)
    assert_same_scores(index, rebuilt(engine), texts[:10])
    # The next run replaces it and clears the leftover.
    out = update_snapshot(engine, tmp_path)
    assert (out["written"], out["documents"]) == (True, 80)
    assert not list(tmp_path.glob(".*.tmp"))
    engine.dispose()


CRASHES = [
    "The mobile app crashes every time I try to log in.",
    "App crashes on the login screen right after I type my password.",
    "Logging in makes the app crash immediately.",
    "I was charged twice for my March subscription.",
]
# Found by their identifiers (BM25), not by meaning: one in the snapshot, one stored after it.
IN_SNAPSHOT = "Nightly export job aborts with code QX-99172 in module zarbolith"
AFTER_SNAPSHOT = "Weekly billing sync stops with code ZB-55310 in module quenthrix"


def test_a_worker_started_on_a_snapshot_matches_in_both_parts(
    make_settings: Callable[..., Settings],
    database_url: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    snapshots = tmp_path / "snapshots"
    settings = make_settings(
        database_url=database_url,
        queue=queue_name,
        lexical_snapshot_dir=snapshots,
        hybrid_alpha=0.5,
        hybrid_pool=20,
        top_k=2,
    )
    first = start_worker(settings)
    history = [(f"h{i}", "", text) for i, text in enumerate([*CRASHES, IN_SNAPSHOT])]  # h4
    ingest(settings, tickets_csv(tmp_path / "history.csv", history), "--backfill")
    wait_for(lambda: n_rows(database_url, db.TicketRow) == 5, 60, "the history")
    out = run_triage(settings, "lexical", "snapshot")
    assert out.returncode == 0, out.stderr
    assert "5 tickets up to id" in out.stdout and "rebuilt from SQL" in out.stdout
    later = tickets_csv(tmp_path / "later.csv", [("h9", "", AFTER_SNAPSHOT)])
    ingest(settings, later, "--backfill")
    wait_for(lambda: n_rows(database_url, db.TicketRow) == 6, 60, "the later history")
    first.stop()

    joining = start_worker(settings)
    # The joining worker maps the snapshot (and refused nothing: no warning).
    mapped = Path(f"/proc/{joining.proc.pid}/maps").read_text()
    assert str(snapshot_path(snapshots, None)) in mapped
    assert "not used" not in joining.log()
    queries = [
        ("q1", "", "The app crashes at login, error QX-99172 zarbolith"),
        ("q2", "", "Since the update my phone app dies when signing in: ZB-55310 quenthrix"),
    ]
    for n, query in enumerate(queries):
        ingest(settings, tickets_csv(tmp_path / f"q{n}.csv", [query]))
        wait_for(lambda n=n: len(decisions(database_url)) == n + 1, 60, "the decision")
    rows = decisions(database_url)
    # Each ranked first by the identifiers it shares, over the crash reports closer in meaning.
    assert rows["q1"].matched_ticket_id == "h4"
    assert rows["q2"].matched_ticket_id == "h9"
    assert rows["q1"].ranked_by == rows["q2"].ranked_by == "hybrid"


def test_purged_tickets_never_score_from_a_snapshot_and_a_purge_removes_it(
    database_url: str, tmp_path: Path
) -> None:
    from tickets.model import TicketKey
    from worker.purge import purge

    engine = db.make_engine(database_url)
    rng = random.Random(11)
    store(engine, rng, 0, 60)
    update_snapshot(engine, tmp_path)
    store(engine, rng, 60, 10)
    marker = "zqxjmarker"
    mapped, caught_up = TicketKey("s", "5"), TicketKey("s", "65")
    index = open_index(engine, directory=tmp_path)
    assert index.mapped_size == 60 and len(index) == 70
    # forget() on a mapped position and on an in-memory one: neither scores again
    assert index.forget([mapped, caught_up]) == 2
    for key in (mapped, caught_up):
        assert key not in index
    for query in [random_text(rng) for _ in range(20)]:
        positions = set(index.top(index.scores(query), 70))
        assert not positions & {5, 65}

    # A purge through the product: the snapshot file goes, and a snapshot written before
    # the purge (put back here) still never offers the purged ticket.
    stale = snapshot_path(tmp_path, None).read_bytes()
    with Session(engine) as session:
        row = session.query(db.TicketRow).filter_by(source="s", ticket_id="7").one()
        row.body = f"{marker} {row.body}"
        session.commit()
    purge(engine, requested_by="test", keys=[TicketKey("s", "7")], lexical_snapshot_dir=tmp_path)
    assert not snapshot_path(tmp_path, None).exists()
    snapshot_path(tmp_path, None).write_bytes(stale)
    index = open_index(engine, directory=tmp_path)
    assert index.mapped_size == 60 and TicketKey("s", "7") not in index
    assert 7 not in set(index.top(index.scores(marker), 70))
    engine.dispose()
