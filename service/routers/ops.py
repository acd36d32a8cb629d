"""Operations: liveness, readiness, the detailed status, Prometheus metrics and the API's
documentation page (Swagger UI from the packaged files: no CDN)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field

from service.deps import ClientsDep, ReadScope

router = APIRouter()


class ReadyOut(BaseModel):
    ready: bool
    reason: str = Field(examples=["ok", "redis unreachable"])


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers. No I/O at all, and on the event loop itself, so it
    answers while Redis or the database hang and every request thread is taken."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], response_model=ReadyOut, responses={503: {}})
async def readyz(c: ClientsDep) -> JSONResponse:
    """Readiness for load balancers: Redis, the database (and its schema) and the
    embedder configuration. Only ready or not and a short reason; the detail is
    `/v1/status` (read token). Checked at most every 2 s, each check within 1 s."""
    ready, reason = await c.readiness.open_answer()
    return JSONResponse({"ready": ready, "reason": reason}, status_code=200 if ready else 503)


@router.get("/v1/status", tags=["ops"], responses={503: {}})
async def status(_: ReadScope, c: ClientsDep) -> JSONResponse:
    """Every readiness check with its detail (URLs masked): Redis, the database, the
    embedder, the queue, and the workers consuming it (a missing worker does not make
    the service unready: tickets wait in the queue)."""
    answer = await c.readiness.status()
    return JSONResponse(answer, status_code=200 if answer["ready"] else 503)


@router.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
def prometheus(c: ClientsDep) -> Response:
    """Prometheus metrics."""
    body, ctype = c.metrics.render()
    return Response(body, media_type=ctype)


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title="ticket-triage API",
        swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
        swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
        swagger_favicon_url=f"{root}/docs/assets/favicon-32x32.png",
    )
