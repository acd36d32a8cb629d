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
        [sys.executable, "-m", "cli", "decisions"],
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


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        (" " * 16, "is blank (only whitespace)"),
        ("\t \n" * 8, "is blank (only whitespace)"),
        ("a" * 16, "has 1 distinct character(s), fewer than 5"),
        ("ab" * 12, "has 2 distinct character(s)"),
        ("abcd" * 5, "has 4 distinct character(s)"),
        ("a" * 14 + "bcdef", "is repetitive (1.4 bits of entropy per character, under 2.0)"),
    ],
)
def test_low_entropy_secrets_are_refused_in_production(secret: str, why: str) -> None:
    for overrides, named in (
        ({"webhook_secrets": {"github": [secret]}}, "TRIAGE_WEBHOOK_SECRETS: secret 1 of 'github'"),
        ({"api_tokens": {secret: ["read"]}}, "TRIAGE_API_TOKENS: token 1"),
    ):
        with pytest.raises(SettingsError) as exc:
            load_settings(env="production", **overrides)
        assert f"{named} {why}" in str(exc.value)
        assert repr(secret) not in str(exc.value)
        assert load_settings(env="development", **overrides)  # accepted for trials
    with pytest.raises(SettingsError, match="TRIAGE_REDIS_URL: the password"):
        load_settings(env="production", redis_url=f"redis://:{secret.strip() or 'x'}@redis/0")


@pytest.mark.parametrize(
    "secret",
    [
        "3f9c0a17be4d2e68",  # openssl rand -hex 8
        "8264019375102938",
        "correct horse battery staple",
        "0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3f4a5b6c7d8e9f0a1b",
    ],
)
def test_varied_secrets_are_taken_in_production(secret: str) -> None:
    s = load_settings(env="production", webhook_secrets={"github": [secret]})
    assert s.webhook_secrets == {"github": [secret]}
