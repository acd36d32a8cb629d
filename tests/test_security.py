"""Nobody let in: secrets, limits, rate limits, scopes and SQL, each on real services.

The HTTP checks run the real ASGI app (Starlette's TestClient) or a real `triage serve`
process (uvicorn); Redis, SQLite and PostgreSQL are real; the log check also runs a real
worker against a private Redis that requires a password.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import http.client
import json
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from config.settings import Settings, SettingsError, load_settings
from service.app import create_app
from tests.conftest import (
    FIXTURES,
    ROOT,
    WorkerProcess,
    decision_row,
    n_rows,
    settings_env,
    wait_for,
)
from tests.ollama_fake import FakeOllama
from tests.services import ServeProcess, private_redis
from tests.test_api import SECRET, vendor_request
from tickets import db, migrate
from tickets.db import make_engine

STRONG = "s" + secrets.token_hex(16)


# --- secrets in settings ---------------------------------------------------------------------


def test_repr_and_str_of_the_settings_hide_every_secret() -> None:
    hook, token, pw = secrets.token_hex(16), secrets.token_hex(16), secrets.token_hex(16)
    s = load_settings(
        webhook_secrets={"github": [hook]},
        api_tokens={token: ["read"]},
        database_url=f"postgresql+psycopg://triage:{pw}@db:5432/triage",
        redis_url=f"redis://:{pw}@redis:6379/0",
    )
    for shown in (repr(s), str(s), f"{s!r}"):
        assert hook not in shown and token not in shown and pw not in shown, shown
    assert "'github': '***'" in repr(s)  # which helpdesks have secrets is still visible
    assert "triage:***@db:5432" in repr(s) and "redis://:***@redis" in repr(s)
    assert s.webhook_secrets == {"github": [hook]}  # the values themselves are intact


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("webhook_secrets", {"github": "NOT-A-LIST-" + STRONG}),
        ("api_tokens", {STRONG: "read"}),
        ("database_url", 12345),
    ],
)
def test_a_bad_secret_setting_is_named_but_never_echoed(var: str, raw: Any) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(**{var: raw})
    assert f"TRIAGE_{var.upper()}" in str(exc.value)
    assert STRONG not in str(exc.value) and "12345" not in str(exc.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"webhook_secrets": {"github": ["changeme"]}}, "TRIAGE_WEBHOOK_SECRETS"),
        ({"webhook_secrets": {"zendesk": [STRONG, "Change-Me"]}}, "secret 2 of 'zendesk'"),
        ({"webhook_secrets": {"github": ["<github secret>"]}}, "placeholder"),
        ({"webhook_secrets": {"jira": ["short-secret"]}}, "shorter than 16"),
        ({"api_tokens": {"<dashboard token>": ["read"]}}, "TRIAGE_API_TOKENS"),
        ({"api_tokens": {"secret": ["read"]}}, "well-known"),
        ({"database_url": "postgresql+psycopg://triage:change-me@db/triage"}, "DATABASE_URL"),
        ({"redis_url": "redis://:password@redis:6379/0"}, "TRIAGE_REDIS_URL"),
        ({"webhook_secrets": {"github": [" " * 16]}}, "is blank"),
        ({"api_tokens": {"a" * 40: ["read"]}}, "distinct character(s), fewer than 5"),
        ({"webhook_secrets": {"zendesk": ["ab" * 12]}}, "distinct character(s), fewer than 5"),
        ({"redis_url": "redis://:xyzxyzxyzxyzxyzxyz@redis:6379/0"}, "TRIAGE_REDIS_URL"),
    ],
)
def test_weak_or_example_secrets_are_refused_in_production(
    overrides: dict[str, Any], named: str
) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(env="production", **overrides)
    message = str(exc.value)
    assert named in message and "TRIAGE_ENV=production" in message
    for secret in ("changeme", "Change-Me", "short-secret", "change-me", "'password'", "a" * 16):
        assert secret not in message
    assert load_settings(env="development", **overrides)  # accepted for trials


def test_production_is_the_default_and_takes_strong_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TRIAGE_ENV", raising=False)
    assert load_settings().env == "production"
    s = load_settings(webhook_secrets={"github": [STRONG]}, api_tokens={STRONG + "x": ["read"]})
    assert s.env == "production"


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("changeme", "well-known"),
        (" " * 16, "is blank"),
        ("a" * 16, "distinct character(s), fewer than 5"),
    ],
)
def test_serve_refuses_to_start_on_a_default_secret(secret: str, why: str) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "TRIAGE_WEBHOOK_SECRETS": json.dumps({"github": [secret]}),
        "TRIAGE_API_TOKENS": json.dumps({STRONG: ["read"]}),
    }
    out = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--port", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert "TRIAGE_WEBHOOK_SECRETS" in out.stderr and why in out.stderr
    assert STRONG not in out.stderr + out.stdout
    assert secret not in out.stderr.replace("TRIAGE_WEBHOOK_SECRETS: secret 1", "")


# --- a real `triage serve` and a real worker: bodies without a length, and the logs ------------


class Served:
    def __init__(
        self,
        settings: Settings,
        serve: ServeProcess,
        worker: WorkerProcess,
        values: dict[str, str],
    ) -> None:
        self.settings, self.serve, self.worker = settings, serve, worker
        self.values = values


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("served")
    values = {
        "redis password": "pw" + secrets.token_hex(16),
        "github secret": "gh" + secrets.token_hex(16),
        "freshdesk token": "fd" + secrets.token_hex(16),
        "read token": "rd" + secrets.token_hex(16),
        "ingest token": "in" + secrets.token_hex(16),
        "ollama password": "ol" + secrets.token_hex(16),
    }
    with private_redis(tmp, password=values["redis password"]) as url, FakeOllama() as ollama:
        database = f"sqlite:///{tmp / 'triage.db'}"
        engine = make_engine(database)
        migrate.upgrade(engine)
        engine.dispose()
        settings = load_settings(
            env="production",  # strong secrets: accepted where it matters
            redis_url=url,
            database_url=database,
            chroma_path=tmp / "chroma",
            queue="served",
            log_level="DEBUG",  # the chattiest level must not leak either
            batch_wait_ms=100,
            max_body_bytes=16_384,
            webhook_secrets={
                "github": [values["github secret"]],
                "freshdesk": [values["freshdesk token"]],
            },
            api_tokens={values["read token"]: ["read"], values["ingest token"]: ["ingest"]},
        )
        worker = WorkerProcess(settings, tmp / "worker.log")
        # serve checks an Ollama whose URL carries a password: shown masked, or not at all
        with_password = ollama.url.replace("://", f"://triage:{values['ollama password']}@")
        serve = ServeProcess(
            settings.model_copy(update={"embedder": "ollama", "ollama_url": with_password}),
            tmp / "serve.log",
        )
        try:
            worker.wait_ready()
            yield Served(settings, serve, worker, values)
        finally:
            serve.stop()
            worker.stop()


def _chunked_post(url: str, path: str, chunks: list[bytes], headers: dict[str, str]) -> int:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=iter(chunks), headers=headers, encode_chunked=True)
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_chunked_body_without_content_length_is_cut_at_the_limit(served: Served) -> None:
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {served.values['ingest token']}",
    }
    ticket = json.dumps({"source": "email", "ticket_id": "chunked-1", "body": "Printer jam"})
    small = [ticket[:20].encode(), ticket[20:].encode()]
    assert _chunked_post(served.serve.url, "/v1/tickets", small, headers) == 202
    big = [b'{"source": "email", "ticket_id": "c2", "body": "'] + [b"x" * 1024] * 20 + [b'"}']
    assert _chunked_post(served.serve.url, "/v1/tickets", big, headers) == 413


def test_secrets_never_reach_the_logs(served: Served) -> None:
    url, v = served.serve.url, served.values
    body, headers = vendor_request("github")
    headers["X-Hub-Signature-256"] = (
        "sha256=" + hmac.new(v["github secret"].encode(), body, hashlib.sha256).hexdigest()
    )
    assert requests.post(f"{url}/v1/hooks/github", data=body, headers=headers).status_code == 202
    headers["X-Hub-Signature-256"] = "sha256=" + "0" * 64
    assert requests.post(f"{url}/v1/hooks/github", data=body, headers=headers).status_code == 401
    body, headers = vendor_request("freshdesk")
    headers["X-Webhook-Token"] = v["freshdesk token"]
    assert requests.post(f"{url}/v1/hooks/freshdesk", data=body, headers=headers).status_code == 202
    headers["X-Webhook-Token"] = v["freshdesk token"][:-1]  # almost right
    assert requests.post(f"{url}/v1/hooks/freshdesk", data=body, headers=headers).status_code == 401
    read = {"Authorization": f"Bearer {v['read token']}"}
    wait_for(
        lambda: len(requests.get(f"{url}/v1/decisions", headers=read).json()["decisions"]) >= 2,
        90,
        "the two webhooks' decisions",
    )
    wrong = {"Authorization": f"Bearer {v['read token']}x"}
    assert requests.get(f"{url}/v1/decisions", headers=wrong).status_code == 401
    signed_in = requests.get(
        f"{url}/dashboard", params={"token": v["read token"]}, allow_redirects=False
    )
    assert signed_in.status_code in (302, 303, 307)
    assert requests.get(f"{url}/readyz").status_code == 200

    doctor = subprocess.run(
        [sys.executable, "-m", "cli", "doctor"],
        cwd=ROOT,
        env=settings_env(served.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "redis://:***@127.0.0.1" in doctor.stdout, doctor.stdout + doctor.stderr

    time.sleep(1)  # let the last lines be written
    logs = {
        "serve": served.serve.log(),
        "worker": served.worker.log(),
        "doctor": doctor.stdout + doctor.stderr,
    }
    assert "POST /v1/hooks/github" in logs["serve"] and "/dashboard?token=" in logs["serve"]
    assert " ready." in logs["worker"] and "DEBUG" in logs["worker"] + logs["serve"]
    for where, text in logs.items():
        for what, value in v.items():
            assert value not in text, f"the {what} is in the {where} log"


def _every_route(api: Any) -> list[tuple[str, str]]:
    """(method, path) of every route and mount of the app, path parameters filled in."""
    from starlette.routing import Mount, Route

    # A mount's file that exists: the files served are no secret either.
    files = {"/docs/assets": "swagger-ui.css", "/dashboard/static": "dashboard.js"}
    found = []
    for context in iter_route_contexts(api.routes):
        route, path = context.original_route, str(context.path)
        if isinstance(route, Mount):
            found.append(("GET", f"{path}/{files[path]}"))
        elif isinstance(route, Route):
            path = path.replace("{source}", "github").replace(
                "{ticket_id:path}", "Codertocat/Hello-World%231"
            )
            found += [(m, path) for m in sorted(context.methods or ()) if m != "HEAD"]
    return found


def test_secrets_never_reach_a_response_body(served: Served) -> None:
    url, v = served.serve.url, served.values
    wait_for(lambda: requests.get(f"{url}/readyz").status_code == 200, 30, "serve ready")
    routes = _every_route(create_app(served.settings))
    assert len(routes) >= 20, routes
    answers: list[requests.Response] = []
    auths = [{}, {"Authorization": f"Bearer {v['read token']}"}]
    auths.append({"Authorization": f"Bearer {v['ingest token']}"})
    auths.append({"Authorization": f"Bearer {v['read token']}x"})  # almost right
    for method, path in routes:
        for auth in auths:
            for body in (b"{}", b'{"source": "email", "ticket_id": "s-1", "body": "x"}', b"[}"):
                headers = {"Content-Type": "application/json", **auth}
                answers.append(
                    requests.request(method, url + path, data=body, headers=headers, timeout=30)
                )
    signed_in = requests.Session()
    signed_in.get(f"{url}/dashboard", params={"token": v["read token"]})
    answers += [signed_in.get(f"{url}{p}") for p in ("/dashboard", "/dashboard/data")]
    assert {a.status_code for a in answers} >= {200, 400, 401, 403, 404, 422}
    for answer in answers:
        for what, value in v.items():
            assert value not in answer.text, (
                f"the {what} is in {answer.request.method} {answer.url}"
            )
            for name, header in answer.headers.items():
                assert value not in header, f"the {what} is in header {name} of {answer.url}"
    status = requests.get(f"{url}/v1/status", headers=auths[1]).json()
    assert status["checks"]["embedder"]["url"].startswith("http://triage:***@127.0.0.1")
    assert status["checks"]["redis"]["url"].startswith("redis://:***@127.0.0.1")


# --- JSON depth ----------------------------------------------------------------------------


@pytest.fixture
def app_settings(worker_settings: Callable[..., Settings]) -> Settings:
    return worker_settings(
        webhook_secrets={"github": [SECRET], "freshdesk": [SECRET], "jira": [SECRET]},
        api_tokens={"feeder": ["ingest"], "reader": ["read"], "agent": ["read", "feedback"]},
    )


def _nested(depth: int) -> bytes:
    return b'{"source": "email", "ticket_id": "deep", "body": "x", "tags": ' + (
        b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    )


def test_deeply_nested_json_is_refused_before_parsing(app_settings: Settings) -> None:
    feed = {"Authorization": "Bearer feeder", "Content-Type": "application/json"}
    with TestClient(create_app(app_settings)) as client:
        # 50,000 levels: json.loads alone would fail with RecursionError (a 500 before).
        for depth in (33, 50_000):
            r = client.post("/v1/tickets", content=_nested(depth), headers=feed)
            assert r.status_code == 400, r.text
            assert r.json()["detail"] == (
                f"body is nested {depth} levels deep; at most 32 (TRIAGE_MAX_JSON_DEPTH)"
            )
        at_limit = client.post("/v1/tickets", content=_nested(32), headers=feed)
        assert at_limit.status_code == 422  # parsed, then refused for what it says
        brackets_in_strings = json.dumps(
            {"source": "email", "ticket_id": uuid.uuid4().hex, "body": "[" * 1000 + "{" * 1000}
        )
        ok = client.post("/v1/tickets", content=brackets_in_strings, headers=feed)
        assert ok.status_code == 202, ok.text

        raw = b'{"action": "opened", "issue": ' + b"[" * 40 + b"]" * 40 + b"}"
        sig = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
        hook = {"Content-Type": "application/json", "X-Hub-Signature-256": sig}
        r = client.post("/v1/hooks/github", content=raw, headers=hook)
        assert r.status_code == 400 and "41 levels deep" in r.json()["detail"]
        metrics = client.get("/metrics").text
        assert 'triage_tickets_rejected_total{reason="too_deep",source="github"} 1.0' in metrics


# --- rate limit per source, shared through Redis --------------------------------------------


def _github_request() -> tuple[bytes, dict[str, str]]:
    """The GitHub sample as a new issue (the shared Redis remembers deliveries for days)."""
    body, headers = vendor_request("github")
    payload = json.loads(body)
    payload["issue"]["number"] = int(uuid.uuid4().int % 10**9)
    raw = json.dumps(payload).encode()
    headers["X-GitHub-Delivery"] = str(uuid.uuid4())
    headers["X-Hub-Signature-256"] = (
        "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    )
    return raw, headers


def test_rate_limit_per_source_holds_across_serve_processes(
    app_settings: Settings,
) -> None:
    limited = app_settings.model_copy(update={"rate_limit_per_s": 0.5, "rate_limit_burst": 3})
    body, headers = _github_request()
    fd_body, fd_headers = vendor_request("freshdesk")
    fd_payload = json.loads(fd_body)
    fd_payload["freshdesk_webhook"]["ticket_id"] = uuid.uuid4().hex[:8]
    fd_body = json.dumps(fd_payload).encode()
    read = {"Authorization": "Bearer reader"}
    # Two apps, each with its own Redis connection: two `triage serve` processes.
    with TestClient(create_app(limited)) as a, TestClient(create_app(limited)) as b:
        forged = {**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64}
        for _ in range(5):  # forged requests do not spend the helpdesk's budget
            assert a.post("/v1/hooks/github", content=body, headers=forged).status_code == 401
        answers = [
            c.post("/v1/hooks/github", content=body, headers=headers).status_code for c in (a, b, a)
        ]
        assert answers == [202, 200, 200]  # redeliveries, but they count
        refused = b.post("/v1/hooks/github", content=body, headers=headers)
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["Retry-After"]) <= 2
        assert "rate limit of the github webhook exceeded" in refused.json()["detail"]
        # another helpdesk, and each token, have budgets of their own
        assert a.post("/v1/hooks/freshdesk", content=fd_body, headers=fd_headers).status_code == 202
        for _ in range(3):
            assert b.get("/v1/decisions", headers=read).status_code == 200
        assert a.get("/v1/decisions", headers=read).status_code == 429
        assert a.get("/v1/decisions", headers={"Authorization": "Bearer agent"}).status_code == 200
        time.sleep(int(refused.headers["Retry-After"]) + 0.1)
        assert a.post("/v1/hooks/github", content=body, headers=headers).status_code == 200
        metrics = b.get("/metrics").text
        assert 'triage_tickets_rejected_total{reason="rate_limited",source="github"} 1.0' in metrics
    r = redis.Redis.from_url(limited.redis_url)
    keys = [k.decode() for k in r.scan_iter(f"triage:rate:{limited.queue}:*")]
    assert keys and not any("reader" in k or "agent" in k for k in keys)  # digests, not tokens
    r.delete(*keys)


def test_rate_limit_holds_across_two_real_serve_processes(
    make_settings: Callable[..., Settings], sqlite_url: str, tmp_path: Path
) -> None:
    with private_redis(tmp_path) as url:
        settings = make_settings(
            redis_url=url,
            database_url=sqlite_url,
            queue="rl",
            api_tokens={"reader": ["read"]},
            rate_limit_per_s=0.2,
            rate_limit_burst=4,
        )
        one = ServeProcess(settings, tmp_path / "serve1.log")
        two = ServeProcess(settings, tmp_path / "serve2.log")
        try:
            read = {"Authorization": "Bearer reader"}
            answers = [
                requests.get(f"{s.url}/v1/decisions", headers=read, timeout=10)
                for s in (one, two, one, two, one)
            ]
        finally:
            one.stop()
            two.stop()
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 5


# --- read-API tokens: every route x every scope ------------------------------------------------

# Routes that take a bearer token, and the scope each needs. Any other route must be listed
# in OPEN with the reason it needs no token, so a new route cannot slip in unprotected.
SCOPED = {
    ("POST", "/v1/tickets"): "ingest",
    ("GET", "/v1/decisions/{source}/{ticket_id:path}"): "read",
    ("GET", "/v1/decisions"): "read",
    ("GET", "/v1/stats/routes"): "read",
    ("GET", "/v1/status"): "read",
    ("POST", "/v1/decisions/{source}/{ticket_id:path}/feedback"): "feedback",
    # also a cookie session with the page's CSRF token (tests/test_review.py)
    ("POST", "/dashboard/review/feedback"): "feedback",
}
OPEN = {
    "/healthz": "liveness probe",
    "/readyz": "readiness probe",
    "/metrics": "Prometheus scrape (counts only)",
    "/docs": "the API's documentation page (Swagger UI; no data)",
    **{f"/v1/hooks/{v}": "vendor signature" for v in ("zendesk", "github", "jira")},
    **{f"/v1/hooks/{v}": "vendor signature" for v in ("freshdesk", "zammad", "helpscout")},
    "/dashboard": "sign-in page; read token or cookie (tests/test_dashboard.py)",
    "/dashboard/login": "takes the read token",
    "/dashboard/logout": "clears the cookie",
    "/dashboard/data": "read token or cookie (tests/test_dashboard.py)",
    "/dashboard/clusters/{source}/{ticket_id:path}": "read token or cookie",
    "/dashboard/review": "read token or cookie (tests/test_review.py)",
    "/dashboard/review/items": "read token or cookie (tests/test_review.py)",
}
TOKENS = {
    "reader": ["read"],
    "agent": ["read", "feedback"],
    "feeder": ["ingest"],
    "all": ["ingest", "read", "feedback"],
}


def _call(client: TestClient, method: str, path: str, token: str | None) -> int:
    concrete = path.replace("{source}", "email").replace("{ticket_id:path}", "t-1")
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {
        "/v1/tickets": {"source": "email", "ticket_id": "scope-1", "body": "x"},
        "/v1/decisions/email/t-1/feedback": {"verdict": "confirm", "agent": "ana"},
    }.get(concrete)
    return client.request(method, concrete, json=body, headers=headers).status_code


def test_every_route_checks_its_scope(worker_settings: Callable[..., Settings]) -> None:
    settings = worker_settings(api_tokens=TOKENS, rate_limit_per_s=0)
    api = create_app(settings)
    routes = {
        (m, str(c.path))
        for c in iter_route_contexts(api.routes)
        if isinstance(c.original_route, APIRoute)
        for m in c.methods or ()
    }
    unlisted = {(m, p) for m, p in routes if (m, p) not in SCOPED and p not in OPEN}
    assert not unlisted, f"routes with no scope decision: {sorted(unlisted)}"
    assert set(SCOPED) <= routes
    with TestClient(api) as client:
        for (method, path), scope in SCOPED.items():
            assert _call(client, method, path, None) == 401, (method, path)
            assert _call(client, method, path, "forged") == 401, (method, path)
            assert _call(client, method, path, "") == 401, (method, path)
            for token, scopes in TOKENS.items():
                status = _call(client, method, path, token)
                if scope in scopes:
                    assert status not in (401, 403), (method, path, token, status)
                else:
                    assert status == 403, (method, path, token, status)


# --- SQL only through bound parameters ---------------------------------------------------------

PACKAGES = ("config", "tickets", "producer", "worker", "service", "cli", "quality")
SQL_CALLS = {"text", "execute", "exec_driver_sql", "executescript", "literal_column"}
# DDL the code builds itself from constants (no value from a request, a file or a setting).
ALLOWED = {
    "tickets/migrations/versions/0004_bi_views.py": "CREATE/DROP VIEW from the module's own "
    "constant view names and bodies",
}


def _string_built(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("format", "join", "replace")
    )


def sql_built_from_strings(source: str) -> list[int]:
    """Lines where SQL text is assembled by formatting rather than bound parameters."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = (
            node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        )
        if name in SQL_CALLS and _string_built(node.args[0]):
            lines.append(node.lineno)
    return lines


