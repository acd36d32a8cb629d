"""Write-back into each helpdesk: one module per vendor, each a
:class:`~actions.helpdesks.base.HelpdeskWriter` over the API the vendor documents.

:func:`writers` builds this process's writers, one per helpdesk whose credential is set.
"""

from __future__ import annotations

import requests

from actions.helpdesks.base import HelpdeskWriter
from actions.helpdesks.github import GitHubWriter
from config.settings import Settings

# The writer of each source, as the webhook routes spell it.
WRITERS: dict[str, type[HelpdeskWriter]] = {
    "github": GitHubWriter,
}


def writers(settings: Settings, http: requests.Session) -> dict[str, HelpdeskWriter]:
    """This process's writers: one per helpdesk write-back is on for."""
    return {
        source: WRITERS[source](settings, http)
        for source in settings.writeback_vendors
        if source in WRITERS
    }
