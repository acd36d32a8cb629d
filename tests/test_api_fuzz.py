"""Property-based fuzzing of the published OpenAPI surface: no generated input gets a 5xx.

Schemathesis generates requests from the served ``/openapi.json`` (valid and invalid bodies,
paths, queries), and they go over HTTP to a real `triage serve` (uvicorn) on a private Redis
and a SQLite database seeded with decisions. So that the fuzz reaches the code behind the
doors and not only the doors:

- every request carries a bearer token with every scope;
- each webhook body is signed as its vendor signs it (a hook computes the signature over the
  exact bytes sent), with the vendor's event and delivery headers, and half of them are a
  vendor's real payload with one value replaced by generated JSON (the adapters' paths);
- path parameters are half the time the key of a seeded decision (past the 404);
- inputs that broke the service before are mixed in (a 5,000-digit integer, an
  unterminated string of escapes, 120 KB of ``<a``, NUL in ids, dates out of range in UTC,
  a cursor past 64 bits);
- the run fails if an operation only ever answered 401/403, or answered a 5xx.

Hypothesis drives it directly (schemathesis's pytest plugin does not run on pytest 9). CI
size: 25 examples per operation and generation mode; ``TRIAGE_FUZZ=full``: 400.
"""

from __future__ import annotations

import copy
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from sqlalchemy.orm import Session

from tests.conftest import FIXTURES, decision_row
from tests.services import ServeProcess, serve_privately
from tests.test_webhook_adapters import FIXTURE_FOR
from tests.vendors import signed_headers
from tickets import db

FULL = os.environ.get("TRIAGE_FUZZ") == "full"
EXAMPLES = 400 if FULL else 25
SECRET = "fuzz-secret"
TOKEN = "fuzz-token"
VENDORS = ("zendesk", "github", "jira", "freshdesk", "zammad", "helpscout")
SEEDED = [("email", "seed-dup"), ("email", "seed-manual"), ("github", "acme/desk#7")]


def _seed(database_url: str) -> None:
    engine = db.make_engine(database_url)
    now = datetime.now(UTC)
    with Session(engine) as s:
        for (source, ticket_id), route in zip(
            SEEDED, ("duplicate", "manual", "suggest"), strict=True
        ):
            manual = route == "manual"
            s.add(
                decision_row(
                    ticket_id,
                    source=source,
                    route=route,
                    score=None if manual else 0.9,
                    matched_source=None if manual else "email",
                    matched_ticket_id=None if manual else "seed-0",
                    canonical_source="email",
                    canonical_ticket_id="seed-0",
                    queue="billing",
                    received_at=now,
                    decided_at=now,
                )
            )
        s.commit()
    engine.dispose()


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    with serve_privately(
        tmp_path_factory.mktemp("fuzz"),
        queue="fuzz",
        webhook_secrets={v: [SECRET] for v in VENDORS},
        api_tokens={TOKEN: ["ingest", "read", "feedback", "admin"]},
        max_body_bytes=256 * 1024,
    ) as (settings, serve, _):
        _seed(settings.database_url)
        yield serve


# --- the document ------------------------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable reference {ref}"
        node = node[part]
    return node


def test_the_published_document_is_valid_openapi(fuzzed: ServeProcess) -> None:
    document = requests.get(fuzzed.url + "/openapi.json", timeout=10).json()
    validate(document)  # the OpenAPI 3.1 meta-schema
    refs = set(_refs(document))
    assert "#/components/schemas/TicketIn" in refs
    for ref in refs:  # the validator does not follow every reference: resolve each one
        _resolve(document, ref)


# --- vendor payloads, mutated ---------------------------------------------------------------------


