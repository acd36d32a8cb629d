"""The built-in dashboard of `triage serve`: ``/dashboard``, behind a ``read`` token.

- ``GET  /dashboard``            the page (401 and a small sign-in form without a session)
- ``GET  /dashboard?token=T``    signs in with a read token once: sets the session cookie and
                                 redirects to ``/dashboard``, so the token leaves the address bar
- ``POST /dashboard/login``      the sign-in form (``token=T``), same effect
- ``POST /dashboard/logout``     clears the cookie
- ``GET  /dashboard/data``       the numbers as JSON; the page fetches it every 5 s
- ``GET  /dashboard/clusters/{source}/{ticket_id}``  one duplicate cluster's tickets
- ``GET  /dashboard/static/...``  the page's script and style sheet (service/static/)

A browser cannot send a bearer header when it navigates, hence the cookie: HttpOnly,
SameSite=Strict, scoped to ``/dashboard``, valid 12 hours, and not the token itself but an
HMAC of an expiry time keyed by the token (a stolen cookie is no API token, and removing the
token from TRIAGE_API_TOKENS ends its sessions). ``Authorization: Bearer`` works everywhere
too, for scripts. The token never appears in a page.

The pages are Jinja2 templates (service/templates/), server-rendered with the numbers of
service/queries.py; the script (service/static/dashboard.js) draws the charts as inline SVG
and refreshes them. The Content-Security-Policy allows no inline script or style at all:
only the page's own script and style sheet, by a nonce fresh for each answer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from config.settings import Settings
from service import queries
from service.deps import ClientsDep

COOKIE = "triage_dashboard"
SESSION_S = 12 * 3600
REFRESH_MS = 5000
MAX_FORM_BYTES = 8192
# Where a sign-in may send the browser back to, relative to /dashboard.
NEXT_PATH = re.compile(r"(/clusters/[A-Za-z0-9_.~%-]+/[A-Za-z0-9_.~%-]+)?")
NOT_READ_TOKEN = "That is not a token with the read scope."

STATIC = Path(__file__).resolve().parent.parent / "static"
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
router = APIRouter(prefix="/dashboard", include_in_schema=False)


# --- sessions ------------------------------------------------------------------------------


def _read_tokens(settings: Settings) -> list[str]:
    return [t for t, scopes in settings.api_tokens.items() if "read" in scopes]


def is_read_token(settings: Settings, token: str) -> bool:
    ok = False
    for known in _read_tokens(settings):
        # every token compared, in constant time, so timing says nothing about which
        ok |= hmac.compare_digest(known.encode(), token.encode())
    return ok and bool(token)


def _mac(token: str, expires: int) -> str:
    return hmac.new(
        token.encode(), f"triage-dashboard|{expires}".encode(), hashlib.sha256
    ).hexdigest()


def session_cookie(token: str, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + SESSION_S
    return f"{expires}.{_mac(token, expires)}"


def session_valid(settings: Settings, value: str, now: float | None = None) -> bool:
    expires_s, _, mac = value.partition(".")
    if not expires_s.isdigit() or not mac:
        return False
    expires = int(expires_s)
    if expires < (now if now is not None else time.time()):
        return False
    ok = False
    for known in _read_tokens(settings):
        ok |= hmac.compare_digest(_mac(known, expires).encode(), mac.encode())
    return ok


class RedactToken(logging.Filter):
    """uvicorn's access log prints query strings: hide the ``token=`` of a sign-in link."""

    PATTERN = re.compile(r"([?&])token=[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "token=" in a for a in args):
            record.args = tuple(
                self.PATTERN.sub(r"\1token=[hidden]", a) if isinstance(a, str) else a for a in args
            )
        return True


def redact_access_log() -> None:
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactToken) for f in access_log.filters):
        access_log.addFilter(RedactToken())


# --- answers -------------------------------------------------------------------------------


def cluster_path(source: str, ticket_id: str) -> str:
    """A cluster page's path under /dashboard (both parts fully percent-encoded)."""
    return f"/clusters/{quote(source, safe='')}/{quote(ticket_id, safe='')}"


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") + "/dashboard"


