"""``POST /v1/hooks/{vendor}``: one route per helpdesk, each verified by its vendor's
signature scheme before anything else is done with the body (producer/webhooks/)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from producer.webhooks import (
    VENDORS,
    Delivery,
    IgnoredEvent,
    MissingHeader,
    PayloadError,
    SignatureError,
    adapt,
    verify_signature,
)
from service.deps import ApiError, Ingest, IngestDep, rate_limit
from service.routers.tickets import IngestOut

router = APIRouter(tags=["webhooks"])


def vendor_delivery(ingest: Ingest, vendor: str, raw: bytes, headers: Any) -> Delivery:
    return adapt(vendor, ingest.parse_json(raw, vendor), headers, received_at=datetime.now(UTC))


def _payload_error(exc: PayloadError) -> ApiError:
    if exc.field.lower().startswith("x-"):  # a required vendor header
        loc = ["header", exc.field]
    else:
        loc = ["body", *exc.field.split(".")] if exc.field and exc.field != "body" else ["body"]
    return ApiError(422, [{"loc": loc, "msg": str(exc), "type": "value_error"}])


def vendor_endpoint(vendor: str) -> Callable[..., Awaitable[JSONResponse]]:
    async def receive(request: Request, ingest: IngestDep) -> JSONResponse:
        settings, metrics = ingest.settings, ingest.metrics
        raw = await ingest.raw_json_body(request, vendor)
        try:
            verify_signature(
                vendor,
                raw,
                request.headers,
                settings.webhook_secrets.get(vendor, []),
                now=datetime.now(UTC),
                tolerance_s=settings.zendesk_tolerance_s,
            )
        except SignatureError as exc:
            metrics.rejected(vendor, "signature")
            raise ApiError(401, str(exc)) from None
        # After the signature: forged requests cannot spend a helpdesk's budget. In a
        # thread: a Redis call must not hold the event loop.
        await run_in_threadpool(rate_limit, ingest.c, f"hook:{vendor}", f"the {vendor} webhook")
        try:
            delivery = await ingest.off_loop(vendor_delivery, ingest, vendor, raw, request.headers)
        except IgnoredEvent as exc:
            return JSONResponse({"ignored": str(exc)}, status_code=200)
        except MissingHeader as exc:
            metrics.rejected(vendor, "invalid")
            raise ApiError(400, f"{exc.field}: {exc.problem}") from None
        except PayloadError as exc:
            metrics.rejected(vendor, "invalid")
            raise _payload_error(exc) from None
        if delivery.ticket is None:
            assert delivery.update is not None
            return await ingest.enqueue_update(delivery.update, vendor)
        answer = await ingest.enqueue([delivery.ticket], vendor, delivery.delivery_id)
        if delivery.update is not None:  # Zammad: every delivery is also an update
            await ingest.enqueue_update(delivery.update, vendor)
        return answer

    receive.__name__ = f"webhook_{vendor}"
    receive.__doc__ = (
        f"{vendor.title()} webhook: verified against TRIAGE_WEBHOOK_SECRETS[{vendor!r}]."
    )
    return receive


for _vendor in VENDORS:
    router.add_api_route(
        f"/v1/hooks/{_vendor}",
        vendor_endpoint(_vendor),
        methods=["POST"],
        status_code=202,
        response_model=IngestOut,
        responses={200: {}, 400: {}, 401: {}, 413: {}, 415: {}, 422: {}, 429: {}, 503: {}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        },
    )
