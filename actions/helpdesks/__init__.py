"""Write-back into each helpdesk: one module per vendor, each a
:class:`~actions.helpdesks.base.HelpdeskWriter` over the API the vendor documents.

:func:`writers` builds this process's writers, one per helpdesk whose credential is set.
"""

from __future__ import annotations

from typing import Any

import requests
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from actions.helpdesks.base import HelpdeskWriter, match_keys
from actions.helpdesks.freshdesk import FreshdeskWriter
from actions.helpdesks.github import GitHubWriter
from actions.helpdesks.helpscout import HelpScoutWriter
from actions.helpdesks.jira import JiraWriter
from actions.helpdesks.zammad import ZammadWriter
from actions.helpdesks.zendesk import ZendeskWriter
from config.settings import Settings
from tickets import db

# The writer of each source, as the webhook routes spell it.
WRITERS: dict[str, type[HelpdeskWriter]] = {
    "freshdesk": FreshdeskWriter,
    "github": GitHubWriter,
    "helpscout": HelpScoutWriter,
    "jira": JiraWriter,
    "zammad": ZammadWriter,
    "zendesk": ZendeskWriter,
}


def writers(settings: Settings, http: requests.Session) -> dict[str, HelpdeskWriter]:
    """This process's writers: one per helpdesk write-back is on for."""
    return {
        source: WRITERS[source](settings, http)
        for source in settings.writeback_vendors
        if source in WRITERS
    }


def preview(
    settings: Settings, engine: Engine, action_id: str, source: str, decision: dict[str, Any]
) -> dict[str, Any] | None:
    """What a write-back action would write now (its tags and note, as plain text), without
    sending anything: what `triage actions` shows of a dry run. None when write-back to
    ``source`` is off."""
    cls = WRITERS.get(source)
    if cls is None or source not in settings.writeback_vendors:
        return None
    with Session(engine) as session:
        subjects = db.subjects(session, match_keys(decision))
    write = cls(settings, requests.Session()).prepare(action_id, decision, subjects)
    return {"tags": list(write.tags), "note": write.note}
