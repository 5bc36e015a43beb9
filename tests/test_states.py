"""The lifecycle table, exhaustively: every (state, event) pair is either in the table or refused."""

from __future__ import annotations

import itertools

import pytest

from provisioner.errors import IllegalTransition
from provisioner.lifecycle import Actor, process_event
from provisioner.models import AuditEvent
from provisioner.states import (
    STABLE_STATES,
    TRANSIENT_STATES,
    TRANSITIONS,
    NodeEvent,
    NodeState,
    next_state,
)

HAPPY_PATH = [
    (NodeEvent.RESERVE, NodeState.RESERVED),
    (NodeEvent.DEPLOY, NodeState.DEPLOYING),
    (NodeEvent.DEPLOYED, NodeState.BURNING_IN),
    (NodeEvent.BURNIN_PASSED, NodeState.ACTIVE),
    (NodeEvent.RELEASE, NodeState.RELEASING),
    (NodeEvent.CLEAN, NodeState.CLEANING),
    (NodeEvent.CLEANED, NodeState.AVAILABLE),
]


def test_every_state_is_stable_or_transient_and_never_both():
    assert set(NodeState) == STABLE_STATES | TRANSIENT_STATES
    assert not STABLE_STATES & TRANSIENT_STATES


def test_every_transient_state_can_fail_into_error():
    for state in TRANSIENT_STATES:
        assert next_state(state, NodeEvent.FAIL) == NodeState.ERROR


def test_every_state_is_reachable_and_can_be_left():
    targets = set(TRANSITIONS.values()) | {NodeState.ENROLLING}
    sources = {s for s, _ in TRANSITIONS}
    assert targets == set(NodeState)
    assert sources == set(NodeState)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(NodeState, NodeEvent)))
def test_table_lookup_is_total(state, event):
    expected = TRANSITIONS.get((state, event))
    assert next_state(state, event) == expected


def test_unknown_names_are_refused():
    assert next_state("nonsense", "reserve") is None
    assert next_state("available", "nonsense") is None


@pytest.mark.django_db
@pytest.mark.parametrize(("state", "event"), list(itertools.product(NodeState, NodeEvent)))
def test_process_event_follows_the_table_and_audits(inventory, state, event):
    from provisioner.models import Node

    node = Node.objects.get(name="node-h100-8x-01")
    # Place the node in the starting state directly (test set-up only).
    Node.objects.filter(pk=node.pk).update(state=state)
    node.refresh_from_db()
    before = AuditEvent.objects.filter(node=node, action="transition").count()
    target = TRANSITIONS.get((state, event))
    if target is None:
        with pytest.raises(IllegalTransition, match="not allowed"):
            process_event(node, event, actor=Actor.system("test"))
        node.refresh_from_db()
        assert node.state == state
        assert AuditEvent.objects.filter(node=node, action="transition").count() == before
    else:
        process_event(node, event, actor=Actor.system("test"), reason="because")
        node.refresh_from_db()
        assert node.state == target
        ev = AuditEvent.objects.filter(node=node, action="transition").first()
        assert (ev.from_state, ev.to_state, ev.actor_label, ev.reason) == (state, target, "test", "because")


@pytest.mark.django_db
def test_happy_path_through_the_table(inventory):
    from provisioner.models import Node

    node = Node.objects.get(name="node-h100-8x-02")
    for event, expected in HAPPY_PATH:
        process_event(node, event, actor=Actor.system("test"))
        assert node.state == expected


@pytest.mark.django_db
def test_compare_and_set_refuses_a_stale_expected_state(inventory):
    from provisioner.models import Node

    node = Node.objects.get(name="node-h100-8x-03")
    with pytest.raises(IllegalTransition, match="not reserved"):
        process_event(node, NodeEvent.DEPLOY, actor=Actor.system("test"), expected_state=NodeState.RESERVED)


