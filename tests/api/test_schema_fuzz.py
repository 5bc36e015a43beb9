"""schemathesis against a live server: every operation of the OpenAPI schema (/api/schema/), called with
generated requests as a customer (an owner of Acme) and, separately, as an operator. No answer is a server
error, every answer's status is one the schema documents for that operation, and every body validates against
the schema of its status. Neither run changes anything of the other organization, Other Labs.

Each operation is called MAX_EXAMPLES times with valid data and MAX_EXAMPLES times with invalid data (schemathesis'
positive and negative modes), its path ids generated too; an operation on one row (a path with ids) is called
MAX_EXAMPLES times more with the ids of Acme's rows (so that real rows are read, extended, released, reimaged)
and again with Other Labs' rows (which these callers may read at most: the operator's oversight). The operator
acts on Other Labs' rows through the customer API only; its admin API acts on Acme's, as operators do for a
customer (tests/api/test_operators_act_as_operators.py covers what they may do to whom).

Bounded and repeatable: derandomized (a fixed seed), no example database; a failure is reported with the
request that caused it (as curl, the token filtered) rather than shrunk."""

from __future__ import annotations

import collections
import datetime as dt
import re
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

from provisioner.lifecycle import Actor
from provisioner.models import (
    ApiToken,
    AuditEvent,
    Membership,
    Node,
    Operation,
    Organization,
    Reservation,
    SSHKey,
    WebhookEndpoint,
)
from provisioner.services import rollouts as rollout_service
from provisioner.services import webhooks as webhook_service
from tests.conftest import reserve

pytestmark = [pytest.mark.slow]

MAX_EXAMPLES = 12
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


def organization_state(org: Organization) -> dict[str, Any]:
    """Everything of ``org`` that an API call could change, as plain values."""
    return {
        "organization": Organization.objects.filter(pk=org.pk).values().get(),
        "members": sorted(Membership.objects.filter(organization=org).values_list("user_id", "role")),
        "ssh_keys": list(SSHKey.objects.filter(organization=org).order_by("pk").values()),
        "tokens": list(ApiToken.objects.filter(user__memberships__organization=org).order_by("pk").values()),
        "reservations": [
            {
                **row,
                "ssh_keys": sorted(
                    SSHKey.objects.filter(reservations=row["id"]).values_list("pk", flat=True)
                ),
            }
            for row in Reservation.objects.filter(organization=org).order_by("pk").values()
        ],
        "servers": list(
            Node.objects.filter(reservation__organization=org).order_by("pk").values("pk", "state")
        ),
        "webhooks": list(
            WebhookEndpoint.objects.filter(organization=org)
            .order_by("pk")
            .values("pk", "url", "active", "event_types", "description", "secret_encrypted")
        ),
    }


def rows_of(org: Organization, member: Any, token: ApiToken) -> dict[str, Any]:
    """Path ids of ``org``'s rows, by the collection a path names (as the schema's templates do)."""
    reservation = Reservation.objects.filter(organization=org).order_by("pk").first()
    assert reservation is not None
    node = Node.objects.filter(reservation=reservation).first()
    return {
        "images": "ubuntu-24.04",
        "server-types": "h100-8x",
        "ssh-keys": SSHKey.objects.filter(organization=org).values_list("pk", flat=True).first(),
        "reservations": reservation.pk,
        "servers": node.pk if node else 0,
        "operations": Operation.objects.filter(reservation=reservation).values_list("pk", flat=True).first(),
        "organizations": org.pk,
        "members": member.pk,
        "tokens": token.pk,
        "audit-events": AuditEvent.objects.filter(organization=org).values_list("pk", flat=True).first(),
        "admin/nodes": node.pk if node else 0,
        "admin/reservations": reservation.pk,
        "webhooks": WebhookEndpoint.objects.filter(organization=org).values_list("pk", flat=True).first(),
    }


@pytest.fixture
def fuzz_world(transactional_db, inventory, live_server) -> dict[str, Any]:
    """The inventory's two organizations, Acme and Other Labs, each with a reservation now and one in two days,
    and a rollout reimaging an idle server."""
    inv = inventory
    now = dt.datetime.now(dt.UTC)
    for org, user, key in [(inv.acme, inv.owner, inv.key), (inv.other, inv.outsider, inv.other_key)]:
        mine = {"org": org, "user": user, "key": key, "label": user.username}
        reserve(inv, ends_at=now + dt.timedelta(hours=4), **mine)
        days = {"starts_at": now + dt.timedelta(days=2), "ends_at": now + dt.timedelta(days=3)}
        reserve(inv, server_type=inv.a100, **days, **mine)
        webhook_service.create_endpoint(org, "https://hooks.example.com/neocloud", actor=Actor.system("t"))
    idle = Node.objects.filter(reservation=None, server_type=inv.h100).order_by("pk").first()
    rollout = rollout_service.start_rollout([idle], actor=Actor.system("t"), max_parallel=1, failure_budget=0)
    return {"inv": inv, "rollout": rollout.pk}


