"""The marker that lets intake recognise the product's own notes in a helpdesk."""

import pytest

from tickets.marks import marked_action, note_marker, note_ref, product_tags


def test_a_note_ending_with_the_marker_names_its_action() -> None:
    note = "Likely duplicate of #12 (score 0.93)\n\n" + note_marker("act_01HZX")
    assert marked_action(note) == "act_01HZX"


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "Thanks, this looks like the login crash",
        "<!-- ticket-triage: -->",
        "<!-- other -->",
    ],
)
def test_text_without_the_marker_is_nobodys_action(text: str | None) -> None:
    assert marked_action(text) is None


def test_the_visible_reference_line_names_its_action_after_any_sanitiser() -> None:
    """What an HTML vendor keeps of a note whose comment it dropped, as HTML or as text."""
    assert marked_action("<p>Similar tickets: ...</p><p>" + note_ref("msg_1a") + "</p>") == "msg_1a"
    assert marked_action("Similar tickets: ...\n" + note_ref("msg_1a")) == "msg_1a"
    assert marked_action("ticket-triage ref:") is None


def test_a_marker_refuses_an_id_that_could_break_out_of_the_comment() -> None:
    with pytest.raises(ValueError, match="action id"):
        note_marker("x --> <script>")


def test_product_tags_compare_case_insensitively() -> None:
    assert "triage-duplicate" in product_tags("Triage-Duplicate", "triage-similar")