def test_only_the_lifecycle_service_writes_node_state():
    """No module but services/lifecycle.py assigns Node.state (tests set up states directly)."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    pattern = re.compile(
        r"(node\.state\s*=(?!=)|Node\.objects.*\.(update|create)\(.*\bstate=|setattr\(node, .state.)"
    )
    offenders = []
    for path in list((root / "provisioner").rglob("*.py")) + list((root / "webapp").rglob("*.py")):
        if "migrations" in path.parts or path.name == "lifecycle.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert offenders == []


def _transitions(node_ids) -> list[tuple]:
    """The transition audit events of these nodes, as the fields a customer or operator reads."""
    fields = ("node_id", "from_state", "to_state", "actor_label", "request_id", "reason", "data")
    fields += ("organization_id", "reservation_id", "operation_id", "action")
    return sorted(
        AuditEvent.objects.filter(
            node_id__in=node_ids, action="transition", actor_label="olivia"
        ).values_list(*fields)
    )


@pytest.mark.django_db
def test_process_events_moves_nodes_from_several_states_and_audits_as_process_event_does(inventory):
    """Two pairs of nodes in the same starting states: one pair moved by process_event one at a time, the
    other by one process_events. The nodes end alike and their audit events are the same, field by field."""
    from provisioner.lifecycle import process_events
    from provisioner.models import Node

    one, batch = (
        list(Node.objects.filter(name__in=names).order_by("name"))
        for names in (["node-h100-8x-01", "node-h100-8x-02"], ["node-h100-8x-03", "node-h100-8x-04"])
    )
    for pair in (one, batch):
        Node.objects.filter(pk=pair[0].pk).update(state=NodeState.RESERVED, owner=inventory.acme)
        Node.objects.filter(pk=pair[1].pk).update(state=NodeState.ACTIVE, owner=inventory.acme)
    actor = Actor(user=inventory.owner, label="olivia", request_id="req-1")
    for node in Node.objects.filter(pk__in=[n.pk for n in one]).order_by("name"):
        process_event(node, NodeEvent.RELEASE, actor=actor, reason="done", owner=None)
    moved = process_events(
        list(Node.objects.filter(pk__in=[n.pk for n in batch]).order_by("name")),
        NodeEvent.RELEASE,
        actor=actor,
        reason="done",
        owner=None,
    )
    assert [(n.state, n.owner, n.state_reason) for n in moved] == [(NodeState.RELEASING, None, "done")] * 2
    for node in moved:
        stored = Node.objects.get(pk=node.pk)
        assert (stored.state, stored.owner_id, stored.state_reason, stored.state_changed_at) == (
            node.state,
            None,
            "done",
            node.state_changed_at,
        )
    by_one, by_batch = _transitions([n.pk for n in one]), _transitions([n.pk for n in batch])
    assert len(by_batch) == 2 and {e[1] for e in by_batch} == {NodeState.RESERVED, NodeState.ACTIVE}
    # the same events but for the node they name
    assert [e[1:] for e in by_one] == [e[1:] for e in by_batch]
    assert {e[7] for e in by_batch} == {inventory.acme.pk}  # the customer who gave them up sees them


@pytest.mark.django_db
def test_process_events_moves_none_when_one_may_not_move(inventory):
    from provisioner.lifecycle import process_events
    from provisioner.models import Node

    nodes = list(Node.objects.filter(server_type__slug="h100-8x").order_by("name")[:3])
    Node.objects.filter(pk=nodes[2].pk).update(state=NodeState.MAINTENANCE)
    before = AuditEvent.objects.count()
    with pytest.raises(IllegalTransition, match=r"node-h100-8x-03 is maintenance, not available"):
        process_events(
            nodes, NodeEvent.RESERVE, actor=Actor.system("test"), expected_state=NodeState.AVAILABLE
        )
    with pytest.raises(IllegalTransition, match=r"'deployed' is not allowed from there"):
        process_events(nodes[:2], NodeEvent.DEPLOYED, actor=Actor.system("test"))
    with pytest.raises(ValueError, match="listed twice"):
        process_events([nodes[0], nodes[0]], NodeEvent.RESERVE, actor=Actor.system("test"))
    states = dict(Node.objects.filter(pk__in=[n.pk for n in nodes]).values_list("name", "state"))
    assert list(states.values()) == [NodeState.AVAILABLE, NodeState.AVAILABLE, NodeState.MAINTENANCE]
    assert AuditEvent.objects.count() == before


@pytest.mark.django_db
def test_process_events_compare_and_set_refuses_a_node_moved_underneath(inventory, monkeypatch):
    """Another process moves one node between process_events' read of the states and its update: the
    conditional update misses it, and none of the nodes is moved or audited."""
    from provisioner import lifecycle
    from provisioner.models import Node

    nodes = list(Node.objects.filter(server_type__slug="h100-8x").order_by("name")[:3])
    checked = lifecycle._target

    def racing(node, current, event, expected_state):
        target = checked(node, current, event, expected_state)
        if node.pk == nodes[1].pk:  # the other process, just after the read
            Node.objects.filter(pk=node.pk).update(state=NodeState.MAINTENANCE)
        return target

    monkeypatch.setattr(lifecycle, "_target", racing)
    before = AuditEvent.objects.count()
    with pytest.raises(IllegalTransition, match="changed state while moving them to reserved"):
        lifecycle.process_events(nodes, NodeEvent.RESERVE, actor=Actor.system("test"))
    assert AuditEvent.objects.count() == before
    states = dict(Node.objects.filter(pk__in=[n.pk for n in nodes]).values_list("name", "state"))
    # the racing write was rolled back with the rest (it ran inside the batch's transaction here)
    assert set(states.values()) == {NodeState.AVAILABLE}
