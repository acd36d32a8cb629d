from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from config.celery_app import celery_config, create_app
from config.redis_client import sentinel_addresses
from config.settings import SettingsError, load_settings, mask_url
from tickets.model import Ticket
from tickets.queue import BrokerUnavailable, publish


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


SENTINELS = (
    "sentinel://:s3cr3t-Pw-9fQ2xL7v@10.0.0.1:26379/2;sentinel://:s3cr3t-Pw-9fQ2xL7v@10.0.0.2/2"
)


def test_a_sentinel_url_is_taken_and_shown_masked() -> None:
    s = load_settings(
        env="production", redis_url=SENTINELS, redis_sentinel_password="Zq9xK2mW4vB8nR3t"
    )
    assert s.uses_sentinel and s.redis_sentinel_master == "mymaster"
    shown = repr(s)
    assert "s3cr3t" not in shown and "Zq9xK2mW4vB8nR3t" not in shown
    # each sentinel keeps its address; only the passwords are hidden
    assert mask_url(SENTINELS) == ("sentinel://:***@10.0.0.1:26379/2;sentinel://:***@10.0.0.2/2")
    assert sentinel_addresses(SENTINELS) == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    config = celery_config(s)
    assert config["broker_transport"] == "config.broker:SentinelTransport"
    options = config["broker_transport_options"]
    assert options["master_name"] == "mymaster"
    assert options["sentinel_kwargs"]["password"] == "Zq9xK2mW4vB8nR3t"


def test_a_mask_never_swallows_the_next_sentinel() -> None:
    # Without a password in the first URL, a single pattern over the whole string once ran
    # from its port to the next URL's password: hosts vanished from what doctor shows.
    url = "sentinel://h1:26379;sentinel://:pw-long-enough-1@h2:26379"
    assert mask_url(url) == "sentinel://h1:26379;sentinel://:***@h2:26379"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://h:6379/0;redis://h2:6379/0", "only sentinel:// URLs may be listed"),
        ("sentinel://h:26379;redis://h2:6379", "only sentinel:// URLs may be listed"),
        ("http://h:6379/0", "the scheme must be one of"),
        ("sentinel://:26379", "names no host"),
        ("sentinel://h:26379/zero", "database number"),
        ("redis://h:port/0", "Port could not be cast"),
    ],
)
def test_a_bad_redis_url_is_refused_at_start(url: str, why: str) -> None:
    with pytest.raises(SettingsError, match=why) as exc:
        load_settings(env="development", redis_url=url)
    assert "TRIAGE_REDIS_URL" in str(exc.value)


def test_a_weak_sentinel_password_is_refused_in_production() -> None:
    with pytest.raises(SettingsError, match="TRIAGE_REDIS_SENTINEL_PASSWORD is shorter"):
        load_settings(env="production", redis_url=SENTINELS, redis_sentinel_password="short")


def test_a_failed_publish_never_shows_the_redis_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    settings = load_settings(
        env="development", redis_url=f"redis://:hunter2-Xy7@127.0.0.1:{port}/0"
    )
    app = create_app(settings)
    with pytest.raises(BrokerUnavailable) as exc:
        list(
            publish(
                app, [Ticket(source="s", ticket_id="1", body="b")], retry_policy={"max_retries": 0}
            )
        )
    assert "hunter2" not in str(exc.value) and f"127.0.0.1:{port}" in str(exc.value)
    app.close()