def _headers(nonce: str) -> dict[str, str]:
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        ),
    }


def _page(
    request: Request, template: str, title: str, status: int = 200, **context: Any
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    return templates.TemplateResponse(
        request,
        template,
        {"title": title, "base": _base(request), "nonce": nonce, **context},
        status_code=status,
        headers=_headers(nonce),
    )


def _signed_in(settings: Settings, request: Request) -> bool:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        return scheme.lower() == "bearer" and is_read_token(settings, token.strip())
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and session_valid(settings, cookie)


def _login(request: Request, message: str | None, next_path: str = "") -> HTMLResponse:
    response = _page(
        request,
        "login.html",
        "ticket-triage: sign in",
        401,
        message=message,
        next_path=next_path,
    )
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _start_session(request: Request, token: str, next_path: str = "") -> Response:
    base = _base(request)
    # only back to a dashboard page: never an open redirect
    target = base + (next_path if NEXT_PATH.fullmatch(next_path) else "")
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    response.headers["Referrer-Policy"] = "no-referrer"
    response.set_cookie(
        COOKIE,
        session_cookie(token),
        max_age=SESSION_S,
        path=base,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


def _gate(settings: Settings, request: Request, next_path: str) -> Response | None:
    """None when signed in; else the answer: a session from ``?token=`` (redirected to the
    same page without it, so the token leaves the address bar and the history), or 401 with
    the sign-in form."""
    token = request.query_params.get("token")
    if token is not None:
        if is_read_token(settings, token):
            return _start_session(request, token, next_path)
        return _login(request, NOT_READ_TOKEN, next_path)
    if not _signed_in(settings, request):
        return _login(request, None, next_path)
    return None


# --- routes --------------------------------------------------------------------------------


@router.get("")
def page(request: Request, c: ClientsDep) -> Response:
    refused = _gate(c.settings, request, "")
    if refused is not None:
        return refused
    return _page(
        request,
        "dashboard.html",
        "ticket-triage dashboard",
        data=c.dashboard.get(),
        routes=queries.ROUTES,
        refresh_ms=REFRESH_MS,
    )


@router.post("/login")
async def login_form(request: Request, c: ClientsDep) -> Response:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            return _login(request, "That form was too large.")
    fields = parse_qs(raw.decode("utf-8", "replace"))
    token = (fields.get("token") or [""])[0].strip()
    next_path = (fields.get("next") or [""])[0]
    if is_read_token(c.settings, token):
        return _start_session(request, token, next_path)
    return _login(request, NOT_READ_TOKEN, next_path)


@router.post("/logout")
def logout(request: Request) -> Response:
    base = _base(request)
    response = RedirectResponse(base, status_code=303)
    response.delete_cookie(COOKIE, path=base, httponly=True, samesite="strict")
    return response


@router.get("/data")
def data_json(request: Request, c: ClientsDep) -> Response:
    if not _signed_in(c.settings, request):
        return JSONResponse(
            {"detail": "sign in at /dashboard, or send a bearer token with the read scope"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"},
        )
    return JSONResponse(c.dashboard.get(), headers={"Cache-Control": "no-store"})


@router.get("/clusters/{source}/{ticket_id:path}")
def cluster(request: Request, source: str, ticket_id: str, c: ClientsDep) -> Response:
    refused = _gate(c.settings, request, cluster_path(source, ticket_id))
    if refused is not None:
        return refused
    found = (
        queries.read_cluster(c.engine, source, ticket_id)
        if len(source) <= 64 and len(ticket_id) <= 255
        else None
    )
    if found is None:
        return _page(
            request,
            "no_cluster.html",
            "ticket-triage: no such cluster",
            404,
            source=source,
            ticket_id=ticket_id,
        )
    shown = len(found["tickets"]) + (0 if found["root_decided"] else 1)
    return _page(request, "cluster.html", "ticket-triage: cluster", cluster=found, shown=shown)
