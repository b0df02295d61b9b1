"""schemathesis against Herald's own OpenAPI document for the admin API (agents.admin.openapi):
for every operation, generated requests (valid and not) as the administrator get no 500, and
every answer matches the document (status codes, content type, body schema). A real worker
on the real broker answers; the document is the one the worker serves."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.herald import HeraldDeployment

ADMIN_KEY = "herald-admin-key"
ADMIN_SECRET = "admin-Secret-for-schemathesis-3e9a"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def admin_worker(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    herald_ = HeraldDeployment(
        tmp_path_factory.mktemp("admin-openapi"),
        broker.bootstrap,
        handlers=[],
        settings={"admin": {"keyId": ADMIN_KEY, "keySecret": ADMIN_SECRET}},
    )
    try:
        yield herald_.start_worker()
    finally:
        herald_.stop()


@pytest.fixture(scope="module")
def token(admin_worker: Any) -> str:
    request = urllib.request.Request(
        f"{admin_worker.web_url}/api/token",
        data=json.dumps({"keyId": ADMIN_KEY, "keySecret": ADMIN_SECRET}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["token"]


@pytest.fixture(scope="module")
def api_schema(admin_worker: Any) -> Any:
    with urllib.request.urlopen(f"{admin_worker.web_url}/api/openapi.json", timeout=10) as r:
        document = json.loads(r.read())
    return schemathesis.openapi.from_dict(document)


def test_every_answer_matches_the_document(api_schema: Any, admin_worker: Any, token: str) -> None:
    """Each operation in turn, with hypothesis driving schemathesis' strategies (its pytest
    plugin does not run under pytest 9 yet); the failures of every operation are listed."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 30
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            case.call_and_validate(
                base_url=admin_worker.web_url,
                headers={"X-Authorization": token},
                checks=CHECKS,
                timeout=30,
            )

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - collected, every operation is tried
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
    assert admin_worker.running
