"""Ticket updates, unit level: what an update changes once the product's own marks are set
aside (the loop guard), and the BM25 index replacing an edited ticket's text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from tickets import db
from tickets.marks import note_marker, product_tags
from tickets.model import Ticket, TicketKey, TicketUpdate
from worker.lexical import LexicalIndex
from worker.lifecycle import classify

OWN = product_tags("triage-duplicate", "triage-similar")


def _row(**values: Any) -> db.TicketRow:
    base: dict[str, Any] = {
        "source": "github",
        "ticket_id": "o/r#1",
        "subject": "Login fails",
        "body": "The login button does nothing.",
        "status": "open",
        "tags": ["bug"],
    }
    return db.TicketRow(**{**base, **values})


def _change(route: str | None = "duplicate", row: db.TicketRow | None = None, **fields: Any) -> Any:
    update = TicketUpdate(source="github", ticket_id="o/r#1", event="e", **fields)
    return classify(update, row or _row(), route, duplicate_tag="triage-duplicate", own_tags=OWN)


def test_the_products_own_tag_and_note_are_no_change() -> None:
    own_tag = _change(tags_added=("triage-duplicate",))
    assert (own_tag.text, own_tag.status, own_tag.verdict, own_tag.own) == (
        False,
        None,
        None,
        True,
    )
    own_note = _change(note="Likely a duplicate of #4\n" + note_marker("act-1"))
    assert (own_note.text, own_note.status, own_note.verdict, own_note.tags, own_note.own) == (
        False,
        None,
        None,
        None,
        True,
    )
    # The whole tag set, as Zendesk's trigger or Help Scout's convo.tags send it.
    whole = _change(tags=("bug", "Triage-Similar"), route="suggest")
    assert whole.own and whole.verdict is None and whole.tags == ["bug", "triage-similar"]


def test_an_agents_note_or_tag_is_not_the_products() -> None:
    assert not _change(note="Looks like #4 to me").own
    assert not _change(note="<!-- ticket-triage:not valid! -->").own
    assert not _change(tags_added=("billing",)).own


def test_text_is_a_change_only_when_it_differs() -> None:
    same = _change(text=True, subject="Login fails", body="The login button does nothing.")
    assert not same.text
    assert _change(text=True, subject="Login fails on Android", body=None).text
    assert not _change(text=True, subject="Login fails", body=None).text  # body not sent
    assert _change(text=True, subject="Login fails", body="Now it crashes.").text


def test_feedback_verdicts() -> None:
    assert _change(duplicate=True, status="closed").verdict == "confirm"
    assert _change(merged_into="o/r#4").verdict == "confirm"
    # The product tags its duplicates itself: that tag on a duplicate is no verdict; on a
    # suggestion an agent added it.
    assert _change(tags_added=("triage-duplicate",)).verdict is None
    assert _change("suggest", tags_added=("triage-duplicate",)).verdict == "confirm"
    tagged = _row(tags=["bug", "triage-duplicate"])
    assert _change(row=tagged, tags_removed=("triage-duplicate",)).verdict == "veto"
    # Removing the tag from a duplicate is a veto even if its addition never came back;
    # from a ticket the product did not tag, and that does not carry it, it is nothing.
    assert _change(tags_removed=("triage-duplicate",)).verdict == "veto"
    assert _change("suggest", tags_removed=("triage-duplicate",)).verdict is None
    assert _change(status="closed").verdict is None


def test_status_is_a_change_only_when_it_differs() -> None:
    assert _change(status="open").status is None
    assert _change(status="solved").status == "solved"


def test_an_edited_ticket_replaces_its_bm25_entry(database_url: str) -> None:
    engine = db.make_engine(database_url)
    key = TicketKey("github", "o/r#1")
    ticket = Ticket(source=key.source, ticket_id=key.ticket_id, body="printer paper jam floor")
    other = Ticket(source="github", ticket_id="o/r#2", body="password reset email missing")
    with Session(engine) as session:
        db.save_batch(
            session,
            [
                db.ticket_values(t, content_hash="h", backfill=True, model="m")
                for t in (ticket, other)
            ],
            [],
        )
        session.commit()
    index = LexicalIndex()
    # A worker indexes its own ticket before the commit (no row id), then refreshes.
    index.add(key, "printer paper jam floor")
    assert index.refresh(engine) == 1
    assert index.scores("printer jam")[index.position(key)] > 0  # type: ignore[index]
    with Session(engine) as session:  # what worker/lifecycle.py writes for an edit
        session.execute(
            update(db.TicketRow)
            .where(db.key_filter(db.TicketRow, [key]))
            .values(
                id=db.next_ticket_id(session),
                body="vpn disconnects hourly",
                updated_at=datetime.now(UTC),
            )
        )
        session.commit()
    assert index.refresh(engine) == 1
    scores = index.scores("printer jam")
    assert float(scores.max()) == 0.0  # the old text is found nowhere
    assert index.scores("vpn disconnects")[index.position(key)] > 0  # type: ignore[index]
    assert index.refresh(engine) == 0
    # A refresh that reads the edited row before this worker knew its row id replaces too.
    fresh = LexicalIndex()
    fresh.add(key, "printer paper jam floor")
    assert fresh.refresh(engine) == 2
    assert float(fresh.scores("printer jam").max()) == 0.0
    engine.dispose()


def test_an_updates_section_holds_the_collector_off() -> None:
    """An update decided again under its scope's lock pauses the garbage collector from the
    lock's entry to its release, as a batch's section does (worker/pipeline.py)."""
    import contextlib
    import gc
    from collections.abc import Iterator
    from types import SimpleNamespace

    from worker.lifecycle import _section

    seen: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def lock(name: str | None = None) -> Iterator[str]:
        seen.append((f"entering {name}", gc.isenabled()))
        yield "section"
        seen.append(("releasing", gc.isenabled()))

    for scoped in (False, True):
        services = SimpleNamespace(
            lock=lock, scope_lock=lock, match_scope="source" if scoped else None
        )
        with _section(services, None, "github") as section:  # type: ignore[arg-type]
            assert section == "section"
            seen.append(("inside", gc.isenabled()))
        assert gc.isenabled()
    assert [enabled for _, enabled in seen] == [True, False, False] * 2
    assert seen[0][0] == "entering None" and seen[3][0] != "entering None"
