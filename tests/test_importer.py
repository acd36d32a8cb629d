from __future__ import annotations

import json
from pathlib import Path

from producer.importer import RowError, read_tickets
from tickets.model import Ticket


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


# A Windows-1252 export as Excel writes it: é is the single byte 0xE9, not valid UTF-8.
CP1252_CSV = (
    b"id,subject,body\r\n"
    b"W1,Order,Where is my parcel?\r\n"
    b"W2,Caf\xe9,The caf\xe9 voucher is refused\r\n"
    b"W3,Refund,Please refund the second charge\r\n"
)


def test_a_row_not_valid_in_the_encoding_is_reported_and_the_rest_go_in(tmp_path: Path) -> None:
    f = tmp_path / "excel.csv"
    f.write_bytes(CP1252_CSV)
    good, bad = _split(list(read_tickets(f, source="csv")))
    assert [t.ticket_id for t in good] == ["W1", "W3"]
    assert [str(e).split(" (")[0] for e in bad] == ["line 3: not valid utf-8"]
    assert "0xE9" in bad[0].reason and "--encoding cp1252" in bad[0].reason
    # Read in its own encoding, the file is whole and the text right.
    good, bad = _split(list(read_tickets(f, source="csv", encoding="cp1252")))
    assert not bad and good[1].subject == "Café"


def test_jsonl_row_not_valid_in_the_encoding(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_bytes(
        b'{"id": "1", "body": "fine"}\n{"id": "2", "body": "caf\xe9"}\n{"id": "3", "body": "ok"}\n'
    )
    good, bad = _split(list(read_tickets(f, source="jsonl")))
    assert [t.ticket_id for t in good] == ["1", "3"]
    assert len(bad) == 1 and str(bad[0]).startswith("line 2: not valid utf-8 (byte 0xE9 at column")


def test_utf8_bom_is_skipped_with_an_explicit_encoding(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_bytes("\ufeffid,body\nB1,naïve\n".encode())
    good, bad = _split(list(read_tickets(f, source="csv", encoding="UTF8")))
    assert not bad and [(t.ticket_id, t.body) for t in good] == [("B1", "naïve")]
    f.write_bytes("id,body\nB1,naïve\n".encode("utf-16"))  # BOM-led, as Excel's "Unicode text"
    good, bad = _split(list(read_tickets(f, source="csv", encoding="utf-16")))
    assert not bad and [(t.ticket_id, t.body) for t in good] == [("B1", "naïve")]


def test_fields_longer_than_the_csv_modules_cap_are_read(tmp_path: Path) -> None:
    # 300 KB: more than the csv module's 128 KiB default, less than the 1 MiB ticket limit.
    long_body = "The export stalls. " * 16_000
    huge = "x" * 1_100_000
    f = tmp_path / "long.csv"
    f.write_text(
        f'id,body\nL1,"{long_body}"\nL2,"{huge}\nstill the same field"\nL3,short one\n'
        f"L4,{huge}\nL5,last\n"
    )
    good, bad = _split(list(read_tickets(f, source="csv")))
    assert [t.ticket_id for t in good] == ["L1", "L3", "L5"]
    assert good[0].body.startswith("The export stalls.")
    assert [e.line for e in bad] == [3, 6]
    assert "column 'body' is 1,100,021 bytes, over the limit of 1,048,576" in bad[0].reason
    # The limit follows the setting it is given.
    good, bad = _split(list(read_tickets(f, source="csv", max_field_bytes=4 * 1_048_576)))
    assert not bad and len(good) == 5


def test_jsonl_line_over_the_limit_is_a_row_error(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text(
        json.dumps({"id": "a", "body": "x" * 5_000})
        + "\n"
        + json.dumps({"id": "b", "body": "fine"})
        + "\n"
    )
    good, bad = _split(list(read_tickets(f, source="jsonl", max_field_bytes=4_096)))
    assert [t.ticket_id for t in good] == ["b"]
    assert len(bad) == 1 and bad[0].line == 1 and "the line is 5,023 bytes" in bad[0].reason


def test_a_repeated_id_is_reported_with_its_first_line(tmp_path: Path) -> None:
    f = tmp_path / "t.csv"
    f.write_text(
        "id,body,source\n"
        "D1,first,\n"
        ",no id,\n"
        "D2,second,\n"
        "D1,again,\n"
        "D1,other source,zendesk\n"  # another key: (zendesk, D1)
        "D2,third time,\n"
    )
    rows = list(read_tickets(f, source="csv"))
    good, bad = _split(rows)
    assert [(t.source, t.ticket_id, t.body) for t in good] == [
        ("csv", "D1", "first"),
        ("csv", "D2", "second"),
        ("zendesk", "D1", "other source"),
    ]
    dups = [str(e) for e in bad if e.kind == "duplicate"]
    assert dups == [
        "line 5: duplicate id D1, first seen on line 2",
        "line 7: duplicate id D2, first seen on line 4",
    ]
    assert [e.line for e in bad if e.kind != "duplicate"] == [3]
