"""How `triage serve` runs uvicorn: with a deadline on request headers, and bounded.

uvicorn closes a connection idle *between* requests (``timeout_keep_alive``), but has no
timeout while it waits for a request's headers: a client that connects and sends a few
bytes, or nothing, holds its connection forever (measured: 1,000 such connections were all
still open after 30 s). Here uvicorn's httptools protocol gets a deadline: a request's headers must be complete within ``TRIAGE_HEADER_TIMEOUT_S`` of the
connection opening (first request) or of the request's first byte (the next ones on a
kept-alive connection); a late one is answered 408 and closed. Bodies have their own
deadline in the app (``TRIAGE_BODY_TIMEOUT_S``, service/deps.py). uvicorn stays: the rest
of its behaviour is what the tests and benchmarks measured; the deadline is forty lines.

``TRIAGE_MAX_CONNECTIONS`` goes to uvicorn's ``limit_concurrency``: past that many open
connections (or running requests) new requests get 503 at once, well before the process
runs out of file descriptors; ``/healthz`` and ``/readyz`` are exempt, so slow clients at
the limit cannot get the process restarted by its liveness probe. Limits per client
address (many slow connections from one host) belong to a reverse proxy in front; docs/security.md
says which settings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI

from config.settings import Settings

logger = logging.getLogger(__name__)

# Exempt from TRIAGE_MAX_CONNECTIONS: /readyz answers from a cache or within ~1 s.
PROBES = frozenset({b"/healthz", b"/readyz"})
_LATE = b"request headers not sent in time\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_LATE), _LATE)
)


def header_deadline_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools: a dependency of chromadb's uvicorn[standard] as of
    ours) with a deadline on request headers, and health probes exempt from the connection
    limit (see the module)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    base: Any = HttpToolsProtocol

    class HeaderDeadline(base):  # type: ignore[misc]
        _header_timer: asyncio.TimerHandle | None = None

        def _between_requests(self) -> bool:
            # uvicorn makes a new request cycle once a request's headers are complete.
            return self.cycle is None or bool(self.cycle.response_complete)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self._between_requests() and not self.transport.is_closing():
                client = "{}:{}".format(*self.client) if self.client else "a client"
                logger.info(
                    "%s sent no complete request headers in %g s: closed", client, timeout_s
                )
                self.transport.write(_REQUEST_TIMEOUT)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._between_requests():
                self._arm()  # the first bytes of a request: its headers are now due
            super().data_received(data)
            if not self._between_requests():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            # The probes answer without I/O: a liveness probe must not fail (and get the
            # process restarted) because slow clients hold the connections.
            if bytes(self.url).split(b"?", 1)[0] not in PROBES:
                super().on_headers_complete()
                return
            limit = getattr(self, "limit_concurrency", None)
            self.limit_concurrency = None
            try:
                super().on_headers_complete()
            finally:
                self.limit_concurrency = limit

    return HeaderDeadline


def run(app: FastAPI, settings: Settings, *, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        http=header_deadline_protocol(settings.header_timeout_s),
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
    )
