"""Smoke tests of the benchmark harness: each bench/ script runs on a tiny input and prints
(and writes) well-formed results. No timing is asserted: speed is what the scripts measure,
on purpose-sized inputs, never what a test checks (docs/performance.md holds the figures)."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
ST_PYTHON = BENCH / ".venv-st" / "bin" / "python"


def run(*args: str | Path, timeout: float = 240) -> str:
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"{args[0]} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc.stdout


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_text_sets_are_committed_and_fixed() -> None:
    short = (BENCH / "texts" / "short.txt").read_text(encoding="utf-8").splitlines()
    long = (BENCH / "texts" / "long.txt").read_text(encoding="utf-8").splitlines()
    assert len(short) == 2000 and all(t.strip() for t in short)
    assert len(long) == 200 and all(len(t) >= 1000 for t in long)


def test_engine_local_only(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    stdout = run(
        BENCH / "engine.py", "--runs", "2", "-n", "6", "--call-size", "4,0", "--no-st",
        "--json", out,
    )  # fmt: skip
    assert "sentence-transformers: not run: --no-st" in stdout
    report = json.loads(out.read_text())
    assert report["sets"]["short"]["texts"] == 6 and report["sets"]["long"]["texts"] == 6
    # The long set runs at the model's full 256 tokens.
    assert report["sets"]["long"]["tokens"] == 6 * 256
    local = report["engines"]["local"]
    assert set(local["median"]) == {"short/4", "short/all", "long/4", "long/all"}
    assert all(len(v) == 2 and all(positive(x) for x in v) for v in local["runs"].values())
    assert positive(local["cold_start_s"]) and positive(local["peak_rss_mib"])
    # Without sentence-transformers the agreement comes from its recorded embeddings.
    ref = report["reference_agreement"]
    assert ref["texts"] == 60 and ref["min_cosine"] > 0.9999


def test_engine_against_sentence_transformers(tmp_path: Path) -> None:
    if not ST_PYTHON.exists():
        pytest.skip(
            f"{ST_PYTHON} does not exist: sentence-transformers + torch (≈ 1.4 GB) live only in "
            "the optional benchmark venv that bench/README.md creates, never in the product's"
        )
    out = tmp_path / "engine.json"
    stdout = run(
        BENCH / "engine.py", "--runs", "1", "-n", "8", "--call-size", "8", "--sets", "short",
        "--json", out,
    )  # fmt: skip
    assert "ratio of medians to sentence-transformers" in stdout
    report = json.loads(out.read_text())
    local = report["engines"]["local"]
    assert positive(local["ratio_to_st"]["short/8"])
    assert local["agreement_with_st"]["short"]["min_cosine"] > 0.9999
    assert "sentence-transformers" in report["engines"]


def test_scale(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    stdout = run(
        BENCH / "scale.py", "--sizes", "300,600", "--queries", "10", "--ingest-batch", "100",
        "--json", out,
    )  # fmt: skip
    assert "600 stored" in stdout
    report = json.loads(out.read_text())
    assert [r["stored"] for r in report["rows"]] == [300, 600]
    assert not report["stopped_early"]
    for row in report["rows"]:
        for key in ("ingest_vectors_s", "query1_p50_ms", "query1_p99_ms", "query32_p50_ms"):
            assert positive(row[key]), key
        assert row["query1_p50_ms"] <= row["query1_p99_ms"]
        assert positive(row["rss_mib"]) and positive(row["disk_mib"])


def test_pipeline(tmp_path: Path, redis_url: str) -> None:
    out = tmp_path / "pipeline.json"
    stdout = run(
        BENCH / "pipeline.py", "--data", ROOT / "cli" / "samples" / "demo_tickets.csv",
        "-n", "12", "--runs", "1", "--batch-size", "4", "--redis-url", redis_url, "--json", out,
    )  # fmt: skip
    assert "x engine" in stdout
    report = json.loads(out.read_text())
    assert report["n"] == 12
    for variant in ("engine", "routed", "backfill"):
        assert positive(report["median"][variant]), variant
        assert positive(report["cpu_ms_per_ticket"][variant][0]), variant


def test_webhook_latency(redis_url: str) -> None:
    stdout = run(BENCH / "webhook_latency.py", "-n", "6", "--rate", "20", "--redis-url", redis_url)
    assert "decided 6/6" in stdout
    assert "p99" in stdout


def test_actions_latency(redis_url: str) -> None:
    stdout = run(BENCH / "actions_latency.py", "-n", "6", "--rate", "20", "--redis-url", redis_url)
    assert "decided 6/6, delivered 6/6" in stdout
    assert "decision row -> webhook received ms: p50" in stdout
    split = run(
        BENCH / "actions_latency.py", "-n", "6", "--rate", "20", "--split",
        "--redis-url", redis_url,
    )  # fmt: skip
    assert "a tickets worker and a deliveries worker" in split
    assert "decided 6/6, delivered 6/6" in split


def test_heldout_calibration() -> None:
    quality = ROOT / "tests" / "fixtures" / "quality"
    stdout = run(
        BENCH / "heldout_calibration.py", "--corpus", quality / "hadoop_bugs.csv",
        "--links", quality / "hadoop_bugs-combined.csv",
    )  # fmt: skip
    assert "held-out" in stdout.lower()


def test_slow_clients(redis_url: str) -> None:
    stdout = run(
        BENCH / "slow_clients.py", "--connections", "5", "--wait", "1", "--redis-url", redis_url
    )
    assert "uvicorn      /healthz with 5 slow connections open" in stdout
    assert "triage serve /healthz with 5 slow connections open" in stdout


def test_html_to_text() -> None:
    stdout = run(
        BENCH / "html_to_text.py", "--gitbugs", ROOT / "tests" / "fixtures", "--runs", "1",
        "--sizes", "2000,4000", "--limit", "20", "--no-reference", "--only", "tickets/html.py",
    )  # fmt: skip
    assert "== webhook samples: 2 bodies" in stdout
    assert "descriptions hold HTML by the product's check" in stdout
    features = stdout.split("== features")[1].split("== adversarial")[0].splitlines()[3:]
    rows = [re.split(r"\s{2,}", line) for line in features if line.strip()]
    assert len(rows) == 12 and all(row[1] == "✓" for row in rows)  # the product's column
    adversarial = stdout.split("== adversarial")[1].split("== install size")[0]
    product = [line for line in adversarial.splitlines() if "tickets/html.py" in line]
    assert len(product) == 10 and not any(">20" in line for line in product)
    assert "tickets/html.py  0.0" in stdout.split("== install size")[1]


def test_sentinel_failover(tmp_path: Path) -> None:
    out = tmp_path / "failover.json"
    stdout = run(
        BENCH / "sentinel_failover.py", "--runs", "1", "--rate", "50", "--after-s", "3",
        "--case", "sigterm/2/1", "--json", out,
    )  # fmt: skip
    assert "sigterm" in stdout
    [case] = json.loads(out.read_text())
    [one] = case["runs"]
    assert one["switched"] == 1 and one["lost"] == 0 and positive(one["accepted"])


def test_lock_handoff(postgres_server: str, redis_url: str, tmp_path: Path) -> None:
    out = tmp_path / "handoff.json"
    stdout = run(
        BENCH / "lock_handoff.py", "--admin-url", postgres_server, "--redis", redis_url,
        "--processes", "2", "--hold-ms", "5", "--outside-ms", "5", "--seconds", "1.5", "--json", out,
    )  # fmt: skip
    assert "2 processes, hold 5 ms, outside 5 ms" in stdout
    [row] = json.loads(out.read_text())["results"]
    assert row["processes"] == 2 and row["sections"] > 10 and row["handoffs"] > 0
    assert 0 < row["busy_share"] <= 1 and row["gap_p50_ms"] >= 0


def test_sql_sizing(postgres_server: str, redis_url: str) -> None:
    stdout = run(
        BENCH / "sql_sizing.py", "--admin-url", postgres_server, "--sizes", "300",
        "--bodies", "short", "--redis-url", redis_url,
    )  # fmt: skip
    assert "triage_tickets" in stdout and "triage_decisions" in stdout
    assert "dedupe key" in stdout


def test_fixture_and_critical_section(tmp_path: Path, postgres_server: str) -> None:
    """bench/fixture.py builds a tiny fixture; bench/critical_section.py and
    bench/lexical_startup.py measure it (a `chroma run` server, PostgreSQL, Redis)."""
    prefix = f"benchsmoke{uuid.uuid4().hex[:8]}"
    fixtures = tmp_path / "fixtures"
    database = postgres_server.rsplit("/", 1)[0] + "/" + prefix + "_{size}"
    try:
        out = run(BENCH / "fixture.py", "--out", fixtures, "--sizes", "300", "--database", database)
        built = json.loads(out.strip().splitlines()[-1])
        assert built["stored_vectors"] == 300 and built["routes_manual"] > 0
        report = tmp_path / "section.json"
        run(
            BENCH / "critical_section.py", "section", "--code", f"here={ROOT}", "--sizes", "300",
            "--batches", "2", "--warmup", "0", "--fixtures", fixtures, "--db-prefix", prefix,
            "--port", str(_free_port()), "--json", report, "--phases", "--batch-size", "16",
        )  # fmt: skip
        (result,) = json.loads(report.read_text())["results"]
        assert result["batches"] == 2 and sum(result["routes"].values()) == 32
        assert result["batch_size"] == 16
        assert positive(result["section_p50_ms"]) and 0 < result["share_p50"] < 1
        assert result["full_gc_count"] >= 0 and result["gc_freed_per_batch"] >= 0
        # The section's steps, each timed while the lock is held.
        phases = result["phases_mean_ms"]
        assert all(positive(phases[k]) for k in ("view_marks", "save_batch", "commit")), phases
        # Two other holders commit 8 tickets each while every batch waits for the lock.
        run(
            BENCH / "critical_section.py", "section", "--code", f"here={ROOT}", "--sizes", "300",
            "--batches", "2", "--warmup", "0", "--fixtures", fixtures, "--db-prefix", prefix,
            "--port", str(_free_port()), "--json", report, "--contended", "8",
            "--holders", "2", "--hold-ms", "30",
        )  # fmt: skip
        (held,) = json.loads(report.read_text())["results"]
        assert held["holders"] == 2 and sum(held["routes"].values()) == 64
        assert positive(held["held_p50_ms"]) and held["wait_p50_ms"] > 0.03 * 1000
        assert 0 < held["caught_up_mean"] <= 16
        lexical = tmp_path / "lexical.json"
        run(
            BENCH / "lexical_startup.py", "refresh", "--sizes", "300", "--db-prefix", prefix,
            "--snapshots", tmp_path / "snapshots", "--delta", "40", "--json", lexical,
        )  # fmt: skip
        (row,) = json.loads(lexical.read_text())["results"]
        assert row["rebuild"]["tickets"] == 300 and row["rebuild"]["snapshot_tickets"] == 260
        assert row["snapshot"]["scores_equal_rebuilt"] is True
        assert row["snapshot"]["catch_up_rows"] == 40 and row["snapshot"]["update_added"] == 40
        pauses = tmp_path / "gc.json"
        run(
            BENCH / "gc_pause.py", "--sizes", "300", "--database", database, "--json", pauses,
        )  # fmt: skip
        (gc_row,) = json.loads(pauses.read_text())["results"]
        assert gc_row["tickets"] == 300 and len(gc_row["full_ms"]) == 3
        # The index's objects are among those frozen.
        assert gc_row["frozen"] >= gc_row["tracked"] * 0.9
        keys = tmp_path / "keys.json"
        run(
            BENCH / "key_lookup.py", "--template", f"{prefix}_300", "--admin-url",
            postgres_server, "--steps", "100,200", "--repeat", "2", "--json", keys,
        )  # fmt: skip
        rows = json.loads(keys.read_text())
        assert [r["stored_new"] for r in rows] == [100, 100, 200, 200]
        for r in rows:
            assert (
                r["semi-join"]["index"] and r["per source"]["index"]
            )  # a table this small may be read whole
            assert (
                r["semi-join"]["found"]
                == r["per source"]["found"]
                == (32 if "newdesk" in r["lookup"] else 300)
            )
            assert positive(r["semi-join"]["p50_ms"]) and positive(r["per source"]["p50_ms"])
    finally:
        admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{prefix}_300_keys" WITH (FORCE)'))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{prefix}_300" WITH (FORCE)'))
        admin.dispose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_section_bench_refuses_a_port_already_served(tmp_path: Path) -> None:
    """A server left on the port by an interrupted run answers the heartbeat for the one the
    bench starts (whose own start then fails), and would be measured instead."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Heartbeat(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'{"nanosecond heartbeat": 1}')

        def log_message(self, *args: Any) -> None:
            pass

    with HTTPServer(("127.0.0.1", 0), Heartbeat) as left_over:
        threading.Thread(target=left_over.serve_forever, daemon=True).start()
        port = left_over.server_address[1]
        proc = subprocess.run(
            [sys.executable, str(BENCH / "critical_section.py"), "section", "--code",
             f"here={ROOT}", "--sizes", "300", "--fixtures", str(tmp_path), "--port", str(port)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        left_over.shutdown()
    assert proc.returncode != 0 and f"port {port} is in use" in proc.stderr, proc.stderr[-2000:]


def test_match_window(tmp_path: Path) -> None:
    stdout = run(
        BENCH / "match_window.py", "--sizes", "3000", "--windows", "30,365", "--batches", "3",
        "--path", tmp_path / "store",
    )  # fmt: skip
    assert "window 30 d" in stdout and "window 365 d" in stdout
    for design in ("where", "overfetch_x4", "overfetch_x16", "exact", "index"):
        assert design in stdout
    # brute force over the window is the exact answer it is measured against; the
    # product's window index finds the same neighbours
    assert stdout.count("exact") == 2 and stdout.count("recall@6 1.000") >= 4
    assert stdout.count("p99 / window-off p99") == 2
    assert stdout.count(" evicted") == 2 and " 0 evicted" not in stdout


def test_purge(redis_url: str) -> None:
    stdout = run(
        BENCH / "purge.py", "--size", "300", "--live", "6", "--chroma", "--redis-url", redis_url
    )  # fmt: skip
    report = json.loads(stdout[stdout.index("\n{") + 1 :])
    assert report["counts"]["tickets"] == 300 and report["lost"] == 0
    assert report["old_tickets_with_text"] == 0 and report["old_decisions_kept"] == 300
    assert positive(report["purge_s"])
    assert report["chroma_deleted_by_worker"] == 300 and report["chroma_vectors_left"] == 6
