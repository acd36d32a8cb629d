from __future__ import annotations

import subprocess
import sys

import pytest

from config.settings import SettingsError, load_settings


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "TRIAGE_DUPLICATE_THRESHOLD",
        "TRIAGE_SUGGEST_THRESHOLD",
        "TRIAGE_TOP_K",
        "TRIAGE_EMBEDDER",
    ):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert (s.duplicate_threshold, s.suggest_threshold, s.top_k) == (0.85, 0.70, 5)
    assert s.embedder == "local"
    assert s.ollama_model == "all-minilm"


@pytest.mark.parametrize(
    ("var", "value", "fragment"),
    [
        ("TRIAGE_BATCH_SIZE", "0", "TRIAGE_BATCH_SIZE"),
        ("TRIAGE_BATCH_SIZE", "lots", "TRIAGE_BATCH_SIZE"),
        ("TRIAGE_EMBEDDER", "openai", "TRIAGE_EMBEDDER"),
        ("TRIAGE_DUPLICATE_THRESHOLD", "1.5", "TRIAGE_DUPLICATE_THRESHOLD"),
        ("TRIAGE_SUGGEST_THRESHOLD", "0.9", "TRIAGE_SUGGEST_THRESHOLD (0.9) must not exceed"),
        ("TRIAGE_TOP_K", "-1", "TRIAGE_TOP_K"),
    ],
)
def test_bad_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert fragment in str(exc.value)


def test_dotenv_file_is_read(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    monkeypatch.delenv("TRIAGE_TOP_K", raising=False)
    (tmp_path / ".env").write_text("TRIAGE_TOP_K=9\n")  # type: ignore[operator]
    assert load_settings().top_k == 9


def test_cli_stops_with_the_setting_named() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "producer.cli", "decisions"],
        env={"TRIAGE_TOP_K": "zero", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "TRIAGE_TOP_K" in out.stderr
    assert "Traceback" not in out.stderr


def test_celery_worker_stops_on_a_bad_setting() -> None:
    # Celery swallows exceptions of configuration hooks and would run on amqp://localhost.
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config.celery_app", "worker"],
        env={"TRIAGE_BATCH_SIZE": "-3", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "TRIAGE_BATCH_SIZE" in out.stderr
    assert "amqp://" not in out.stdout + out.stderr
