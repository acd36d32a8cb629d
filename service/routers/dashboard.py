"""The built-in dashboard of `triage serve`: ``/dashboard``, behind a ``read`` token.

- ``GET  /dashboard``            the page (401 and a small sign-in form without a session)
- ``GET  /dashboard?token=T``    signs in with a read token once: sets the session cookie and
                                 redirects to ``/dashboard``, so the token leaves the address bar
- ``POST /dashboard/login``      the sign-in form (``token=T``), same effect
- ``POST /dashboard/logout``     clears the cookie
- ``GET  /dashboard/data``       the numbers as JSON; the page fetches it every 5 s
- ``GET  /dashboard/clusters/{source}/{ticket_id}``  one duplicate cluster's tickets
- ``GET  /dashboard/review``     the review queue: `duplicate` / `suggest` decisions no agent
                                 has judged, newest first, filtered by route, queue, source
- ``GET  /dashboard/review/items``  the next page of that queue, as HTML rows (the script
                                 appends them as the queue empties)
- ``POST /dashboard/review/feedback``  an agent's verdict, JSON ``{source, ticket_id, verdict}``:
                                 a token with the ``feedback`` scope, and on the cookie session
                                 the page's CSRF token in ``X-CSRF-Token``
- ``GET  /dashboard/static/...``  the pages' scripts and style sheet (service/static/)

A browser cannot send a bearer header when it navigates, hence the cookie: HttpOnly,
SameSite=Strict, scoped to ``/dashboard``, valid 12 hours, and not the token itself but an
HMAC of an expiry time keyed by the token (a stolen cookie is no API token, and removing the
token from TRIAGE_API_TOKENS ends its sessions). The name an agent gives at sign-in rides in
the cookie, under the same HMAC, and is the ``agent`` of the verdicts given on the page.
``Authorization: Bearer`` works everywhere too, for scripts. The token never appears in a page.

CSRF: a verdict is a write, so the cookie alone never authorises one. Each page carries a
token derived from the session (an HMAC of the cookie keyed by the API token, so it is per
session and unforgeable without the token) in a ``<meta>`` tag; the script sends it as the
``X-CSRF-Token`` header and the server compares it in constant time. A header is chosen over
SameSite=Strict plus an Origin check: SameSite treats every subdomain of the registrable
domain as the same site (a sibling app there could post with the cookie), and some browsers
and privacy tools send no Origin, which would force either refusing them or letting
requests without one through. Another origin can neither read the meta tag nor set a custom
header without a CORS grant, which this service never gives. A bearer header needs no such
token: a browser never adds one by itself.

The pages are Jinja2 templates (service/templates/), server-rendered with the numbers of
service/queries.py; the script (service/static/dashboard.js) draws the charts as inline SVG
and refreshes them. The Content-Security-Policy allows no inline script or style at all:
only the page's own script and style sheet, by a nonce fresh for each answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from config.settings import Settings
from service import queries
from service.deps import ApiError, ClientsDep, EngineDep, require
from service.routers.tickets import ID_PATTERN

COOKIE = "triage_dashboard"
SESSION_S = 12 * 3600
REFRESH_MS = 5000
MAX_FORM_BYTES = 8192
# Where a sign-in may send the browser back to, relative to /dashboard.
NEXT_PATH = re.compile(
    r"(/clusters/[A-Za-z0-9_.~%-]+/[A-Za-z0-9_.~%-]+|/review(\?[A-Za-z0-9_.~%=&-]*)?)?"
)
NOT_READ_TOKEN = "That is not a token with the read scope."
NOT_AN_AGENT = "A name is at most 200 characters, without control characters."
# The agent recorded for verdicts given without a name (a bearer header, or a sign-in
# without one).
DEFAULT_AGENT = "dashboard"
CSRF_HEADER = "X-CSRF-Token"
REVIEW_PAGE = 25

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


def _mac(token: str, expires: int, agent: str | None = None) -> str:
    message = f"triage-dashboard|{expires}" + ("" if agent is None else f"|{agent}")
    return hmac.new(token.encode(), message.encode(), hashlib.sha256).hexdigest()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def session_cookie(token: str, now: float | None = None, agent: str | None = None) -> str:
    """``expires.mac``, or ``expires.mac.name`` with the agent's name (base64url) when one
    was given: the MAC covers the name too."""
    expires = int(now if now is not None else time.time()) + SESSION_S
    value = f"{expires}.{_mac(token, expires, agent)}"
    return value if agent is None else f"{value}.{_b64(agent)}"


@dataclass(frozen=True)
class Viewer:
    """Who is looking: the API token behind the request, the agent's name from the sign-in,
    and the CSRF token of a cookie session (None for a bearer header)."""

    token: str
    agent: str | None
    csrf: str | None


def csrf_token(token: str, cookie: str) -> str:
    return hmac.new(token.encode(), f"triage-csrf|{cookie}".encode(), hashlib.sha256).hexdigest()


def session_viewer(settings: Settings, value: str, now: float | None = None) -> Viewer | None:
    """The session a cookie value proves, or None (malformed, expired, forged, or its token
    no longer configured)."""
    expires_s, _, rest = value.partition(".")
    mac, _, name = rest.partition(".")
    agent = _unb64(name) if name else None
    if not expires_s.isdigit() or not mac or (name and agent is None):
        return None
    expires = int(expires_s)
    if expires < (now if now is not None else time.time()):
        return None
    found = None
    for known in _read_tokens(settings):
        # every token compared, in constant time, so timing says nothing about which
        if hmac.compare_digest(_mac(known, expires, agent).encode(), mac.encode()):
            found = known
    return None if found is None else Viewer(found, agent, csrf_token(found, value))


def agent_name(raw: str | None) -> str | Literal[False] | None:
    """The name typed at sign-in: None when blank, False when it cannot be an agent (the
    API's rule: 1-200 characters, no control characters)."""
    name = (raw or "").strip()
    if not name:
        return None
    return name if len(name) <= 200 and re.fullmatch(ID_PATTERN, name) else False


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


def _viewer(settings: Settings, request: Request) -> Viewer | None:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        ok = scheme.lower() == "bearer" and is_read_token(settings, token)
        return Viewer(token, None, None) if ok else None
    cookie = request.cookies.get(COOKIE)
    return None if cookie is None else session_viewer(settings, cookie)


def _signed_in(settings: Settings, request: Request) -> bool:
    return _viewer(settings, request) is not None


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


def _start_session(
    request: Request, token: str, next_path: str = "", agent: str | None = None
) -> Response:
    base = _base(request)
    # only back to a dashboard page: never an open redirect
    target = base + (next_path if NEXT_PATH.fullmatch(next_path) else "")
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    response.headers["Referrer-Policy"] = "no-referrer"
    response.set_cookie(
        COOKIE,
        session_cookie(token, agent=agent),
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
        agent = agent_name(request.query_params.get("agent"))
        if agent is False:
            return _login(request, NOT_AN_AGENT, next_path)
        if is_read_token(settings, token):
            return _start_session(request, token, next_path, agent)
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
    agent = agent_name((fields.get("agent") or [""])[0])
    if agent is False:
        return _login(request, NOT_AN_AGENT, next_path)
    if is_read_token(c.settings, token):
        return _start_session(request, token, next_path, agent)
    return _login(request, NOT_READ_TOKEN, next_path)


@router.post("/logout")
def logout(request: Request) -> Response:
    base = _base(request)
    response = RedirectResponse(base, status_code=303)
    response.delete_cookie(COOKIE, path=base, httponly=True, samesite="strict")
    return response


def _not_signed_in() -> JSONResponse:
    return JSONResponse(
        {"detail": "sign in at /dashboard, or send a bearer token with the read scope"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"},
    )


@router.get("/data")
def data_json(request: Request, c: ClientsDep) -> Response:
    if not _signed_in(c.settings, request):
        return _not_signed_in()
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


# --- the review queue ------------------------------------------------------------------------

# A blank value is no filter: the page's form sends every field.
RouteQ = Annotated[str | None, Query(pattern="^(duplicate|suggest)?$")]
QueueQ = Annotated[str | None, Query(max_length=100)]
SourceQ = Annotated[str | None, Query(max_length=64)]
CursorQ = Annotated[str | None, Query(max_length=40)]
LimitQ = Annotated[int, Query(ge=1, le=100)]


@dataclass
class ReviewQuery:
    """The review queue's query parameters, as FastAPI reads them for both routes."""

    route: RouteQ = None
    queue: QueueQ = None
    source: SourceQ = None
    cursor: CursorQ = None
    limit: LimitQ = REVIEW_PAGE

    def filters(self) -> dict[str, str]:
        """The filters given, as they go back into the page's links (blank ones left out)."""
        given = {"route": self.route, "queue": self.queue, "source": self.source}
        return {k: v for k, v in given.items() if v}

    def page(self, c: ClientsDep, *, count: bool) -> dict[str, Any]:
        return queries.review_queue(
            c.engine,
            route=self.route,
            queue=self.queue,
            source=self.source,
            limit=self.limit,
            cursor=self.cursor,
            count=count,
        )


ReviewQ = Annotated[ReviewQuery, Depends()]


def _query(params: dict[str, Any]) -> str:
    return "?" + urlencode(params, quote_via=quote, safe="") if params else ""


def _scopes(c: ClientsDep, viewer: Viewer) -> list[str]:
    return list(c.settings.api_tokens.get(viewer.token, []))


@router.get("/review")
def review(request: Request, c: ClientsDep, q: ReviewQ) -> Response:
    refused = _gate(c.settings, request, "/review" + _query(q.filters()))
    if refused is not None:
        return refused
    viewer = _viewer(c.settings, request)
    assert viewer is not None  # the gate let it through
    return _page(
        request,
        "review.html",
        "ticket-triage: review",
        page=q.page(c, count=True),
        filters=q.filters(),
        routes=queries.REVIEW_ROUTES,
        limit=q.limit,
        query=_query,
        can_review="feedback" in _scopes(c, viewer),
        csrf=viewer.csrf,
        agent=viewer.agent or DEFAULT_AGENT,
    )


@router.get("/review/items")
def review_items(request: Request, c: ClientsDep, q: ReviewQ) -> Response:
    viewer = _viewer(c.settings, request)
    if viewer is None:
        return _not_signed_in()
    return _page(
        request,
        "review_items.html",
        "",
        page=q.page(c, count=False),
        filters=q.filters(),
        limit=q.limit,
        query=_query,
        can_review="feedback" in _scopes(c, viewer),
    )


class ReviewIn(BaseModel):
    source: str = Field(max_length=64, pattern=ID_PATTERN)
    ticket_id: str = Field(max_length=255, pattern=ID_PATTERN)
    verdict: queries.Verdict


def review_writer(request: Request, c: ClientsDep) -> str:
    """A dependency: the agent a verdict is recorded for, once the request may write one
    (see the module's note on CSRF). Runs before the body is read."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        require("feedback")(c, authorization)  # 401 / 403 / 429 exactly as the API
        return DEFAULT_AGENT
    cookie = request.cookies.get(COOKIE)
    viewer = None if cookie is None else session_viewer(c.settings, cookie)
    if viewer is None or viewer.csrf is None:
        raise ApiError(401, "sign in at /dashboard first", {"WWW-Authenticate": "Bearer"})
    if "feedback" not in _scopes(c, viewer):
        raise ApiError(403, "the token this session signed in with lacks the 'feedback' scope")
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), viewer.csrf.encode()):
        raise ApiError(403, f"missing or wrong {CSRF_HEADER}: send the one in the page")
    return viewer.agent or DEFAULT_AGENT


@router.post("/review/feedback", status_code=201)
def review_feedback(
    verdict: ReviewIn, agent: Annotated[str, Depends(review_writer)], engine: EngineDep
) -> JSONResponse:
    """Stores the verdict like ``POST /v1/decisions/{source}/{ticket_id}/feedback``."""
    result = queries.save_feedback(
        engine, verdict.source, verdict.ticket_id, verdict.verdict, agent, None
    )
    if isinstance(result, tuple):
        raise ApiError(*result)
    return JSONResponse(
        result.model_dump(mode="json"), status_code=201, headers={"Cache-Control": "no-store"}
    )
