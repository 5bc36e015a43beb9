"""The event stream: each change it describes writes its event in the same transaction (a rollback takes
both away), payloads are typed and versioned, and the sequencer numbers events in an order a reader can
page through without a gap, PostgreSQL's concurrent commits included."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from provisioner import events
from provisioner.engine.runner import execute
from provisioner.lifecycle import Actor, process_event
from provisioner.models import AuditEvent, Event, Node, Operation
from provisioner.services import tenancy
from provisioner.services.reservations import release_reservation
from provisioner.states import NodeEvent, NodeState, OperationKind, OperationState
from provisioner.transactions import NotInTransaction
from tests.conftest import reserve, wait_for

ACTOR = Actor.system("test")


def _events(type: str) -> list[Event]:
    return list(Event.objects.filter(type=type).order_by("id"))


def test_every_transition_writes_exactly_one_event_beside_its_audit(inventory):
    node = Node.objects.get(name="node-h100-8x-01")
    before = Event.objects.count()
    process_event(node, NodeEvent.MAINTAIN, actor=ACTOR, reason="fan swap")
    process_event(node, NodeEvent.UNMAINTAIN, actor=ACTOR)
    assert Event.objects.count() == before + 2
    # all of the node's transitions, enrollment included: one event each, in the audit's order
    audits = list(AuditEvent.objects.filter(node=node, action="transition").order_by("id"))
    transitions = [e for e in _events(Event.Type.NODE_TRANSITION) if e.payload["node"]["id"] == node.pk]
    assert [(e.payload["from_state"], e.payload["to_state"]) for e in transitions] == [
        (a.from_state, a.to_state) for a in audits
    ]
    hold = transitions[-2]
    assert hold.version == events.PAYLOAD_VERSIONS[Event.Type.NODE_TRANSITION] == 1
    assert hold.organization_id is None  # an idle server belongs to no customer: a fleet event
    assert hold.payload["node"] == {"id": node.pk, "name": "node-h100-8x-01"}
    assert (hold.payload["from_state"], hold.payload["to_state"]) == (
        NodeState.AVAILABLE,
        NodeState.MAINTENANCE,
    )
    assert hold.payload["event"] == NodeEvent.MAINTAIN.value
    assert hold.payload["reason"] == "fan swap"
    assert hold.payload["actor"]["label"] == "test"
    assert transitions[-1].payload["from_state"] == NodeState.MAINTENANCE


def test_an_event_rolls_back_with_the_change_it_describes(inventory):
    node = Node.objects.get(name="node-h100-8x-01")
    before, audits = Event.objects.count(), AuditEvent.objects.filter(node=node).count()
    with pytest.raises(RuntimeError), transaction.atomic():
        process_event(node, NodeEvent.MAINTAIN, actor=ACTOR, reason="undone")
        assert Event.objects.count() == before + 1  # written with it
        raise RuntimeError("the caller's transaction fails after the transition")
    node.refresh_from_db()
    assert node.state == NodeState.AVAILABLE
    assert Event.objects.count() == before
    assert AuditEvent.objects.filter(node=node).count() == audits


def test_an_event_outside_a_transaction_is_refused():
    with pytest.raises(NotInTransaction):
        events.emit(Event.Type.NODE_TRANSITION, {})


def test_booking_and_releasing_write_reservation_events_for_the_organization(inventory):
    r = reserve(inventory)
    created = _events(Event.Type.RESERVATION_CREATED)
    assert len(created) == 1
    assert created[0].organization_id == inventory.acme.pk
    assert created[0].payload["reservation"]["id"] == r.pk
    assert created[0].payload["reservation"]["server_type"] == "h100-8x"
    assert created[0].payload["reservation"]["count"] == 1
    # the node it holds moved to reserved: a transition of acme's server, in acme's stream
    held = Node.objects.get(reservation=r)
    moved = [e for e in _events(Event.Type.NODE_TRANSITION) if e.payload["node"]["id"] == held.pk]
    assert [(e.payload["to_state"], e.organization_id) for e in moved] == [
        (NodeState.AVAILABLE, None),  # enrolled: the fleet's
        (NodeState.RESERVED, inventory.acme.pk),
    ]

    release_reservation(r, actor=Actor(user=inventory.owner, label="olivia"), reason="done")
    released = _events(Event.Type.RESERVATION_RELEASED)
    assert len(released) == 1 and released[0].organization_id == inventory.acme.pk
    assert released[0].payload["reason"] == "done"
    assert released[0].payload["actor"]["label"] == "olivia"


def test_a_provisioning_run_writes_its_burnin_verdict_and_operations_finishing(
    inventory, fake_hw_dir, transactional_db
):
    r = reserve(inventory)
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    state = execute(provision.pk, owner="w1")
    while state == OperationState.WAITING:  # a step parked on the outside world: look again
        state = execute(provision.pk, owner="w1")
    assert state == OperationState.SUCCEEDED
    node = Node.objects.get(reservation=r)
    assert node.state == NodeState.ACTIVE

    verdicts = _events(Event.Type.BURNIN_VERDICT)
    assert len(verdicts) == 1
    assert verdicts[0].organization_id == inventory.acme.pk
    assert verdicts[0].payload["passed"] is True
    assert verdicts[0].payload["node"]["name"] == node.name
    finished = _events(Event.Type.OPERATION_FINISHED)
    assert len(finished) == 1
    assert finished[0].payload["operation"]["id"] == provision.pk
    assert finished[0].payload["operation"]["state"] == OperationState.SUCCEEDED
    assert finished[0].payload["operation"]["kind"] == OperationKind.PROVISION
    # every transition the node went through, one event each, in the order the audit saw them
    audited = list(
        AuditEvent.objects.filter(node=node, action="transition")
        .order_by("id")
        .values_list("to_state", flat=True)
    )
    streamed = [
        e.payload["to_state"]
        for e in _events(Event.Type.NODE_TRANSITION)
        if e.payload["node"]["id"] == node.pk
    ]
    assert streamed == audited
    assert audited[-1] == NodeState.ACTIVE


def test_token_events_go_to_each_organization_of_the_user_and_never_carry_the_token(inventory):
    row, plaintext = tenancy.issue_token(
        inventory.owner, "ci", actor=Actor(user=inventory.owner, label="olivia")
    )
    tenancy.revoke_token(row, actor=Actor(user=inventory.owner, label="olivia"))
    tenancy.revoke_token(row, actor=Actor(user=inventory.owner, label="olivia"))  # no change, no event
    created = _events(Event.Type.API_TOKEN_CREATED)
    revoked = _events(Event.Type.API_TOKEN_REVOKED)
    assert [e.organization_id for e in created] == [inventory.acme.pk]
    assert [e.organization_id for e in revoked] == [inventory.acme.pk]
    assert created[0].payload["token"]["name"] == "ci"
    assert revoked[0].payload["token"]["revoked_at"] is not None
    assert plaintext not in str(created[0].payload) and row.token_hash not in str(created[0].payload)


def test_events_are_append_only(inventory):
    reserve(inventory)
    event = Event.objects.first()
    assert event is not None
    event.payload = {"forged": True}
    with pytest.raises(ValueError, match="append-only"):
        event.save()
    with pytest.raises(ValueError, match="append-only"):
        event.delete()


def test_the_sequencer_numbers_in_order_and_each_event_once(inventory, transactional_db):
    reserve(inventory)
    reserve(inventory, org=inventory.other, user=inventory.outsider, key=inventory.other_key, label="o")
    written = list(Event.objects.order_by("id").values_list("id", flat=True))
    assert len(written) >= 4
    numbered = 0
    while n := events.sequence_committed(batch=3):
        numbered += n
    assert numbered == len(written)
    assert events.sequence_committed() == 0
    # one number each, consecutive, in the order they were written (these transactions ran one after another)
    by_id = list(Event.objects.order_by("id").values_list("sequence", flat=True))
    assert sorted(by_id) == by_id
    assert len(set(by_id)) == len(by_id)
    if connection.vendor == "postgresql":
        assert by_id == list(range(1, len(by_id) + 1))
    else:
        assert by_id == written


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite's writers take turns: its ids are drawn in commit order"
)
def test_an_event_that_commits_after_a_later_one_is_numbered_after_it_and_not_skipped(
    inventory, transactional_db
):
    """Transaction A draws its event's id first and commits last. A reader in between must not pass A's
    event by: the sequencer numbers B's event only once A has ended, then A's and B's in turn."""
    a_inserted, b_committed, a_may_commit = threading.Event(), threading.Event(), threading.Event()
    ids: dict[str, int] = {}

    def transaction_a() -> None:
        try:
            with transaction.atomic():
                ids["a"] = events.emit(Event.Type.NODE_TRANSITION, {"who": "a"}).pk
                a_inserted.set()
                assert a_may_commit.wait(30)
        finally:
            connection.close()

    def transaction_b() -> None:
        try:
            assert a_inserted.wait(30)
            with transaction.atomic():
                ids["b"] = events.emit(Event.Type.NODE_TRANSITION, {"who": "b"}).pk
        finally:
            connection.close()
            b_committed.set()

    a, b = threading.Thread(target=transaction_a), threading.Thread(target=transaction_b)
    a.start()
    b.start()
    try:
        assert b_committed.wait(30)
        assert ids["a"] < ids["b"]  # A drew first ...
        assert Event.objects.filter(pk=ids["b"]).exists()  # ... B committed first ...
        events.sequence_committed()
        # ... and B's event waits for A, which is still running: a reader sees neither yet
        assert not Event.objects.sequenced().filter(pk__in=ids.values()).exists()
    finally:
        a_may_commit.set()
        a.join(30)
        b.join(30)
    # Both ended; numbering waits only for transactions older than theirs (on a shared server, maybe
    # someone else's), so it may take a moment.
    wait_for(
        lambda: events.sequence_committed() >= 0 and not Event.objects.filter(sequence__isnull=True).exists(),
        timeout=30,
        message="both events numbered",
    )
    numbered = dict(Event.objects.filter(pk__in=ids.values()).values_list("pk", "sequence"))
    assert None not in numbered.values()
    assert numbered[ids["a"]] < numbered[ids["b"]]
