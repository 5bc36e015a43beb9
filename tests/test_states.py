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
