"""Text preparation: what of a ticket gets embedded.

Kept deliberately small until the quality tooling (`triage evaluate`) measures each step;
for now: subject first (it is the customer's own summary), then the body, whitespace
collapsed so that formatting noise does not move the vector.
"""

from __future__ import annotations

import hashlib
import re

from worker.tickets import Ticket

_SPACE = re.compile(r"\s+")


def normalise_whitespace(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def embedding_text(ticket: Ticket) -> str:
    subject = normalise_whitespace(ticket.subject or "")
    body = normalise_whitespace(ticket.body)
    if subject and body and not body.startswith(subject):
        return f"{subject}. {body}"
    return body or subject


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
