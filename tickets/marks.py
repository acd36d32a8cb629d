"""How the product's own writes into a helpdesk are recognised when they come back.

Write-back adds a tag and an internal note to a ticket; the helpdesk then fires its "ticket
updated" webhook for that change. Intake must tell such an event from an agent's edit, or the
product would re-embed, re-decide or learn feedback from its own actions. Every note the
product writes ends with :func:`note_marker`, and its tags are the two
``TRIAGE_ACTIONS_*_TAG`` settings.
"""

from __future__ import annotations

import re

# An HTML comment is invisible to the agent reading a Markdown note (GitHub) or a Jira
# comment, and those keep a comment's text as sent.
_MARKER = "<!-- ticket-triage:{action_id} -->"
_MARKER_RE = re.compile(r"<!-- ticket-triage:([A-Za-z0-9_-]{1,64}) -->")
# The HTML vendors (Zendesk, Freshdesk, Zammad, Help Scout) sanitise a note's HTML and may drop
# comments from it; their notes also end with this line of visible text, which survives any
# sanitiser and any HTML-to-text conversion.
_REF = "ticket-triage ref: {action_id}"
_REF_RE = re.compile(r"ticket-triage ref: ([A-Za-z0-9_-]{1,64})")


def note_marker(action_id: str) -> str:
    """The marker that ends every note the product writes, naming the action that wrote it."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", action_id):
        raise ValueError(f"action id {action_id!r}: expected 1-64 of A-Z a-z 0-9 _ -")
    return _MARKER.format(action_id=action_id)


def note_ref(action_id: str) -> str:
    """The visible reference line that ends a note in HTML (see ``_REF``)."""
    note_marker(action_id)  # the same id rules
    return _REF.format(action_id=action_id)


def marked_action(text: str | None) -> str | None:
    """The action id of the product's marker (or reference line) in ``text``, or None for
    anyone else's text."""
    if not text:
        return None
    found = _MARKER_RE.search(text) or _REF_RE.search(text)
    return found.group(1) if found else None


def product_tags(duplicate_tag: str, suggest_tag: str) -> frozenset[str]:
    """The tags only the product adds (compared case-insensitively, as the vendors do)."""
    return frozenset({duplicate_tag.lower(), suggest_tag.lower()})
