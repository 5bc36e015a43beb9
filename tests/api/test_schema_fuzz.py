"""schemathesis against a live server: every operation of the OpenAPI schema (/api/schema/), called with
generated requests, valid and invalid, as a customer and as an operator. No answer is a server error, every
answer's status is one the schema documents for that operation, and every body validates against the
schema of its status. Neither run changes anything of another organization.

Bounded and repeatable: MAX_EXAMPLES requests per operation and mode, derandomized (a fixed seed), no
example database; a failure is reported with the request that caused it (as curl) rather than shrunk."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from provisioner.models import ApiToken, Membership, Organization, Reservation, SSHKey
from tests.conftest import reserve

pytestmark = [pytest.mark.slow]

MAX_EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def other_organization(org: Organization) -> dict[str, Any]:
    """Everything of ``org`` a customer or operator API call could change, as plain values."""
    return {
        "organization": Organization.objects.filter(pk=org.pk).values().get(),
        "members": sorted(Membership.objects.filter(organization=org).values_list("user_id", "role")),
        "ssh_keys": list(SSHKey.objects.filter(organization=org).order_by("pk").values()),
        "tokens": list(ApiToken.objects.filter(user__memberships__organization=org).order_by("pk").values()),
        "reservations": [
            {
                **row,
                "ssh_keys": sorted(
                    Reservation.objects.get(pk=row["id"]).ssh_keys.values_list("pk", flat=True)
                ),
            }
            for row in Reservation.objects.filter(organization=org).order_by("pk").values()
        ],
    }


@pytest.fixture
def fuzz_world(transactional_db, inventory, live_server):
    """The inventory's two organizations, each with an open reservation, a future one and a token."""
    inv = inventory
    now = dt.datetime.now(dt.UTC)
    reserve(inv, ends_at=now + dt.timedelta(hours=4))
    reserve(
        inv, starts_at=now + dt.timedelta(days=2), ends_at=now + dt.timedelta(days=3), server_type=inv.a100
    )
    reserve(
        inv,
        org=inv.other,
        user=inv.outsider,
        key=inv.other_key,
        label="oscar",
        ends_at=now + dt.timedelta(hours=4),
    )
    reserve(
        inv,
        org=inv.other,
        user=inv.outsider,
        key=inv.other_key,
        label="oscar",
        server_type=inv.a100,
        starts_at=now + dt.timedelta(days=2),
        ends_at=now + dt.timedelta(days=3),
    )
    ApiToken.issue(inv.outsider, "oscar's script")
    return inv


def described(case: Any, response: Any, failure: Any) -> str:
    """One failure, with the request that found it as a curl command (the token shown as [Filtered])."""
    curl = case.as_curl_command(headers=dict(response.request.headers))
    return (
        f"{case.operation.label} -> {response.status_code}: {failure.title}: {failure.message[:500]}\n"
        f"    {curl[:800]}\n    answered: {response.text[:300]}"
    )


def fuzz(base_url: str, token: str) -> tuple[int, list[str]]:
    """Every operation of the live server's schema, MAX_EXAMPLES generated requests per mode, with ``token``:
    (requests made, failures found)."""
    auth = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{base_url}/api/schema/", headers=auth)
    session = requests.Session()
    calls = 0
    failures: list[str] = []

    def run(operation: Any, mode: GenerationMode) -> None:
        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def call(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=base_url, session=session, headers=auth)
            try:
                case.validate_response(response, checks=CHECKS, headers=auth)
            except FailureGroup as group:
                failures.extend(described(case, response, failure) for failure in group.exceptions)

        call()

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in MODES:
            run(operation, mode)
    return calls, failures


@pytest.mark.parametrize("persona", ["owner", "operator"])
def test_generated_requests_get_documented_answers_and_leave_other_organizations_alone(
    fuzz_world, live_server, persona
):
    inv = fuzz_world
    before = other_organization(inv.other)
    started = time.monotonic()
    calls, failures = fuzz(live_server.url, ApiToken.issue(getattr(inv, persona), "fuzz")[1])
    took = time.monotonic() - started
    print(f"{persona}: {calls} requests in {took:.1f} s, {len(failures)} failures")
    import pathlib

    pathlib.Path(f"/tmp/fuzz-{persona}.txt").write_text("\n".join(failures))
    assert failures == [], "\n".join(failures[:20]) + f"\n... {len(failures)} failures in all"
    assert other_organization(inv.other) == before
