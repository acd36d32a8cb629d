"""Slow clients against `triage serve`, next to plain uvicorn on the same app, in one run.

    python bench/slow_clients.py [--connections 1000] [--wait 15] [--redis-url URL]

Each server gets ``--connections`` connections that send a request line and one header and
then nothing (a "slowloris"), plus one that sends headers and one byte of a 1,000-byte
body. While they are open, ``/healthz`` is asked five times (latency); ``--wait`` seconds
later, the script counts the connections the server still holds (no 408 and no close).
Plain uvicorn (``uvicorn.run(app)``, its defaults) has no deadline on headers; `triage
serve` has ``TRIAGE_HEADER_TIMEOUT_S`` (10 s) and ``TRIAGE_BODY_TIMEOUT_S`` (30 s; set to
10 s here so both fit in one wait).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PLAIN = "import sys, uvicorn; from config.settings import load_settings; " + (
    "from service.app import create_app; "
    "uvicorn.run(create_app(load_settings()), port=int(sys.argv[1]), log_level='warning')"
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(kind: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
    if kind == "uvicorn":
        argv = [sys.executable, "-c", PLAIN, str(port)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{kind} did not start")


def _still_open(conn: socket.socket) -> bool:
    conn.setblocking(False)
    try:
        data = conn.recv(4096)
    except BlockingIOError:
        return True  # nothing sent back, not closed
    except OSError:
        return False
    return not (data == b"" or data.startswith(b"HTTP/1.1 "))  # closed, or answered


def measure(kind: str, connections: int, wait: float, env: dict[str, str]) -> str:
    port = _port()
    proc = _start(kind, port, env)
    try:
        # the body-slow one first: past TRIAGE_MAX_CONNECTIONS it would get 503 at once
        body = socket.create_connection(("127.0.0.1", port))
        body.sendall(
            b"POST /v1/tickets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer bench\r\nContent-Length: 1000\r\n\r\n{"
        )
        held = []
        for _ in range(connections):
            conn = socket.create_connection(("127.0.0.1", port))
            conn.sendall(b"GET /v1/decisions HTTP/1.1\r\nHost: x\r\n")
            held.append(conn)
        started = time.monotonic()
        latencies = []
        for _ in range(5):
            t = time.monotonic()
            status = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=60).status_code
            latencies.append(f"{(time.monotonic() - t) * 1000:.1f} ms ({status})")
        time.sleep(max(0.0, wait - (time.monotonic() - started)))
        open_heads = sum(_still_open(c) for c in held)
        open_body = _still_open(body)
        for c in [*held, body]:
            c.close()
        return (
            f"{kind:<12} /healthz with {connections} slow connections open: "
            f"{', '.join(latencies)}; after {wait:g} s: {open_heads} of {connections} "
            f"header-slow connections still open, body-slow connection "
            f"{'still open' if open_body else 'answered or closed'}"
        )
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--wait", type=float, default=15.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
        env |= {
            "TRIAGE_ENV": "development",
            "TRIAGE_REDIS_URL": args.redis_url,
            "TRIAGE_QUEUE": "bench-slow-clients",
            "TRIAGE_DATABASE_URL": f"sqlite:///{tmp}/triage.db",
            "TRIAGE_API_TOKENS": '{"bench": ["ingest"]}',
            "TRIAGE_BODY_TIMEOUT_S": "10",
        }
        print(
            f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, uvicorn {metadata.version('uvicorn')}, httptools "
            f"{metadata.version('httptools')}"
        )
        for kind in ("uvicorn", "triage serve"):
            print(measure(kind, args.connections, args.wait, env), flush=True)


if __name__ == "__main__":
    main()