class Fuzzer:
    """Calls a live server's operations with generated requests and one caller's token; collects what the
    checks find, and every status answered."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        # A connection per request: Django's live server writes an answer's headers and body apart, so on a
        # kept-alive connection each answer waited ~40 ms for the client's delayed ACK (10x the request).
        self.headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
        self.schema = schemathesis.openapi.from_url(f"{base_url}/api/schema/", headers=self.headers)
        self.session = requests.Session()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.failures: list[str] = []

    def operations(self) -> list[Any]:
        return [result.ok() for result in self.schema.get_all_operations()]

    def run(
        self, operation: Any, mode: GenerationMode, path_parameters: dict[str, Any] | None = None
    ) -> None:
        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
        def call(case: Any) -> None:
            response = case.call(base_url=self.base_url, session=self.session, headers=self.headers)
            self.statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=self.headers)
            except FailureGroup as group:
                self.failures.extend(self.described(case, response, failure) for failure in group.exceptions)

        call()

    @staticmethod
    def described(case: Any, response: Any, failure: Any) -> str:
        """One failure, with the request that found it as a curl command (the token shown as [Filtered])."""
        curl = case.as_curl_command(headers=dict(response.request.headers))
        return (
            f"{case.operation.label} -> {response.status_code}: {failure.title}: {failure.message[:500]}\n"
            f"    {curl[:800]}\n    answered: {response.text[:300]}"
        )


def path_ids(template: str, rows: dict[str, Any]) -> dict[str, Any]:
    """``template``'s path parameters filled from ``rows`` (rows_of): /api/v1/<collection>/{id}/... takes the
    collection's row; {user_id} (organizations' members) the member's; {month} (statements) this month."""
    collection = re.match(r"/api/v1/(.+?)/\{", template)
    assert collection, template
    names = re.findall(r"\{(\w+)\}", template)
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    return {
        name: month if name == "month" else rows["members" if name == "user_id" else collection.group(1)]
        for name in names
    }


@pytest.mark.parametrize("persona", ["owner", "operator"])
def test_generated_requests_get_documented_answers_and_leave_other_organizations_alone(
    fuzz_world, live_server, persona
):
    inv = fuzz_world["inv"]
    caller = getattr(inv, persona)
    spare_token = ApiToken.issue(caller, "spare")[0]  # the one the calls may revoke, not the one they use
    acme = {
        **rows_of(inv.acme, inv.member, spare_token),
        "admin/reimage-rollouts": fuzz_world["rollout"],
        "admin/warm-pools": "h100-8x",
    }
    other = rows_of(inv.other, inv.outsider, ApiToken.issue(inv.outsider, "oscar's script")[0])
    fuzzer = Fuzzer(live_server.url, ApiToken.issue(caller, "fuzz")[1])
    before = organization_state(inv.other)
    started = time.monotonic()

    for operation in fuzzer.operations():
        for mode in [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]:
            fuzzer.run(operation, mode)
        if "{" in operation.path:
            fuzzer.run(operation, GenerationMode.POSITIVE, path_ids(operation.path, acme))
            # Operators act on another organization's rows through the admin API, by design: there they
            # act on Acme's (above), here on Other Labs' through the customer API, where they may only read.
            if not operation.path.startswith("/api/v1/admin/"):
                fuzzer.run(operation, GenerationMode.POSITIVE, path_ids(operation.path, other))

    took = time.monotonic() - started
    print(
        f"\n{persona}: {fuzzer.statuses.total()} requests in {took:.1f} s, {dict(sorted(fuzzer.statuses.items()))}"
    )
    assert fuzzer.failures == [], f"{len(fuzzer.failures)} failures:\n" + "\n".join(fuzzer.failures[:30])
    # The token worked throughout (no call revoked it), and real rows were found and changed.
    assert fuzzer.statuses[401] == 0 and fuzzer.statuses[200] and fuzzer.statuses[201] + fuzzer.statuses[202]
    assert organization_state(inv.other) == before
