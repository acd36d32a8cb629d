"""Webhook request authentication, one scheme per vendor, as each vendor documents it.

Always called on the **raw request bytes**, before any JSON parsing. The vendor comes from
the endpoint path (``/hooks/<vendor>``), never from sniffing headers: Jira and Zammad
both send ``X-Hub-Signature`` with different algorithms.

==========  ===========================================  =====================================
vendor      header(s)                                    value
==========  ===========================================  =====================================
zendesk     X-Zendesk-Webhook-Signature (+ -Timestamp)   base64(HMAC-SHA256(TIMESTAMP + body)),
                                                         timestamp within ``tolerance_s``
github      X-Hub-Signature-256                          ``sha256=`` + hex(HMAC-SHA256(body));
                                                         the legacy sha1 header is refused
jira        X-Hub-Signature                              ``sha256=`` + hex(HMAC-SHA256(body))
zammad      X-Hub-Signature                              ``sha1=`` + hex(HMAC-SHA1(body))
helpscout   X-HelpScout-Signature                        base64(HMAC-SHA1(body))
freshdesk   X-Webhook-Token or Authorization: Bearer     the shared token itself (Freshdesk
                                                         cannot sign)
==========  ===========================================  =====================================

Several secrets may be active at once (rotation): a request passes if any of them verifies.
Empty strings in ``secrets`` are ignored, and no usable secret at all is a refusal, never
"accept unsigned". Every comparison is ``hmac.compare_digest``. Error messages name the
header and what is wrong with it; they never contain a secret or an expected signature.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

__all__ = ["VENDORS", "SignatureError", "lower_headers", "verify_signature"]

VENDORS: tuple[str, ...] = ("zendesk", "github", "jira", "freshdesk", "zammad", "helpscout")

ZENDESK_SIGNATURE = "x-zendesk-webhook-signature"
ZENDESK_TIMESTAMP = "x-zendesk-webhook-signature-timestamp"
GITHUB_SIGNATURE = "x-hub-signature-256"
HUB_SIGNATURE = "x-hub-signature"  # Jira (sha256=) and Zammad (sha1=)
HELPSCOUT_SIGNATURE = "x-helpscout-signature"
FRESHDESK_TOKEN = "x-webhook-token"

# Header names as vendors document them, for messages.
_DISPLAY = {
    ZENDESK_SIGNATURE: "X-Zendesk-Webhook-Signature",
    ZENDESK_TIMESTAMP: "X-Zendesk-Webhook-Signature-Timestamp",
    GITHUB_SIGNATURE: "X-Hub-Signature-256",
    HUB_SIGNATURE: "X-Hub-Signature",
    HELPSCOUT_SIGNATURE: "X-HelpScout-Signature",
    FRESHDESK_TOKEN: "X-Webhook-Token",
}


class SignatureError(Exception):
    """The request is not authenticated (HTTP 401). The message says why, without secrets."""


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names lower-cased (HTTP header names are case-insensitive), values stripped."""
    return {str(k).lower(): str(v).strip() for k, v in headers.items()}


def _bytes(text: str) -> bytes:
    # surrogatepass: a header value with a lone surrogate must compare unequal, not crash.
    return text.encode("utf-8", "surrogatepass")


def _require(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name, "")
    if not value:
        raise SignatureError(f"missing header {_DISPLAY.get(name, name)}")
    return value


def _strip_prefix(value: str, header: str, prefix: str) -> str:
    if not value.lower().startswith(prefix):
        got = value.split("=", 1)[0] + "=" if "=" in value else "no prefix"
        raise SignatureError(
            f"{_DISPLAY[header]} has the wrong prefix: expected {prefix!r}, got {got[:16]!r}"
        )
    return value[len(prefix) :]


def _any_matches(secrets: Sequence[str], expected: Callable[[bytes], bytes], given: bytes) -> bool:
    ok = False
    for secret in secrets:
        # No short-circuit: every configured secret costs the same work.
        ok |= hmac.compare_digest(expected(_bytes(secret)), given)
    return ok


def _hex(digest: str, message: bytes) -> Callable[[bytes], bytes]:
    return lambda key: hmac.new(key, message, digest).hexdigest().encode("ascii")


