"""Links back to a ticket in its helpdesk, built from what the ticket stores.

A ticket stores its source and its id, no address (tickets/model.py; the webhook adapters
keep no URL from the payload). Only GitHub's id carries the whole address: the adapter makes
it ``owner/repo#number`` (producer/webhooks/adapters.py), and an issue lives at
``https://github.com/owner/repo/issues/number``. Every other helpdesk needs the account's own
host (a Zendesk subdomain, a Jira site, a Zammad server...), which nothing stores: those
tickets get no link rather than a guessed one. GitHub Enterprise Server deliveries reach the
same adapter and would be linked to github.com, so a deployment on one says so in its docs.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# GitHub's owner and repository names: letters, digits, '-', '_' and '.'.
_GITHUB_ID = re.compile(r"([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)#([0-9]+)")


def helpdesk_link(source: str, ticket_id: str) -> str | None:
    """The ticket's page in its helpdesk, or None when what is stored does not say."""
    if source == "github":
        found = _GITHUB_ID.fullmatch(ticket_id)
        if found is not None:
            owner, repo, number = found.groups()
            return f"https://github.com/{quote(owner)}/{quote(repo)}/issues/{number}"
    return None
