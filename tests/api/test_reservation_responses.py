"""The create, release and extend endpoints answer with exactly what GET /reservations/<id> shows, in few
queries: they are the hot path of the API (bench/api_load.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from provisioner.models import SSHKey, Step
from provisioner.states import StepState
from tests.api.test_api_flows import V1, api, reserve_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def second_key(inventory):
    # Named to sort before "laptop": the answer lists key ids in the order of the keys' names.
    return SSHKey.objects.create(
        organization=inventory.acme,
        name="a-desktop",
        public_key=inventory.key.public_key.replace("acme@test", "desktop@test"),
        fingerprint="SHA256:desktop-test-fingerprint",
    )


def test_create_answers_what_the_reservation_endpoint_shows(inventory, second_key):
    client = api(inventory.owner)
    created = client.post(f"{V1}/reservations", reserve_body(count=2, ssh_keys=["laptop", "a-desktop"]))
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["state"] == "provisioning" and len(body["servers"]) == 2 and len(body["operations"]) == 2
    assert body["ssh_keys"] == [second_key.pk, inventory.key.pk]
    assert body == client.get(f"{V1}/reservations/{body['id']}").json()

    later = timezone.now() + dt.timedelta(days=1)
    future = client.post(
        f"{V1}/reservations",
        reserve_body(starts_at=later.isoformat(), ends_at=(later + dt.timedelta(hours=1)).isoformat()),
    ).json()
    assert future["state"] == "scheduled" and future["servers"] == [] and future["operations"] == []
    assert future == client.get(f"{V1}/reservations/{future['id']}").json()


def test_release_and_extend_answer_what_the_reservation_endpoint_shows(inventory):
    client = api(inventory.owner)
    ends = timezone.now() + dt.timedelta(hours=2)
    r = client.post(f"{V1}/reservations", reserve_body(ends_at=ends.isoformat(), name="train")).json()
    # some progress, so that "percent" is not trivially 0
    steps = Step.objects.filter(operation_id=r["operations"][0]["id"]).order_by("index")
    Step.objects.filter(pk__in=[s.pk for s in steps[:2]]).update(state=StepState.SUCCEEDED)

    extended = client.post(
        f"{V1}/reservations/{r['id']}/extend", {"ends_at": (ends + dt.timedelta(hours=1)).isoformat()}
    )
    assert extended.status_code == 200, extended.content
    assert 0 < extended.json()["operations"][0]["percent"] < 100
    assert extended.json() == client.get(f"{V1}/reservations/{r['id']}").json()

    released = client.post(f"{V1}/reservations/{r['id']}/release")
    assert released.status_code == 202, released.content
    body = released.json()
    assert body["state"] == "releasing" and {op["kind"] for op in body["operations"]} == {
        "provision",
        "release",
    }
    assert body == client.get(f"{V1}/reservations/{r['id']}").json()
    again = client.post(f"{V1}/reservations/{r['id']}/release")
    assert again.status_code == 202 and again.json() == body


def test_releasing_a_future_window_settles_it_at_once(inventory):
    client = api(inventory.owner)
    later = timezone.now() + dt.timedelta(days=1)
    r = client.post(f"{V1}/reservations", reserve_body(starts_at=later.isoformat())).json()
    released = client.post(f"{V1}/reservations/{r['id']}/release").json()
    assert released["state"] == "released" and released["operations"] == []
    assert released == client.get(f"{V1}/reservations/{r['id']}").json()


def test_reserve_and_release_stay_within_their_query_budget(inventory, django_assert_max_num_queries):
    """Each query is a round trip and ORM work on every call; these budgets catch one added by accident."""
    client = api(inventory.owner)
    client.get(f"{V1}/reservations")  # the token's "last used" write happens here, not below
    later = timezone.now() + dt.timedelta(days=1)
    # 16: one of them reads the type's bookable nodes with their BMC credentials, validated before the lock,
    # and whether any of them is at a network-managed site (issue 18: then the booking allocates tenant
    # networks); one writes the reservation.created event (issue 22: each event is one INSERT beside its
    # audit row)
    with django_assert_max_num_queries(16):
        future = client.post(f"{V1}/reservations", reserve_body(starts_at=later.isoformat())).json()
    # a window starting now also locks the reservation (1) that a release may have ended meanwhile, moves
    # its nodes together (5 queries in process_events whatever their number), creates their operations and
    # steps (2) and queues them on their sites' queues (known from the read of the nodes: no query here;
    # the tasks are inserted in one statement after commit); +3 events (created, 2 transitions); +2 since the warm
    # pool (issue 21): starting the booked servers tells a warm one of the asked image (personalized) from
    # the others (deployed), which reads them with their state and image
    with django_assert_max_num_queries(32):
        now = client.post(f"{V1}/reservations", reserve_body(count=2)).json()
    # 13 for a window not started: the token, the reservation (is it the caller's to change), under the lock
    # the reservation again with its allocations, the writes, the reservation.released event; the tenant
    # networks: the attachments of servers that never joined theirs (read, ended), the answer's private
    # networks (1); no servers, operations or spend to read back (Reservation.not_started)
    with django_assert_max_num_queries(13):
        client.post(f"{V1}/reservations/{future['id']}/release")
    # the provisions it cancels are read (1) and woken if parked (2); the nodes move together (5 queries in
    # process_events), their release operations are created together (2), their queues known; +3 events;
    # +1 the spend (no server was handed over: no prices to read); its servers and operations (2); +2
    # tenant networks as above
    with django_assert_max_num_queries(29):
        client.post(f"{V1}/reservations/{now['id']}/release")
