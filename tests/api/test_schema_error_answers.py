"""The OpenAPI schema documents the error answers the API's machinery gives (webapp/api/schema.py's
NeocloudAutoSchema), each in the one error shape, on exactly the operations they apply to. schemathesis
(test_schema_fuzz.py) holds the live API to it; this says what it promises, fast."""

from __future__ import annotations

from typing import Any

import pytest
from drf_spectacular.generators import SchemaGenerator

ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


@pytest.fixture(scope="module")
def operations() -> dict[str, dict[str, Any]]:
    spec = SchemaGenerator().get_schema(request=None, public=True)
    return {
        f"{method.upper()} {path}": operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if path.startswith("/api/v1/")
    }


def test_every_error_answer_has_the_one_error_shape(operations):
    for label, operation in operations.items():
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert response.get("content") == ERROR, f"{label} {status}"


def test_every_operation_documents_a_missing_token_and_an_unacceptable_accept_header(operations):
    assert len(operations) >= 40
    for label, operation in operations.items():
        assert {"401", "406"} <= set(operation["responses"]), label


# Operations without ids in their path whose body names rows (a server type, an organization): a 404 if none.
NAMES_ROWS_IN_ITS_BODY = {"POST /api/v1/reservations/", "POST /api/v1/ssh-keys/", "POST /api/v1/webhooks/"}


def test_operations_on_one_row_document_404_and_those_with_a_body_400_413_415(operations):
    for label, operation in operations.items():
        codes = set(operation["responses"])
        assert ("404" in codes) == ("{" in label or label in NAMES_ROWS_IN_ITS_BODY), label
        if "requestBody" in operation:
            assert {"400", "413", "415"} <= codes, label
        else:
            assert not {"413", "415"} & codes, label


def test_the_operator_api_documents_403_and_customer_reads_do_not(operations):
    for label, operation in operations.items():
        if "/api/v1/admin/" in label:
            assert "403" in operation["responses"], label
            assert "operators (staff) only" in operation["responses"]["403"]["description"], label
    assert "403" not in operations["GET /api/v1/reservations/"]["responses"]
    assert "403" not in operations["GET /api/v1/organizations/{id}/"]["responses"]
    owners_only = operations["POST /api/v1/organizations/{id}/members/"]["responses"]["403"]["description"]
    assert "only an owner" in owners_only