def _b64(digest: str, message: bytes) -> Callable[[bytes], bytes]:
    return lambda key: base64.b64encode(hmac.new(key, message, digest).digest())


def _check_zendesk_time(stamp: str, now: datetime, tolerance_s: int) -> None:
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        raise SignatureError(
            f"{_DISPLAY[ZENDESK_TIMESTAMP]} is not an ISO 8601 timestamp"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    skew = abs((now - when).total_seconds())
    if skew > tolerance_s:
        raise SignatureError(
            f"{_DISPLAY[ZENDESK_TIMESTAMP]} {stamp[:40]!r} is outside the tolerance window "
            f"of {tolerance_s}s (off by {int(skew)}s): a replay, or a clock out of sync"
        )


def _verify_zendesk(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], now: datetime, tol: int
) -> None:
    given = _require(headers, ZENDESK_SIGNATURE)
    stamp = _require(headers, ZENDESK_TIMESTAMP)
    _check_zendesk_time(stamp, now, tol)
    # Signed message: the timestamp header exactly as sent, then the raw body, no separator.
    if not _any_matches(secrets, _b64("sha256", _bytes(stamp) + body), _bytes(given)):
        raise SignatureError(f"bad signature in {_DISPLAY[ZENDESK_SIGNATURE]}")


def _verify_hub(
    body: bytes, headers: Mapping[str, str], secrets: Sequence[str], header: str, algo: str
) -> None:
    value = _require(headers, header)
    given = _strip_prefix(value, header, f"{algo}=").lower()
    if not _any_matches(secrets, _hex(algo, body), _bytes(given)):
        raise SignatureError(f"bad signature in {_DISPLAY[header]}")


def _verify_github(body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> None:
    if not headers.get(GITHUB_SIGNATURE) and headers.get(HUB_SIGNATURE):
        raise SignatureError(
            "missing header X-Hub-Signature-256 (the legacy sha1 X-Hub-Signature is not accepted)"
        )
    _verify_hub(body, headers, secrets, GITHUB_SIGNATURE, "sha256")


def _verify_helpscout(body: bytes, headers: Mapping[str, str], secrets: Sequence[str]) -> None:
    given = _require(headers, HELPSCOUT_SIGNATURE)
    if not _any_matches(secrets, _b64("sha1", body), _bytes(given)):
        raise SignatureError(f"bad signature in {_DISPLAY[HELPSCOUT_SIGNATURE]}")


def _verify_freshdesk(headers: Mapping[str, str], secrets: Sequence[str]) -> None:
    token = headers.get(FRESHDESK_TOKEN, "")
    where = "X-Webhook-Token"
    if not token:
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            token, where = credential.strip(), "Authorization: Bearer"
    if not token:
        raise SignatureError("missing header X-Webhook-Token (or Authorization: Bearer <token>)")
    if not _any_matches(secrets, lambda key: key, _bytes(token)):
        raise SignatureError(f"bad token in {where}")


def verify_signature(
    vendor: str,
    raw_body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    *,
    now: datetime,
    tolerance_s: int = 300,
) -> None:
    """Return if the request is authentic for ``vendor``; raise SignatureError otherwise.

    ``headers`` may be any mapping (case is ignored). ``now`` is only used for Zendesk's
    signed timestamp; a naive ``now`` or header timestamp is taken as UTC.
    Raises ValueError for a vendor not in VENDORS: that is a routing bug, not a client error.
    """
    if vendor not in VENDORS:
        raise ValueError(f"unknown webhook vendor {vendor!r}; expected one of {', '.join(VENDORS)}")
    usable = [s for s in secrets if s]
    if not usable:
        raise SignatureError(f"no secret configured for {vendor}")
    lowered = lower_headers(headers)
    body = bytes(raw_body)
    if vendor == "zendesk":
        _verify_zendesk(body, lowered, usable, now, tolerance_s)
    elif vendor == "github":
        _verify_github(body, lowered, usable)
    elif vendor == "jira":
        _verify_hub(body, lowered, usable, HUB_SIGNATURE, "sha256")
    elif vendor == "zammad":
        _verify_hub(body, lowered, usable, HUB_SIGNATURE, "sha1")
    elif vendor == "helpscout":
        _verify_helpscout(body, lowered, usable)
    else:  # freshdesk
        _verify_freshdesk(lowered, usable)
