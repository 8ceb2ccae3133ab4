"""Property-based run of the OpenAPI schema against the in-process app: no request may cause a 500,
and responses must match the documented schemas, status codes and content types."""

from __future__ import annotations

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, settings

from api.app import create_app

torch.set_num_threads(1)


@pytest.fixture
def api_schema(api_store):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(api_store.settings))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_from_the_schema_causes_a_server_error(case):
    case.call_and_validate()
