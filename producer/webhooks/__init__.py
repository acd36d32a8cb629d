"""Incoming helpdesk webhooks: verify the raw request, then map the payload to a Ticket.

The HTTP layer calls, per ``/hooks/<vendor>`` request::

    verify_signature(vendor, raw_body, headers, secrets, now=...)  # SignatureError → 401
    delivery = adapt(vendor, json.loads(raw_body), headers, received_at=...)
    # MissingHeader → 400, PayloadError → 422 (``.field``), IgnoredEvent → 200 {"ignored": ...}

Vendor schemes and payloads: each vendor's webhook documentation (e.g.
https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries,
https://developer.zendesk.com/documentation/webhooks/verifying/); details in the modules.
"""

from producer.webhooks.adapters import (
    DELIVERY_ID_HEADERS,
    Delivery,
    IgnoredEvent,
    MissingHeader,
    PayloadError,
    adapt,
)
from producer.webhooks.signatures import VENDORS, SignatureError, verify_signature

__all__ = [
    "DELIVERY_ID_HEADERS",
    "VENDORS",
    "Delivery",
    "IgnoredEvent",
    "MissingHeader",
    "PayloadError",
    "SignatureError",
    "adapt",
    "verify_signature",
]