def _leaves(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _leaves(value, (*prefix, i))
    else:
        yield prefix


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.sampled_from(["<a" * 50, "\u0000", "<p>x</p>" * 20, "9" * 5000, "", " "]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def mutated_payload(draw: st.DrawFn, vendor: str) -> Any:
    body = copy.deepcopy(json.loads((FIXTURES / "webhooks" / FIXTURE_FOR[vendor]).read_text()))
    paths = list(_leaves(body))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        node = body
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = draw(json_values)
    return body


# Inputs that broke the service before (found by attacking it), mixed into the generated
# ones: raw bodies (sent as they are, signed for webhooks), query values and path keys.
HOSTILE_BODIES = [
    b'{"source": "email", "ticket_id": ' + b"9" * 5000 + b', "body": "x"}',
    b'{"verdict": "confirm", "agent": ' + b"9" * 5000 + b"}",
    b'"' + b'\\"' * 5000,
    b"[" * 5000 + b"]" * 5000,
    b'{"source": "email", "ticket_id": "nu\\u0000l", "body": "x"}',
    b'{"source": "zendesk", "ticket_id": "1", "body": "x"}',
    b'{"freshdesk_webhook": {"ticket_id": 1, "ticket_description": "' + b"<a" * 20_000 + b'"}}',
    b'{"verdict": "veto", "agent": "a\\u0000", "comment": "\\u0000"}',
]
EDGE_QUERY = st.fixed_dictionaries(
    {},
    optional={
        "since": st.sampled_from(["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"]),
        "until": st.sampled_from(["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"]),
        "cursor": st.sampled_from(["MXw5MjIzMzcyMDM2ODU0Nzc1ODA4", "MXwtMQ==", "bmFufDE="]),
        "queue": st.sampled_from(["a\x00b", "\t"]),
        "limit": st.sampled_from(["9" * 5000, "-1"]),
    },
)
EDGE_KEYS = [("email", "nu\x00l"), ("email", "x" * 300), ("em\x00ail", "1")]


# --- the fuzz ------------------------------------------------------------------------------------


def _send(
    base: str,
    case: schemathesis.Case,
    replace: Any,
    key: tuple[str, str] | None,
    query: dict[str, str] | None = None,
) -> requests.Response:
    """The case over HTTP: its body serialized here (so it can be signed), a bearer token
    with every scope, a seeded key in the path if ``key``, a vendor payload if ``replace``."""
    kwargs = case.as_transport_kwargs(base_url=base)
    headers = dict(kwargs["headers"])
    headers["Authorization"] = f"Bearer {TOKEN}"
    url = kwargs["url"]
    if key is not None:
        source, ticket_id = key
        suffix = "/feedback" if case.operation.path.endswith("/feedback") else ""
        url = f"{base}/v1/decisions/{source}/{requests.utils.quote(ticket_id, safe='')}{suffix}"
    data: bytes | None = None
    if isinstance(replace, bytes):
        data = replace
        headers["Content-Type"] = "application/json"
    elif replace is not None:
        data = json.dumps(replace).encode()
        headers["Content-Type"] = "application/json"
    elif "json" in kwargs:
        data = json.dumps(kwargs["json"]).encode()
        headers.setdefault("Content-Type", "application/json")
    elif kwargs.get("data") is not None:
        raw = kwargs["data"]
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
    vendor = case.operation.path.removeprefix("/v1/hooks/")
    if vendor in VENDORS and data is not None:
        content_type = headers.get("Content-Type", "application/json")
        headers |= signed_headers(vendor, data, SECRET)
        headers["Content-Type"] = content_type  # negative cases keep their wrong one
    params = {**(kwargs.get("params") or {}), **(query or {})}
    return requests.request(
        kwargs["method"], url, params=params, data=data, headers=headers, timeout=60
    )


def _fuzz_operation(
    base: str, operation: Any, mode: GenerationMode, seen: dict[str, Counter[int]]
) -> None:
    name = f"{operation.method.upper()} {operation.path}"
    vendor = operation.path.removeprefix("/v1/hooks/")
    body_override = mutated_payload(vendor) if vendor in VENDORS else st.nothing()
    if operation.method.upper() == "POST":
        body_override |= st.sampled_from(HOSTILE_BODIES)
    with_key = "{source}" in operation.path
    with_query = operation.path in ("/v1/decisions", "/v1/stats/routes")

    @given(
        case=operation.as_strategy(generation_mode=mode),
        replace=st.one_of(st.none(), body_override),
        key=st.one_of(st.none(), st.sampled_from(SEEDED + EDGE_KEYS)) if with_key else st.none(),
        query=st.one_of(st.none(), EDGE_QUERY) if with_query else st.none(),
    )
    @hsettings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def fuzz(
        case: schemathesis.Case,
        replace: Any,
        key: tuple[str, str] | None,
        query: dict[str, str] | None,
    ) -> None:
        response = _send(base, case, replace, key, query)
        seen[name][response.status_code] += 1
        if response.status_code == 503 and operation.path in ("/readyz", "/v1/status"):
            # "not ready" is a documented answer (a check slower than 1 s on a busy machine
            # counts as failed), not a server error
            assert response.json()["ready"] is False
            return
        case.validate_response(response, checks=[not_a_server_error])

    try:
        fuzz()
    except Unsatisfiable:
        # Negative mode on an operation with nothing to break (GET /healthz: no parameter).
        if mode is not GenerationMode.NEGATIVE:
            raise


def test_no_server_error_on_any_generated_input(fuzzed: ServeProcess) -> None:
    schema = schemathesis.openapi.from_url(fuzzed.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15  # every route of the service is in the published document
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(fuzzed.url, operation, mode, seen)
    report = {name: dict(sorted(codes.items())) for name, codes in sorted(seen.items())}
    print("FUZZ", json.dumps({"examples_per_mode": EXAMPLES, "answers": report}))
    for name, codes in report.items():
        allowed = {503} if name in ("GET /readyz", "GET /v1/status") else set()
        assert not any(code >= 500 and code not in allowed for code in codes), (name, codes)
        reached = {code for code in codes if code not in (401, 403)}
        assert reached, f"{name} never got past authentication: {codes}"
        if "/hooks/" in name:
            assert codes.get(202, 0) + codes.get(200, 0) > 0, f"{name} never accepted: {codes}"
    log = fuzzed.log()
    assert "Traceback" not in log, log[-3000:]
