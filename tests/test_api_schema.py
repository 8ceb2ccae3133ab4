"""Property-based run of the OpenAPI schema against the in-process app (schemathesis, ASGI).

For every documented operation, schema-conforming (positive) and, where the operation takes
input, schema-violating (negative) requests are generated. No request may cause a 500, and
responses must match the documented schemas, status codes, content types and auth declarations
(schemathesis' default checks), with one exception: where validity depends on the stored data, a
schema-valid request may be rejected (415/422), because no static schema can say it: uploads must
be decodable audio (and prototype names not reserved), a query vector must have the store's
dimension, and a stats breakdown must name a stored attribute.

Schemathesis' own pytest plugin (``from_fixture``) breaks on pytest 9, so each operation's
strategy is driven with Hypothesis' ``@given`` inside an ordinary parametrized test.
"""

from __future__ import annotations

import pytest
import schemathesis
import torch
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation.modes import GenerationMode

from api.app import create_app
from indexer.settings import get_settings

torch.set_num_threads(1)

# The operations, from the schema itself (building it opens no store).
_PATHS = create_app(get_settings(store_dir="/nonexistent-degsearch-store")).openapi()["paths"]
DATA_DEPENDENT = {("POST", "/v1/search"), ("GET", "/v1/stats")}
CASES = []
for _path, _item in _PATHS.items():
    for _method, _op in _item.items():
        _modes = [GenerationMode.POSITIVE]
        if _op.get("parameters") or _op.get("requestBody"):
            _modes.append(GenerationMode.NEGATIVE)
        for _mode in _modes:
            CASES.append(pytest.param(_method.upper(), _path, _mode, id=f"{_method.upper()} {_path} {_mode}"))


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_generated_request_causes_a_server_error(api_store, method, path, mode):
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(api_store.settings))
    operation = schema[path][method]
    is_upload = "multipart/form-data" in _PATHS[path][method.lower()].get("requestBody", {}).get("content", {})
    excluded = [positive_data_acceptance] if is_upload or (method, path) in DATA_DEPENDENT else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def run(case):
        case.call_and_validate(excluded_checks=excluded)

    run()