def test_the_scan_finds_formatted_sql() -> None:
    bad = 'conn.execute(text(f"select * from t where q = \'{q}\'"))\nconn.execute("x" + q)\n'
    good = 'conn.execute(text("select * from t where q = :q"), {"q": q})\n'
    assert sorted(sql_built_from_strings(bad)) == [1, 2]
    assert sql_built_from_strings(good) == []


def test_no_sql_is_built_by_string_formatting() -> None:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line in sql_built_from_strings(path.read_text(encoding="utf-8")):
                if rel not in ALLOWED:
                    found.append(f"{rel}:{line}")
    assert not found, f"SQL built from strings (use bound parameters): {found}"


INJECTIONS = [
    "x' OR '1'='1",
    "x'; DROP TABLE triage_decisions; --",
    'x" OR "1"="1',
    "%' OR 1=1 --",
    "x') UNION SELECT * FROM triage_tickets --",
    "\\'; SELECT pg_sleep(5); --",
]


def test_sql_injection_strings_are_only_ever_values(
    make_settings: Callable[..., Settings], database_url: str, queue_name: str
) -> None:
    engine = make_engine(database_url)
    now = datetime.now(UTC)
    with Session(engine) as s:
        for i, queue in enumerate(("billing", "tech")):
            s.add(decision_row(f"sql-{i}", source="email", queue=queue, decided_at=now))
        s.commit()
    engine.dispose()
    settings = make_settings(
        database_url=database_url, queue=queue_name, api_tokens=TOKENS, rate_limit_per_s=0
    )
    read = {"Authorization": "Bearer all"}
    with TestClient(create_app(settings)) as client:
        assert len(client.get("/v1/decisions", headers=read).json()["decisions"]) == 2
        for evil in INJECTIONS:
            page = client.get("/v1/decisions", params={"queue": evil}, headers=read)
            assert page.status_code == 200 and page.json()["decisions"] == [], evil
            stats = client.get("/v1/stats/routes", params={"queue": evil}, headers=read)
            assert stats.status_code == 200 and stats.json() == [], evil
            one = client.get(f"/v1/decisions/email/{evil}", headers=read)
            assert one.status_code == 404, evil
            one = client.get(f"/v1/decisions/{evil}/sql-0", headers=read)
            assert one.status_code in (404, 422), evil
            fb = client.post(
                f"/v1/decisions/email/{evil}/feedback",
                json={"verdict": "veto", "agent": evil},
                headers=read,
            )
            assert fb.status_code == 404, evil
            for param in ("cursor", "since", "route"):
                bad = client.get("/v1/decisions", params={param: evil}, headers=read)
                assert bad.status_code == 422, (param, evil)
        # the table is intact and the filter still works on a real value
        assert len(client.get("/v1/decisions", headers=read).json()["decisions"]) == 2
        tech = client.get("/v1/decisions", params={"queue": "tech"}, headers=read).json()
        assert [d["ticket_id"] for d in tech["decisions"]] == ["sql-1"]
    assert n_rows(database_url, db.DecisionRow) == 2
    assert n_rows(database_url, db.FeedbackRow) == 0


