"""Filters take only ids the caller may see: another organization's row answers like a row that does not
exist, so guessing ids through ?reservation= or ?operation= tells nothing about other customers."""

from __future__ import annotations

from provisioner.models import Operation
from tests.api.test_api_bad_input import api, reserve_body

V1 = "/api/v1"


def test_filtering_by_another_organizations_reservation_or_operation_answers_as_for_none(inventory):
    theirs = api(inventory.outsider).post(f"{V1}/reservations", reserve_body(ssh_keys=["ws"]), format="json")
    assert theirs.status_code == 201, theirs.content
    rid = theirs.json()["id"]
    op = Operation.objects.filter(reservation_id=rid).values_list("pk", flat=True)[0]
    nobody = rid + op + 1000
    client = api(inventory.owner)
    for path, param, their_id in (
        ("operations", "reservation", rid),
        ("audit-events", "reservation", rid),
        ("audit-events", "operation", op),
    ):
        absent = client.get(f"{V1}/{path}?{param}={nobody}")
        foreign = client.get(f"{V1}/{path}?{param}={their_id}")
        assert absent.status_code == 400, absent.content
        assert (foreign.status_code, foreign.json()) == (absent.status_code, absent.json()), path
    # Their own ids still filter, for them and for operators.
    for user in (inventory.outsider, inventory.operator):
        mine = api(user).get(f"{V1}/operations?reservation={rid}")
        assert mine.status_code == 200 and [o["id"] for o in mine.json()["results"]] == [op]
        events = api(user).get(f"{V1}/audit-events?operation={op}")
        assert events.status_code == 200, events.content
