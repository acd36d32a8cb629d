"""How the product's own writes into a helpdesk are recognised when they come back.

Write-back adds a tag and an internal note to a ticket; the helpdesk then fires its "ticket
updated" webhook for that change. Intake must tell such an event from an agent's edit, or the
product would re-embed, re-decide or learn feedback from its own actions. Every note the
product writes ends with :func:`note_marker`, and its tags are the two
``TRIAGE_ACTIONS_*_TAG`` settings.
"""

from __future__ import annotations

import re

# An HTML comment survives every supported vendor's note formats (Markdown on GitHub and
# Jira's wiki renderer show it as nothing; the HTML vendors keep it in the body) and is
# invisible to the agent reading the note.
_MARKER = "<!-- ticket-triage:{action_id} -->"
_MARKER_RE = re.compile(r"<!-- ticket-triage:([A-Za-z0-9_-]{1,64}) -->")


def note_marker(action_id: str) -> str:
    """The marker that ends every note the product writes, naming the action that wrote it."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", action_id):
        raise ValueError(f"action id {action_id!r}: expected 1-64 of A-Z a-z 0-9 _ -")
    return _MARKER.format(action_id=action_id)


def marked_action(text: str | None) -> str | None:
    """The action id of the product's marker in ``text``, or None for anyone else's text."""
    if not text:
        return None
    found = _MARKER_RE.search(text)
    return found.group(1) if found else None


def product_tags(duplicate_tag: str, suggest_tag: str) -> frozenset[str]:
    """The tags only the product adds (compared case-insensitively, as the vendors do)."""
    return frozenset({duplicate_tag.lower(), suggest_tag.lower()})
