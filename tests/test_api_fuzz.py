"""Property-based fuzzing of the published OpenAPI surface: no generated input gets a 5xx.

Schemathesis generates the requests from /openapi.json (valid and invalid bodies, headers,
paths, queries) and sends them to the real app on real Redis and SQLite. Hypothesis drives
it directly: schemathesis's pytest plugin does not run on pytest 9.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error

from config.settings import Settings
from producer.api import create_api

ALL = {"Authorization": "Bearer fuzz"}


@pytest.fixture
def api_schema(
    make_settings: Callable[..., Settings], sqlite_url: str, queue_name: str
) -> schemathesis.BaseSchema:
    settings = make_settings(
        database_url=sqlite_url,
        queue=queue_name,
        webhook_secrets={"github": ["test-secret"], "freshdesk": ["token"]},
        api_tokens={"fuzz": ["ingest", "read", "feedback"]},
    )
    return schemathesis.openapi.from_asgi("/openapi.json", create_api(settings))


def test_no_server_error_on_any_generated_input(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12  # every route of the service is in the published document
    for operation in operations:

        @given(case=operation.as_strategy())
        @hsettings(
            max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def fuzz(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=ALL, checks=[not_a_server_error])

        fuzz()
