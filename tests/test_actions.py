"""The outbox and the signed outbound webhook, on real parts: a served receiver (tests/
receiver.py), SQLite and PostgreSQL, Redis. Here the delivery runs in the test's process;
tests/test_actions_worker.py runs it through real Celery workers."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import requests
import standardwebhooks
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from actions import webhook
from actions.delivery import Deliverer, Holds, classify, requested_wait_s
from actions.outbox import Outbox, actions_for
from actions.sweeper import sweep_once
from config.settings import Settings, SettingsError, load_settings
from tests.conftest import decision_row
from tests.receiver import SECRET, Answer, Receiver
from tickets import db, outbox
from tickets.decisions import decision_out
from tickets.outbox import ActionRow


def decision_values(ticket_id: str, **values: Any) -> dict[str, Any]:
    """A decision row's values as the worker inserts them."""
    row = decision_row(ticket_id, **values)
    return {
        c.name: getattr(row, c.name) for c in db.DecisionRow.__table__.columns if c.name != "id"
    }


@pytest.fixture
def outbox_env(
    database_url: str, redis_url: str, receiver: Receiver, queue_name: str
) -> Iterator[Callable[..., tuple[Settings, Deliverer]]]:
    """Settings on a migrated database of each kind and a deliverer in this process."""
    made: list[Deliverer] = []

    def make(**overrides: Any) -> tuple[Settings, Deliverer]:
        settings = load_settings(
            **{
                "env": "development",
                "database_url": database_url,
                "redis_url": redis_url,
                "queue": queue_name,
                "outbound_webhook_url": receiver.url,
                "outbound_webhook_secret": SECRET,
                "actions_timeout_s": 2,
                **overrides,
            }
        )
        client = redis.Redis.from_url(redis_url)
        deliverer = Deliverer(
            settings, db.make_engine(database_url), requests.Session(), Holds(client, queue_name)
        )
        made.append(deliverer)
        return settings, deliverer

    yield make
    for d in made:
        d.close()
        d.engine.dispose()


def commit_decisions(settings: Settings, engine: Any, *ticket_ids: str) -> list[str]:
    """Decisions and their actions in one transaction, as the worker commits them; the ids
    the outbox would publish."""
    published: list[list[str]] = []
    box = Outbox(settings, published.append)
    values = [decision_values(t) for t in ticket_ids]
    with Session(engine) as session:
        db.save_batch(session, [], values)
        box.stage(session, values)
        session.commit()
    box.publish_committed()
    return [i for ids in published for i in ids]


def action(engine: Any, action_id: str) -> ActionRow:
    with Session(engine) as session:
        row = session.scalar(select(ActionRow).where(ActionRow.action_id == action_id))
        assert row is not None
        return row


