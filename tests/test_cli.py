"""The `triage` command as a user runs it: demo on embedded defaults, then the read commands."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import tomllib
from pathlib import Path
from typing import NamedTuple

import click
import pytest
import redis

from cli.main import COMMANDS, cli
from tests.conftest import REDIS_URL
from tests.services import free_port
from tests.test_importer import CP1252_CSV
from tests.test_readme import demo_counts
from tickets import migrate

ROOT = Path(__file__).resolve().parent.parent
NAMES = (
    *("worker", "serve", "ingest", "search", "decisions", "doctor", "demo", "db"),
    *("redrive", "reindex", "evaluate", "calibrate"),
)
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def triage(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Demo(NamedTuple):
    cwd: Path
    out: subprocess.CompletedProcess[str]
    env: dict[str, str]
    # What a consumer of the default queue `triage` received while the demo ran.
    taken_from_default_queue: list[str]


def _consume_default_queue(
    demo: subprocess.Popen[str], stderr: Path, taken: list[str], stop: threading.Event
) -> None:
    """Act as a production worker would on the demo's Redis: take from `triage`."""
    port = None
    while port is None and not stop.wait(0.05):
        m = re.search(r"started a private redis-server on port (\d+)", stderr.read_text())
        port = m and int(m.group(1))
    if port is None:
        return
    client = redis.Redis(port=port, socket_timeout=10)
    while not stop.is_set():
        try:
            item = client.brpop(["triage"], timeout=1)
        except redis.RedisError:
            return  # the demo has stopped its server
        if item:
            taken.append(str(item[1])[:200])
            # Its ticket is gone: the demo could only time out. SIGINT lets it stop its
            # worker and redis-server on the way out.
            demo.send_signal(signal.SIGINT)
            return


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """`triage demo` in an empty folder, with nothing configured but a Redis URL where no
    Redis answers: the demo must start its own redis-server. TRIAGE_QUEUE is left at its
    default (`triage`, what production workers consume), and a consumer of that queue runs
    beside the demo."""
    cwd = tmp_path_factory.mktemp("demo")
    env = {"TRIAGE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    stdout, stderr = cwd.parent / "demo.out", cwd.parent / "demo.err"
    with stdout.open("w") as out_fh, stderr.open("w") as err_fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "demo"],
            cwd=cwd,
            env={**base, "PYTHONPATH": str(ROOT), **env},
            stdout=out_fh,
            stderr=err_fh,
            text=True,
        )
        taken: list[str] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_consume_default_queue, args=(proc, stderr, taken, stop))
        watcher.start()
        try:
            code = proc.wait(600)
        finally:
            stop.set()
            watcher.join(30)
            if proc.poll() is None:
                proc.kill()
    out = subprocess.CompletedProcess(
        proc.args, code, stdout=stdout.read_text(), stderr=stderr.read_text()
    )
    return Demo(cwd, out, env, taken)


def test_demo_leaves_the_default_queue_alone(demo_dir: Demo) -> None:
    assert demo_dir.taken_from_default_queue == []
    assert "enqueued on queue 'triage-demo'" in demo_dir.out.stderr, demo_dir.out.stderr[-2000:]


def test_demo_refuses_the_production_queue(tmp_path: Path) -> None:
    out = triage(tmp_path, "demo", "--queue", "triage")
    assert out.returncode == 2 and "production workers consume" in out.stderr, out.stderr
    assert not (tmp_path / "data").exists()


def test_demo_runs_the_whole_flow(demo_dir: Demo) -> None:
    cwd, out = demo_dir.cwd, demo_dir.out
    assert out.returncode == 0, out.stderr[-3000:]
    assert "started a private redis-server" in out.stderr
    m = re.search(
        r"routes: duplicate (\d+), suggest (\d+), manual (\d+), failed (\d+) \(of (\d+) tickets\)",
        out.stdout,
    )
    assert m, out.stdout[-2000:]
    dup, sug, man, failed, total = map(int, m.groups())
    assert total == 206 and dup + sug + man + failed == total and failed == 0
    # What the README (and the docs that must agree with it) say the demo prints.
    assert (dup, sug, man, total) == demo_counts(), "update the demo's counts in the docs"
    # the sample holds paraphrased duplicates and look-alikes: every route must occur
    assert dup >= 10 and sug >= 10 and man >= 100
    assert (cwd / "data" / "triage.db").exists() and (cwd / "data" / "chroma").is_dir()


