from __future__ import annotations

import json
from pathlib import Path

from producer.importer import RowError, read_tickets
from worker.tickets import Ticket


def _split(rows: list[Ticket | RowError]) -> tuple[list[Ticket], list[RowError]]:
    return [r for r in rows if isinstance(r, Ticket)], [r for r in rows if isinstance(r, RowError)]


def test_seed_style_id_content_csv(tmp_path: Path) -> None:
    f = tmp_path / "seed.csv"
    f.write_text('id,content\n1,App crashes at login\n2,"Refund, please"\n')
    good, bad = _split(list(read_tickets(f, source="csv")))
    assert not bad
    assert [(t.source, t.ticket_id, t.body) for t in good] == [
        ("csv", "1", "App crashes at login"),
        ("csv", "2", "Refund, please"),
    ]


def test_bad_rows_reported_with_line_numbers_and_the_rest_kept(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text(
        "\ufeffid,subject,description,created_at,queue,tags\n"  # BOM, as spreadsheets write it
        'A1,Login,Cannot log in,2026-01-02T03:04:05Z,tech,"a;b"\n'
        ",No id,body,,,\n"
        "A3,,,,,\n"
        'A4,Multi,"line one\nline two",not-a-date,,\n'
        "A5,Ok,fine,,billing,x,extra\n"
        "A6,Fine,also fine,,,\n"
    )
    good, bad = _split(list(read_tickets(f, source="csv")))
    assert [t.ticket_id for t in good] == ["A1", "A6"]
    assert good[0].tags == ("a", "b") and good[0].queue == "tech"
    assert good[0].created_at is not None and good[0].created_at.year == 2026
    by_line = {e.line: e.reason for e in bad}
    assert set(by_line) == {3, 4, 5, 7}
    assert "missing id" in by_line[3]
    assert "no text" in by_line[4]
    assert "created_at" in by_line[5]
    assert "more field" in by_line[7]


def test_jsonl_errors_and_aliases(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    lines = [
        json.dumps(
            {"id": 7, "title": "Export fails", "body": "CSV export is empty", "tags": ["export"]}
        ),
        "{not json",
        json.dumps(["a list"]),
        "",
        json.dumps({"ticket_id": "x", "content": "hello", "source": "zendesk"}),
        json.dumps({"id": "y", "body": "x" * 10, "source": "Bad Source!"}),
    ]
    f.write_text("\n".join(lines) + "\n")
    good, bad = _split(list(read_tickets(f, source="jsonl")))
    assert [(t.source, t.ticket_id) for t in good] == [("jsonl", "7"), ("zendesk", "x")]
    assert good[0].subject == "Export fails" and good[0].tags == ("export",)
    assert {e.line for e in bad} == {2, 3, 6}
    assert any("source" in e.reason for e in bad if e.line == 6)


def test_header_without_id_column(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text("name,content\nx,y\n")
    rows = list(read_tickets(f, source="csv"))
    assert len(rows) == 1 and isinstance(rows[0], RowError)
    assert "no id column" in rows[0].reason


def test_invalid_unicode_is_rejected_and_nul_removed(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text(
        '{"id": "1", "body": "broken \\ud800 text"}\n{"id": "2", "body": "nul\\u0000byte"}\n'
    )
    good, bad = _split(list(read_tickets(f, source="jsonl")))
    assert [t.body for t in good] == ["nulbyte"]
    assert len(bad) == 1 and bad[0].line == 1 and "lone surrogate" in bad[0].reason
