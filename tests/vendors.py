"""Requests as each helpdesk sends them: its signature over the exact body bytes, and the
event and delivery headers it always adds (fresh delivery ids, so no two are duplicates)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid


def signed_headers(
    vendor: str, body: bytes, secret: str, headers: dict[str, str] | None = None
) -> dict[str, str]:
    """The headers ``vendor`` would send with ``body``, signed with ``secret``; ``headers``
    may set any of them (a given delivery id, another event)."""
    h = {"Content-Type": "application/json", **(headers or {})}
    key = secret.encode()
    if vendor == "github":
        h["X-Hub-Signature-256"] = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        h.setdefault("X-GitHub-Event", "issues")
        h.setdefault("X-GitHub-Delivery", str(uuid.uuid4()))
    elif vendor == "jira":
        h["X-Hub-Signature"] = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        h.setdefault("X-Atlassian-Webhook-Identifier", str(uuid.uuid4()))
    elif vendor == "zammad":
        h["X-Hub-Signature"] = "sha1=" + hmac.new(key, body, hashlib.sha1).hexdigest()
        h.setdefault("X-Zammad-Delivery", str(uuid.uuid4()))
    elif vendor == "helpscout":
        h["X-HelpScout-Signature"] = base64.b64encode(
            hmac.new(key, body, hashlib.sha1).digest()
        ).decode()
        h.setdefault("X-HelpScout-Event", "convo.created")
    elif vendor == "freshdesk":
        h["X-Webhook-Token"] = secret
    elif vendor == "zendesk":
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        h["X-Zendesk-Webhook-Signature-Timestamp"] = stamp
        h["X-Zendesk-Webhook-Signature"] = base64.b64encode(
            hmac.new(key, stamp.encode() + body, hashlib.sha256).digest()
        ).decode()
        h.setdefault("X-Zendesk-Webhook-Invocation-Id", str(uuid.uuid4()))
    else:
        raise AssertionError(vendor)
    return h
