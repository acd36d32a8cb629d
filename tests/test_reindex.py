"""`triage reindex`: a model change re-embeds from SQL into a new collection, then switches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from config.settings import Settings
from tests.conftest import run_triage
from tickets import db
from tickets.errors import ModelMismatch
from tickets.model import Ticket
from worker.embedding.local import LocalEmbedder, packaged_model_dir
from worker.pipeline import Services, WorkItem, triage_batch
from worker.reindex import active_collection, reindex
from worker.routing import Thresholds
from worker.store import open_store

CRASH = "The mobile app crashes every time I try to log in with my email address."
CRASH2 = "The mobile app crashes every time I try to log in with my e-mail address!"
REFUND = "I was charged twice for my March invoice and would like a refund of the second charge."


def _services(settings: Settings, embedder: LocalEmbedder) -> Services:
    engine = db.make_engine(settings.database_url)
    store = open_store(settings, embedder, active_collection(engine, settings))
    return Services(
        embedder=embedder, store=store, engine=engine, thresholds=Thresholds(0.85, 0.7), top_k=5
    )


def test_model_change_reindexes_and_switches(
    make_settings: Callable[..., Settings], sqlite_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url=sqlite_url)
    old_model = LocalEmbedder()
    s = _services(settings, old_model)
    triage_batch(
        [
            WorkItem(
                Ticket(source="t", ticket_id=str(i), body=b), "backfill" if i == 0 else "route"
            )
            for i, b in enumerate([CRASH, REFUND, "Where is my parcel?"])
        ],
        s,
    )
    s.store.close()

    # "another model": the same weights under another folder name, so another model id
    other = tmp_path / "minilm-other"
    other.mkdir()
    for f in packaged_model_dir().iterdir():
        (other / f.name).symlink_to(f)
    new_model = LocalEmbedder(other)
    assert new_model.model_id != old_model.model_id
    with pytest.raises(ModelMismatch, match="triage reindex"):
        open_store(
            settings, new_model, active_collection(db.make_engine(sqlite_url), settings)
        ).close()

    engine = db.make_engine(sqlite_url)
    seen: list[int] = []
    result = reindex(settings, new_model, engine, progress=seen.append)
    assert result.old == "tickets" and result.new.startswith("tickets-local-minilm-other-")
    assert result.tickets == 3 and sum(seen) == 3
    assert active_collection(engine, settings) == result.new

    s = _services(settings, new_model)  # opens the new collection: no mismatch
    assert s.store.count() == 3
    res = triage_batch([WorkItem(Ticket(source="t", ticket_id="9", body=CRASH2))], s)
    assert res[0].status == "duplicate" and res[0].outcome is not None
    assert res[0].outcome.canonical.ticket_id == "0"  # the backfilled history kept its role
    s.store.close()
    # the old collection is still there, intact, for a roll-back
    old_store = open_store(settings, old_model, "tickets")
    assert old_store.count() == 3
    old_store.close()


def test_reindex_command(make_settings: Callable[..., Settings], sqlite_url: str) -> None:
    settings = make_settings(database_url=sqlite_url)
    s = _services(settings, LocalEmbedder())
    triage_batch([WorkItem(Ticket(source="t", ticket_id="1", body=CRASH))], s)
    s.store.close()
    out = run_triage(settings, "reindex", "--collection", "tickets-v2", timeout=300)
    assert out.returncode == 0, out.stderr
    assert "re-embedded 1 tickets" in out.stdout and "'tickets-v2'" in out.stdout
    again = run_triage(settings, "reindex", "--collection", "tickets-v2", timeout=300)
    assert again.returncode == 1 and "active one" in again.stderr


def test_reindex_embeds_what_the_worker_embedded(
    make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    # A body intake converted from HTML is stored as text: "<div>" in it is what the customer
    # wrote. Reindexing reads the stored format and embeds the same text again, not the text
    # with the "<div>" read as a tag a second time.
    settings = make_settings(database_url=sqlite_url)
    model = LocalEmbedder()
    s = _services(settings, model)
    quoting = Ticket(
        source="freshdesk",
        ticket_id="7",
        subject="Page title",
        body="The title shows <div> since the update",
        body_format="text",
    )
    markup = Ticket(source="api", ticket_id="8", body="<p>Printer <b>jammed</b></p>")
    triage_batch([WorkItem(quoting), WorkItem(markup)], s)
    before = s.store.fetch([quoting.key, markup.key])
    s.store.close()

    engine = db.make_engine(sqlite_url)
    result = reindex(settings, model, engine, collection="tickets-again")
    after_store = open_store(settings, model, result.new)
    after = after_store.fetch([quoting.key, markup.key])
    after_store.close()
    for key in (quoting.key, markup.key):
        assert float(np.dot(before[key][0], after[key][0])) == pytest.approx(1.0, abs=1e-6)