def test_decisions_command_formats(
    demo_dir: Demo,
) -> None:
    cwd = demo_dir.cwd
    out = triage(cwd, "decisions", "-n", "5", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 5 and {r["route"] for r in rows} <= {"duplicate", "suggest", "manual"}
    out = triage(cwd, "decisions", "--route", "duplicate", "--format", "csv", "-n", "1000")
    parsed = list(csv.DictReader(io.StringIO(out.stdout)))
    assert parsed and all(r["route"] == "duplicate" and r["canonical_ticket_id"] for r in parsed)
    out = triage(cwd, "decisions", "--failures")
    assert out.returncode == 0 and "(none)" in out.stdout


def test_search_finds_the_nearest_past_tickets(
    demo_dir: Demo,
) -> None:
    cwd = demo_dir.cwd
    out = triage(cwd, "search", "I was charged twice for my subscription this month", "-k", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3
    # cosine, fused score, ticket: ranked as the worker ranks (hybrid), searched here since
    # the demo's worker has stopped.
    cosines = [float(line.split()[0]) for line in lines]
    fused = [float(line.split()[1]) for line in lines]
    assert fused == sorted(fused, reverse=True) and max(cosines) > 0.5
    assert all("demo:T" in line for line in lines)
    assert "hybrid" in out.stderr and "searched here" in out.stderr


def test_doctor_reports_every_dependency(
    demo_dir: Demo,
) -> None:
    cwd = demo_dir.cwd
    out = triage(cwd, "doctor", env={"TRIAGE_REDIS_URL": REDIS_URL})
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("redis", "database", "embedder", "chroma"):
        assert re.search(rf"^ok\s+{name}\s", out.stdout, re.M), out.stdout
    head = migrate.head_revision()
    assert f"schema {head}/{head}" in out.stdout and "redis 7" in out.stdout
    bad = triage(cwd, "doctor", env={"TRIAGE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    assert bad.returncode == 1 and re.search(r"^BAD\s+redis", bad.stdout, re.M)


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = triage(tmp_path, "--help")
    for cmd in NAMES:
        assert re.search(rf"^\s+{cmd}\s", out.stdout, re.M), out.stdout
    # With the quality extra installed (as here) they are the real commands.
    out = triage(tmp_path, "evaluate", "--help")
    assert out.returncode == 0 and re.search(r"^\s+retrieval\s", out.stdout, re.M), out.stdout


def test_the_command_list_says_what_each_command_says() -> None:
    # `triage --help` lists the commands without importing them: its short help for each is
    # kept in cli/main.py, and must be the first sentence of the command's own help.
    ctx = click.Context(cli)
    for name, lazy in COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.get_short_help_str(limit=300) == lazy.summary


def queued_ticket_ids(redis_url: str, queue: str) -> list[str]:
    """The ticket ids in the queue's messages, in order, as a worker would read them."""
    ids = []
    for raw in redis.Redis.from_url(redis_url).lrange(queue, 0, -1):
        args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
        tickets = args[0] if isinstance(args[0], list) else [args[0]]
        ids += [t["ticket_id"] for t in tickets]
    return ids


def test_ingest_goes_past_bad_rows_and_counts_repeated_ids(
    tmp_path: Path, redis_url: str, queue_name: str
) -> None:
    env = {"TRIAGE_REDIS_URL": redis_url, "TRIAGE_QUEUE": queue_name}
    excel = tmp_path / "excel.csv"
    excel.write_bytes(CP1252_CSV)
    out = triage(tmp_path, "ingest", "--quiet", str(excel), env=env)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert f"{excel}:line 3: not valid utf-8 (byte 0xE9" in out.stderr
    assert "2 tickets enqueued" in out.stderr and "1 row(s) rejected" in out.stderr
    assert queued_ticket_ids(redis_url, queue_name) == ["W1", "W3"]

    out = triage(tmp_path, "ingest", "--quiet", "--encoding", "cp1252", str(excel), env=env)
    assert out.returncode == 0 and "3 tickets enqueued" in out.stderr, out.stderr
    out = triage(tmp_path, "ingest", "--encoding", "klingon", str(excel), env=env)
    assert out.returncode == 2 and "unknown encoding 'klingon'" in out.stderr

    mixed = tmp_path / "mixed.csv"
    mixed.write_text(
        f'id,body\nM1,"{"long text " * 30_000}"\nM2,short\nM1,repeated\nM3,"{"y" * 1_100_000}"\n'
    )
    redis.Redis.from_url(redis_url).delete(queue_name)
    out = triage(tmp_path, "ingest", "--quiet", str(mixed), env=env)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert f"{mixed}:line 4: duplicate id M1, first seen on line 2" in out.stderr
    assert f"{mixed}:line 5: column 'body' is 1,100,000 bytes, over the limit" in out.stderr
    assert (
        "2 tickets enqueued on queue" in out.stderr
        and "1 row(s) rejected, 1 duplicate id(s) skipped" in out.stderr
    )
    assert queued_ticket_ids(redis_url, queue_name) == ["M1", "M2"]
    # The limit is TRIAGE_MAX_BODY_BYTES, the largest request the HTTP API takes.
    redis.Redis.from_url(redis_url).delete(queue_name)
    out = triage(
        tmp_path, "ingest", "--quiet", str(mixed), env={**env, "TRIAGE_MAX_BODY_BYTES": "2000000"}
    )
    assert "3 tickets enqueued" in out.stderr, out.stderr


@pytest.fixture(scope="module")
def venv_without_quality(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real venv holding ticket-triage (`pip install --no-deps -e .`) and only what the
    `triage` entry point and the quality commands' own modules import (click,
    pydantic-settings, numpy): no quality extra."""
    venv = tmp_path_factory.mktemp("no-quality") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    for args in (["--no-deps", "-e", str(ROOT)], ["click", "pydantic-settings", "numpy"]):
        done = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:  # pip needs its package index
            if os.environ.get("CI"):
                pytest.fail(f"pip install {args} failed: {done.stderr[-2000:]}")
            pytest.skip(f"pip install {args} failed (no package index?): {done.stderr[-500:]}")
    return venv


def test_quality_commands_without_the_extra(venv_without_quality: Path, tmp_path: Path) -> None:
    bin_dir = venv_without_quality / "bin"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(bin_dir / "triage"), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    # The premise: the extra's packages are not importable in this venv.
    for module in ("bm25s", "matplotlib"):
        probe = [str(bin_dir / "python"), "-c", f"import {module}"]
        assert subprocess.run(probe, env=env, capture_output=True).returncode != 0

    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"triage {VERSION}"
    out = run("--help")
    assert out.returncode == 0, out.stderr
    for cmd in NAMES:
        assert re.search(rf"^\s+{cmd}\s", out.stdout, re.M), out.stdout
    assert re.search(r"^\s+evaluate\s+\(needs the quality extra", out.stdout, re.M), out.stdout
    for args, missing in (
        (("evaluate", "pairs", "pairs.csv", "--out", "x"), "bm25s"),
        (("calibrate", "--pairs", "pairs.csv"), "matplotlib"),
        (("calibrate", "--help"), "matplotlib"),
    ):
        out = run(*args)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert f"triage {args[0]} needs the quality extra ({missing} cannot be imported)" in (
            out.stderr
        )
        assert "pip install 'ticket-triage[quality]'" in out.stderr