def make_due(engine: Any, action_id: str) -> None:
    """Bring a retry's time forward (the sweeper's clock, not the receiver's)."""
    with Session(engine) as session:
        session.execute(
            update(ActionRow)
            .where(ActionRow.action_id == action_id)
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        session.commit()


# --- signing ----------------------------------------------------------------------------------


def test_the_signature_is_the_reference_librarys() -> None:
    key = load_settings(env="development", outbound_webhook_secret=SECRET).outbound_webhook_key
    assert key == b"0123456789abcdef0123456789abcdef"
    data = webhook.body({"route": "duplicate", "subject": "Ärger mit dem Drucker"})
    ts = int(time.time())
    headers = webhook.headers(key, "msg_abc", ts, data)
    assert standardwebhooks.Webhook(SECRET).verify(data, headers)["subject"] == (
        "Ärger mit dem Drucker"
    )
    # Anything changed, and it fails: the body, the id, the timestamp.
    for changed in (
        (data + b" ", headers),
        (data, {**headers, "webhook-id": "msg_abd"}),
        (data, {**headers, "webhook-timestamp": str(ts - 1)}),
    ):
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            standardwebhooks.Webhook(SECRET).verify(*changed)


def test_a_secret_without_padding_is_read_as_the_reference_library_reads_it() -> None:
    unpadded = "whsec_" + base64.b64encode(b"x" * 25).decode().rstrip("=")
    key = load_settings(env="development", outbound_webhook_secret=unpadded).outbound_webhook_key
    assert key is not None
    data, ts = b"{}", int(time.time())
    standardwebhooks.Webhook(unpadded).verify(data, webhook.headers(key, "msg_1", ts, data))


@pytest.mark.parametrize(
    ("secret", "error"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must have the form whsec_<base64>"),
        ("whsec_====", "nothing after whsec_"),
        ("whsec_not*base64!", "is not base64"),
    ],
)
def test_a_malformed_secret_is_refused_without_echoing_it(secret: str, error: str) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(env="development", outbound_webhook_secret=secret)
    assert error in str(exc.value) and "TRIAGE_OUTBOUND_WEBHOOK_SECRET" in str(exc.value)
    assert secret.removeprefix("whsec_") not in str(exc.value).replace("whsec_<base64>", "")


def test_production_wants_a_key_of_24_bytes() -> None:
    short = "whsec_" + base64.b64encode(b"k" * 16).decode()
    with pytest.raises(SettingsError, match="16 bytes, under the 24"):
        load_settings(env="production", outbound_webhook_secret=short)
    assert load_settings(env="production", outbound_webhook_secret=SECRET)


def test_urls_one_or_a_json_list_never_unsigned_and_masked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRIAGE_OUTBOUND_WEBHOOK_URL", "https://hooks.example.com/triage")
    monkeypatch.setenv("TRIAGE_OUTBOUND_WEBHOOK_SECRET", SECRET)
    assert load_settings(env="development").outbound_webhook_url == [
        "https://hooks.example.com/triage"
    ]
    monkeypatch.setenv("TRIAGE_OUTBOUND_WEBHOOK_URL", '["http://a.example/1", "https://u:pw@b/2"]')
    settings = load_settings(env="development")
    assert settings.outbound_webhook_url == ["http://a.example/1", "https://u:pw@b/2"]
    shown = repr(settings)
    assert "pw@" not in shown and "u:***@b/2" in shown and SECRET not in shown
    monkeypatch.setenv("TRIAGE_OUTBOUND_WEBHOOK_URL", "ftp://x/y")
    with pytest.raises(SettingsError, match=r"TRIAGE_OUTBOUND_WEBHOOK_URL: .*not an http"):
        load_settings(env="development")
    monkeypatch.setenv("TRIAGE_OUTBOUND_WEBHOOK_URL", "https://x/y")
    monkeypatch.delenv("TRIAGE_OUTBOUND_WEBHOOK_SECRET")
    with pytest.raises(SettingsError, match="needs TRIAGE_OUTBOUND_WEBHOOK_SECRET"):
        load_settings(env="development")


# --- what the receiver's answer means -----------------------------------------------------------


def test_answers_are_classified() -> None:
    assert [classify(s) for s in (200, 204, 301, 401, 403, 404, 410, 422)] == [
        "delivered",
        "delivered",
        *["dead"] * 6,
    ]
    assert {classify(s) for s in (408, 409, 425, 429, 500, 502, 503, 504)} == {"failed"}


def test_requested_waits() -> None:
    now = 1_767_000_000.0
    assert requested_wait_s({"retry-after": "7"}, now) == 7
    http_date = datetime.fromtimestamp(now + 30, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert requested_wait_s({"retry-after": http_date}, now) == pytest.approx(30)
    assert requested_wait_s({"x-ratelimit-reset": str(int(now + 12))}, now) == 12  # epoch
    assert requested_wait_s({"x-ratelimit-reset": "5"}, now) == 5  # seconds
    assert requested_wait_s({"retry-after": "2", "x-ratelimit-reset": "9"}, now) == 9
    assert requested_wait_s({"retry-after": "soon"}, now) is None
    assert requested_wait_s({}, now) is None


# --- the outbox -------------------------------------------------------------------------------


def test_one_action_per_decision_and_url_and_none_without_a_url() -> None:
    values = [decision_values("1"), decision_values("2")]
    settings = load_settings(
        env="development",
        outbound_webhook_url='["http://a/1", "http://b/2"]',
        outbound_webhook_secret=SECRET,
    )
    rows = actions_for(values, settings)
    assert len(rows) == 4 and len({r["action_id"] for r in rows}) == 4
    assert {(r["ticket_id"], r["target"]) for r in rows} == {
        (t, u) for t in "12" for u in ("http://a/1", "http://b/2")
    }
    assert all("." not in r["action_id"] for r in rows)
    assert actions_for(values, load_settings(env="development")) == []


def test_actions_commit_with_their_decisions_or_not_at_all(
    outbox_env: Callable[..., tuple[Settings, Deliverer]],
) -> None:
    settings, deliverer = outbox_env()
    engine = deliverer.engine
    published: list[list[str]] = []
    box = Outbox(settings, published.append)
    values = [decision_values("rolled-back")]
    with Session(engine) as session:
        db.save_batch(session, [], values)
        box.stage(session, values)
        session.rollback()
    assert box.publish_committed() == 0 and published == []
    with Session(engine) as session:
        assert session.scalar(select(ActionRow)) is None
    ids = commit_decisions(settings, engine, "kept")
    assert len(ids) == 1 and action(engine, ids[0]).status == "pending"
    # The same decision's action staged again (a redelivered batch) is not queued twice.
    with Session(engine) as session:
        box.stage(session, [decision_values("kept")])
        session.commit()
    with Session(engine) as session:
        assert len(list(session.scalars(select(ActionRow)))) == 1


def test_a_decision_is_one_signed_post_with_the_read_api_body(
    outbox_env: Callable[..., tuple[Settings, Deliverer]], receiver: Receiver
) -> None:
    settings, deliverer = outbox_env()
    (action_id,) = commit_decisions(settings, deliverer.engine, "42")
    assert deliverer.deliver(action_id).status == "delivered"
    assert deliverer.deliver(action_id).status == "skipped"  # a duplicate message
    (got,) = receiver.all()
    assert got.headers["webhook-id"] == action_id
    assert got.headers["content-type"] == "application/json"
    with Session(deliverer.engine) as session:
        stored = session.scalar(select(db.DecisionRow))
        assert receiver.verify(got) == decision_out(stored).model_dump(mode="json")
    row = action(deliverer.engine, action_id)
    assert (row.status, row.attempts, row.last_status) == ("delivered", 1, 200)
    assert row.delivered_at is not None


def test_retry_after_is_honoured_and_held_for_the_target(
    outbox_env: Callable[..., tuple[Settings, Deliverer]], receiver: Receiver
) -> None:
    settings, deliverer = outbox_env()
    first, second = commit_decisions(settings, deliverer.engine, "a", "b")
    receiver.answer(Answer(429, {"Retry-After": "30"}, b'{"error": "slow down"}'))
    before = datetime.now(UTC)
    assert deliverer.deliver(first).status == "failed"
    row = action(deliverer.engine, first)
    assert row.status == "failed" and row.last_status == 429
    assert "HTTP 429" in (row.last_error or "") and "slow down" in (row.last_error or "")
    assert db_time(row.next_attempt_at) >= before + timedelta(seconds=29)
    # Every action to that target waits: nothing is sent for the second one.
    assert deliverer.deliver(second).status == "held"
    assert len(receiver.all()) == 1
    assert db_time(action(deliverer.engine, second).next_attempt_at) >= before + timedelta(
        seconds=29
    )


def test_a_targets_rate_is_shared_by_every_worker(
    outbox_env: Callable[..., tuple[Settings, Deliverer]], receiver: Receiver
) -> None:
    """TRIAGE_ACTIONS_RATE_PER_MIN: 60 a minute is one a second, whichever worker sends; the
    action over the rate is postponed, not sent, and goes once its slot comes."""
    settings, one = outbox_env(actions_rate_per_min={receiver.url: 60})
    _, other = outbox_env(actions_rate_per_min={receiver.url: 60})
    first, second, third = commit_decisions(settings, one.engine, "a", "b", "c")
    before = datetime.now(UTC)
    assert one.deliver(first).status == "delivered"
    held = other.deliver(second)  # another process, the same target: over the rate
    assert held.status == "held" and held.wait_s is not None and 0.5 < held.wait_s <= 1.0
    assert db_time(action(one.engine, second).next_attempt_at) >= before + timedelta(seconds=0.5)
    assert one.deliver(third).status == "held"
    assert len(receiver.all()) == 1
    time.sleep(held.wait_s + 0.05)
    assert other.deliver(second).status == "delivered"
    assert one.deliver(third).status == "held"  # the next slot is a second later again
    with pytest.raises(SettingsError, match=r"TRIAGE_ACTIONS_RATE_PER_MIN: .* above 0"):
        load_settings(env="development", actions_rate_per_min={"zendesk": 0})


def db_time(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def test_receiver_down_then_up_is_delivered_on_a_later_attempt(
    outbox_env: Callable[..., tuple[Settings, Deliverer]], receiver: Receiver
) -> None:
    settings, deliverer = outbox_env()
    (action_id,) = commit_decisions(settings, deliverer.engine, "7")
    receiver.stop()
    assert deliverer.deliver(action_id).status == "failed"
    row = action(deliverer.engine, action_id)
    assert row.last_status is None and "ConnectionError" in (row.last_error or "")
    # Not due yet: the sweeper leaves it alone.
    published: list[list[str]] = []
    assert sweep_once(deliverer.engine, published.append, settings) == []
    receiver.start()
    make_due(deliverer.engine, action_id)
    assert sweep_once(deliverer.engine, published.append, settings) == [action_id]
    assert deliverer.deliver(action_id).status == "delivered"
    assert action(deliverer.engine, action_id).attempts == 2
    (got,) = receiver.all()
    receiver.verify(got)


def test_a_permanent_refusal_is_dead_with_the_answer_and_a_redrive_sends_it(
    outbox_env: Callable[..., tuple[Settings, Deliverer]], receiver: Receiver
) -> None:
    settings, deliverer = outbox_env()
    (action_id,) = commit_decisions(settings, deliverer.engine, "9")
    receiver.answer(Answer(401, {}, b'{"message": "bad signature key"}'))
    assert deliverer.deliver(action_id).status == "dead"
    row = action(deliverer.engine, action_id)
    assert row.status == "dead" and row.last_status == 401
    assert row.last_error == 'HTTP 401 Unauthorized: {"message": "bad signature key"}'
    with Session(deliverer.engine) as session:
        assert outbox.redrive(session, datetime.now(UTC)) == [action_id]
    assert deliverer.deliver(action_id).status == "delivered"
    ids = [r.headers["webhook-id"] for r in receiver.all()]
    assert ids == [action_id, action_id]  # a re-send carries the same id


def test_out_of_attempts_is_dead(
    outbox_env: Callable[..., tuple[Settings, Deliverer]], receiver: Receiver
) -> None:
    settings, deliverer = outbox_env(actions_max_attempts=2)
    (action_id,) = commit_decisions(settings, deliverer.engine, "5")
    receiver.default = Answer(503, {}, b"maintenance")
    assert deliverer.deliver(action_id).status == "failed"
    make_due(deliverer.engine, action_id)
    sweep_once(deliverer.engine, lambda ids: None, settings)
    deliverer.deliver(action_id)
    row = action(deliverer.engine, action_id)
    assert row.status == "dead" and row.attempts == 2
    assert (row.last_error or "").startswith("gave up after 2 attempts: HTTP 503")


def test_a_killed_attempts_lease_runs_out_and_the_action_is_sent_again(
    outbox_env: Callable[..., tuple[Settings, Deliverer]], receiver: Receiver
) -> None:
    settings, deliverer = outbox_env()
    (action_id,) = commit_decisions(settings, deliverer.engine, "11")
    with Session(deliverer.engine) as session:  # taken by a worker that then died
        now = datetime.now(UTC)
        assert outbox.claim(session, action_id, now, now + timedelta(seconds=60)) is not None
    assert deliverer.deliver(action_id).status == "skipped"  # held by its lease
    assert sweep_once(deliverer.engine, lambda ids: None, settings) == []
    make_due(deliverer.engine, action_id)
    assert sweep_once(deliverer.engine, lambda ids: None, settings) == [action_id]
    assert deliverer.deliver(action_id).status == "delivered"
    assert action(deliverer.engine, action_id).attempts == 2


def test_dry_run_records_without_sending(
    outbox_env: Callable[..., tuple[Settings, Deliverer]], receiver: Receiver
) -> None:
    settings, deliverer = outbox_env(actions_dry_run=True)
    assert commit_decisions(settings, deliverer.engine, "3") == []
    with Session(deliverer.engine) as session:
        (row,) = session.scalars(select(ActionRow))
    assert row.status == "dry-run" and row.payload["ticket_id"] == "3"
    assert sweep_once(deliverer.engine, lambda ids: None, settings) == []
    assert deliverer.deliver(row.action_id).status == "skipped"
    assert receiver.all() == []


def test_a_redirect_is_dead_and_not_followed(
    outbox_env: Callable[..., tuple[Settings, Deliverer]], receiver: Receiver
) -> None:
    settings, deliverer = outbox_env()
    (action_id,) = commit_decisions(settings, deliverer.engine, "r")
    receiver.answer(Answer(308, {"Location": "http://127.0.0.1:1/elsewhere"}, b""))
    assert deliverer.deliver(action_id).status == "dead"
    assert "redirect to http://127.0.0.1:1/elsewhere" in (
        action(deliverer.engine, action_id).last_error or ""
    )
    assert len(receiver.all()) == 1


def test_listing_and_counts(outbox_env: Callable[..., tuple[Settings, Deliverer]]) -> None:
    settings, deliverer = outbox_env()
    commit_decisions(settings, deliverer.engine, "x", "y")
    with Session(deliverer.engine) as session:
        assert outbox.counts(session) == {("webhook", "pending"): 2}
        assert {r.ticket_id for r in outbox.listing(session, ["pending"], 10)} == {"x", "y"}


def test_a_refused_publish_fails_nothing_and_the_sweeper_publishes_later(
    outbox_env: Callable[..., tuple[Settings, Deliverer]],
) -> None:
    settings, deliverer = outbox_env()

    def broker_down(ids: list[str]) -> None:
        raise redis.ConnectionError("Connection refused")

    box = Outbox(settings, broker_down)
    values = [decision_values("p")]
    with Session(deliverer.engine) as session:
        db.save_batch(session, [], values)
        box.stage(session, values)
        session.commit()
    assert box.publish_committed() == 0  # logged, not raised: the decision is committed
    (row,) = [action(deliverer.engine, i) for i in pending_ids(deliverer.engine)]
    published: list[list[str]] = []
    assert sweep_once(deliverer.engine, published.append, settings) == []  # within its grace
    make_due(deliverer.engine, row.action_id)
    assert sweep_once(deliverer.engine, published.append, settings) == [row.action_id]
    assert published == [[row.action_id]]


def pending_ids(engine: Any) -> list[str]:
    with Session(engine) as session:
        return list(
            session.scalars(select(ActionRow.action_id).where(ActionRow.status == "pending"))
        )
