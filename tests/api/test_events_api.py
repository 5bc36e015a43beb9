"""GET /api/v1/events?after=&limit=: each organization reads its own events only, operators read every
event through /api/v1/admin/events, and paging by cursor returns each event once, in order, without a gap."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from provisioner import events
from provisioner.lifecycle import Actor
from provisioner.models import ApiToken, Event
from provisioner.services.reservations import release_reservation
from tests.conftest import reserve, wait_for

V1 = "/api/v1"
# Committed data: on PostgreSQL events are numbered only once their transaction has ended, and a test
# inside one transaction (the db fixture) would never see its own.
pytestmark = pytest.mark.usefixtures("transactional_db")


def settle() -> None:
    """Wait until every committed event is numbered: on a PostgreSQL server shared with other work, a
    transaction older than ours (someone else's) holds numbering back until it ends."""
    wait_for(
        lambda: events.sequence_committed() >= 0 and not Event.objects.filter(sequence__isnull=True).exists(),
        timeout=30,
        message="every event numbered",
    )


def api(user) -> APIClient:
    client = APIClient()
    client.raise_request_exception = False
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


def read_all(client: APIClient, path: str, limit: int) -> tuple[list[dict], int]:
    """Every event, page by page; returns them and the number of requests."""
    seen: list[dict] = []
    after, requests = 0, 0
    while True:
        response = client.get(f"{path}?after={after}&limit={limit}")
        requests += 1
        assert response.status_code == 200, response.content
        body = response.json()
        seen += body["results"]
        assert body["next_after"] == (body["results"][-1]["id"] if body["results"] else after)
        after = body["next_after"]
        if not body["has_more"]:
            return seen, requests


@pytest.fixture
def two_customers(inventory):
    inv = inventory
    acme = reserve(inv)
    other = reserve(inv, org=inv.other, user=inv.outsider, key=inv.other_key, label="oscar")
    release_reservation(acme, actor=Actor(user=inv.owner, label="olivia"), reason="done")
    settle()
    return acme, other


def test_an_organization_sees_its_own_events_and_never_another_s(inventory, two_customers):
    acme, other = two_customers
    mine, _ = read_all(api(inventory.owner), f"{V1}/events", limit=100)
    theirs, _ = read_all(api(inventory.outsider), f"{V1}/events", limit=100)
    assert mine and theirs
    assert {e["organization"] for e in mine} == {"acme"}
    assert {e["organization"] for e in theirs} == {"other"}
    # exactly the rows of each organization, nothing of the fleet's (enrollment) or of the other
    assert [e["id"] for e in mine] == list(
        Event.objects.filter(organization=inventory.acme)
        .order_by("sequence")
        .values_list("sequence", flat=True)
    )
    types = [e["type"] for e in mine]
    assert types.count("reservation.created") == 1 and types.count("reservation.released") == 1
    created = next(e for e in mine if e["type"] == "reservation.created")
    assert created["version"] == 1 and created["payload"]["reservation"]["id"] == acme.pk
    assert all(
        e["payload"]["reservation"]["id"] != other.pk for e in mine if e["type"].startswith("reservation.")
    )
    # a member of acme reads the same stream as its owner
    assert [e["id"] for e in read_all(api(inventory.member), f"{V1}/events", limit=100)[0]] == [
        e["id"] for e in mine
    ]


def test_operators_read_every_event_fleet_ones_included_through_admin(inventory, two_customers):
    operator = api(inventory.operator)
    everything, _ = read_all(operator, f"{V1}/admin/events", limit=500)
    assert [e["id"] for e in everything] == list(
        Event.objects.order_by("sequence").values_list("sequence", flat=True)
    )
    assert {e["organization"] for e in everything} == {"acme", "other", None}
    fleet, _ = read_all(operator, f"{V1}/admin/events?organization=none&type=node.transition", limit=500)
    assert fleet and all(e["organization"] is None and e["type"] == "node.transition" for e in fleet)
    # customers are refused the operators' stream
    assert api(inventory.owner).get(f"{V1}/admin/events").status_code == 403


def test_the_cursor_pages_without_gaps_or_repeats(inventory, two_customers):
    client = api(inventory.operator)
    whole, _ = read_all(client, f"{V1}/admin/events", limit=500)
    paged, requests = read_all(client, f"{V1}/admin/events", limit=3)
    assert len(whole) > 6 and requests >= len(whole) // 3
    assert paged == whole
    ids = [e["id"] for e in paged]
    assert ids == sorted(set(ids))  # increasing: each once
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # consecutive: no gap
    # a reader at the end gets nothing, its cursor unchanged; a new event then comes after it
    last = ids[-1]
    body = client.get(f"{V1}/admin/events?after={last}").json()
    assert body == {"results": [], "next_after": last, "has_more": False}
    reserve(inventory, server_type=inventory.a100)
    settle()
    body = client.get(f"{V1}/admin/events?after={last}").json()
    assert body["results"] and body["results"][0]["id"] == last + 1


@pytest.mark.parametrize(
    "query, field",
    [("after=soon", "after"), ("after=-1", "after"), ("type=node.moved", "type")],
)
def test_a_bad_cursor_or_type_is_a_clear_400(inventory, query, field):
    response = api(inventory.owner).get(f"{V1}/events?{query}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert field in error["details"] and error["message"]


def test_limits_are_clamped_as_on_the_other_lists(inventory, two_customers):
    client = api(inventory.operator)
    total = Event.objects.count()
    assert total > 2
    huge = "100000000000000000000000"  # past a 64-bit number: never a 500
    assert len(client.get(f"{V1}/admin/events?limit={huge}").json()["results"]) == min(500, total)
    assert len(client.get(f"{V1}/admin/events?limit=2").json()["results"]) == 2
    for fallback in ("0", "-3", "many"):
        assert len(client.get(f"{V1}/admin/events?limit={fallback}").json()["results"]) == min(100, total)
    body = client.get(f"{V1}/admin/events?after={huge}").json()
    assert body["results"] == [] and body["has_more"] is False
