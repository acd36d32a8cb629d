"""The generic outbound webhook, signed per the Standard Webhooks specification
(https://www.standardwebhooks.com, spec/standard-webhooks.md of its repository):

- ``webhook-id``: the action's id, the same on every attempt (a receiver deduplicates by it);
- ``webhook-timestamp``: the attempt's time, integer seconds since the epoch;
- ``webhook-signature``: ``v1,`` + base64 of HMAC-SHA256 over ``{id}.{timestamp}.{body}``,
  keyed with the bytes of the ``whsec_`` secret.

The body is the decision as the read API returns it, minified JSON; the bytes signed are the
bytes sent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

KIND = "webhook"


def body(payload: dict[str, Any]) -> bytes:
    """The request body: minified UTF-8 JSON, the same bytes on every attempt."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signature(key: bytes, msg_id: str, timestamp: int, data: bytes) -> str:
    """The ``webhook-signature`` value (symmetric scheme, ``v1``)."""
    signed = f"{msg_id}.{timestamp}.".encode() + data
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(key: bytes, msg_id: str, timestamp: int, data: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, data),
    }