def test_fixture_payloads_stay_far_below_the_depth_limit() -> None:
    # The default TRIAGE_MAX_JSON_DEPTH (32) must leave room for every vendor's real payload.
    from producer.guards import json_depth

    depths = {p.name: json_depth(p.read_bytes()) for p in (FIXTURES / "webhooks").glob("*.json")}
    assert depths and max(depths.values()) <= 8, depths


# --- the dependency audit (.ci/audit.py) against a local stand-in for PyPI's JSON API --------

FAKE_PYPI = {
    "good": {"info": {"version": "1.0"}, "releases": {"1.0": [{}]}, "vulnerabilities": []},
    "bad": {
        "info": {"version": "2.0"},
        "releases": {"2.0": [{}]},
        "vulnerabilities": [{"id": "PYSEC-2099-1", "fixed_in": ["2.1"]}],
    },
    "old": {"info": {"version": "3.0"}, "releases": {"2.0": [{}], "3.0": [{}]}},
    "pulled": {
        "info": {"version": "1.1"},
        "releases": {"1.0": [{"yanked": True, "yanked_reason": "CVE-2099-2"}], "1.1": [{}]},
    },
}


@pytest.fixture
def fake_pypi() -> Iterator[str]:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.strip("/").split("/")[1]
            body = json.dumps(FAKE_PYPI[name]).encode() if name in FAKE_PYPI else b"{}"
            self.send_response(200 if name in FAKE_PYPI else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/pypi"
    server.shutdown()
    server.server_close()


def _audit(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / ".ci" / "audit.py"), "--pypi-url", url, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_audit_fails_on_a_known_vulnerability_or_a_yanked_release(
    fake_pypi: str, tmp_path: Path
) -> None:
    pins = ["--package", "good==1.0", "--package", "bad==2.0", "--package", "old==2.0"]
    out = _audit(fake_pypi, *pins, "--package", "pulled==1.0")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL      bad 2.0: PYSEC-2099-1 (fixed in 2.1)" in out.stdout
    assert "FAIL      pulled 1.0: release yanked (CVE-2099-2)" in out.stdout
    assert "unaudited old 2.0: not the latest release (3.0)" in out.stdout
    assert "2 problem(s)" in out.stdout

    ignore = tmp_path / "ignore.txt"
    ignore.write_text("PYSEC-2099-1  # no fix we can take yet; look again 2027-01\n")
    accepted = _audit(fake_pypi, *pins, "--ignore-file", str(ignore))
    assert accepted.returncode == 0, accepted.stdout
    assert "ignored   bad 2.0: PYSEC-2099-1" in accepted.stdout
    strict = _audit(fake_pypi, *pins, "--ignore-file", str(ignore), "--strict")
    assert strict.returncode == 1  # `old` could not be audited


def test_the_example_env_file_cannot_go_live() -> None:
    # Copying .env.example unchanged must stop the stack at start, each secret named.
    values = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    )
    with pytest.raises(SettingsError) as exc:
        load_settings(
            env="production",
            database_url=f"postgresql+psycopg://triage:{values['POSTGRES_PASSWORD']}@pg/triage",
            webhook_secrets=json.loads(values["TRIAGE_WEBHOOK_SECRETS"]),
            api_tokens=json.loads(values["TRIAGE_API_TOKENS"]),
        )
    for named in ("'github'", "'zendesk'", "TRIAGE_API_TOKENS: token 2", "TRIAGE_DATABASE_URL"):
        assert named in str(exc.value)
    for ignore in (".gitignore", ".dockerignore"):
        lines = (ROOT / ignore).read_text(encoding="utf-8").splitlines()
        assert ".env" in lines, f"{ignore} must keep .env (secrets) out"
