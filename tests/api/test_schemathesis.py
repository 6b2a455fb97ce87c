"""Generated requests against the OpenAPI document (schemathesis): no 5xx, and every answer
matches the documented statuses, content types and schemas. Hypothesis is derandomized (a
fixed seed per operation), so a failure reproduces; at least 1,000 requests in all."""

from __future__ import annotations

import schemathesis
from apiutil import small_settings
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app

EXAMPLES_PER_OPERATION = 200
REQUEST_MIN_COUNT = 1000


def test_generated_requests_conform(tmp_path):
    heap = tmp_path / "api.heap"
    app = create_app(small_settings(heap))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    sent_count = 0
    labels = []
    try:
        for result in schema.get_all_operations():
            op = result.ok()
            labels.append(op.label)

            @given(case=op.as_strategy())
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            def check(case):
                nonlocal sent_count
                sent_count += 1
                case.call_and_validate(checks=[not_a_server_error, status_code_conformance,
                                               content_type_conformance, response_schema_conformance])
            check()
    finally:
        schemathesis_asgi.shutdown_lifespans()     # the lifespan closes the store
    assert app.state.service.store.closed
    assert "PUT /v1/objects/{key}" in labels and "POST /v1/batch" in labels
    assert sent_count >= REQUEST_MIN_COUNT, f"only {sent_count} generated requests"
    print(f"schemathesis: {sent_count} generated requests over {len(labels)} operations (derandomized)")
