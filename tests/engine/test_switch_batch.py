"""A reservation's servers on one switch move in one switch session per step (issue 18's benchmark): the
first node's network step, under the switch's lock, moves every port of that switch whose node stands at the
same step; the others only record. Checked on the fake switch's own state and its session counter (each
session is a login on a real switch)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from provisioner.drivers.fake_switch import read_fake_switch, write_fake_switch
from provisioner.engine import switch_batch
from provisioner.engine.registry import PLANS
from provisioner.engine.runner import execute
from provisioner.engine.switch_batch import OPEN
from provisioner.lifecycle import Actor
from provisioner.models import NetworkAttachment, Node, Operation, TenantNetwork
from provisioner.services.reservations import release_reservation
from provisioner.states import FINISHED_OPERATION_STATES, NodeState, OperationKind, OperationState
from tests.conftest import reserve, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

COUNT = 4
REAL_RUN = switch_batch.run


def _gate(monkeypatch, operations: list[Operation]) -> None:
    """Each network step starts once every one of ``operations`` still open stands at that step (as 32 servers handed over
    together do), so that the first to take the switch's lock finds all the others there."""
    real = REAL_RUN
    ids = [o.pk for o in operations]

    def gated(ctx, step_name, *args, **kwargs):
        index = {o.kind: PLANS[o.kind].index(step_name) for o in operations}

        def all_there():
            rows = Operation.objects.filter(pk__in=ids, state__in=OPEN).values_list("kind", "current_step")
            return all(current >= index[kind] for kind, current in rows)

        wait_for(all_there, timeout=60, message=f"every operation at {step_name}")
        return real(ctx, step_name, *args, **kwargs)

    monkeypatch.setattr(switch_batch, "run", gated)


def _run_all(operations: list[Operation]) -> dict[int, str]:
    results: dict[int, str] = {}

    def one(pk: int) -> None:
        """A worker's part: run the operation, and again whenever it was woken from a park (a step that
        found the switch busy parks until the batch ends)."""
        try:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                results[pk] = execute(pk, owner=f"w{pk}")
                if results[pk] in FINISHED_OPERATION_STATES:
                    return
                time.sleep(0.05)
        finally:
            connection.close()

    threads = [threading.Thread(target=one, args=(o.pk,)) for o in operations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def _sessions() -> int:
    return read_fake_switch("leaf1")["sessions"]


def test_a_reservation_moves_in_one_session_per_step_and_releases_in_one(network_site, monkeypatch):
    r = reserve(network_site, COUNT, label="o")
    nodes = list(Node.objects.filter(reservation=r).order_by("name"))
    # the ports start elsewhere: the provisioning move is a real move
    write_fake_switch(
        "leaf1", ports={**read_fake_switch("leaf1")["ports"], **{n.switch_port: 103 for n in nodes}}
    )
    provisions = list(Operation.objects.filter(reservation=r, kind=OperationKind.PROVISION))
    _gate(monkeypatch, provisions)
    before = _sessions()
    results = _run_all(provisions)
    assert set(results.values()) == {OperationState.SUCCEEDED}, results
    # one session for the provisioning moves of all four, one for their tenant moves (gateway, 4 publishes)
    assert _sessions() - before == 2
    network = TenantNetwork.objects.get(reservation=r)
    switch = read_fake_switch("leaf1")
    assert {switch["ports"][n.switch_port] for n in nodes} == {network.vlan}
    assert switch["gateways"] == {str(network.vlan): f"{network.gateway}/29"}
    attachments = NetworkAttachment.objects.filter(reservation=r)
    assert switch["published"] == {a.public_address: a.private_address for a in attachments}
    assert all(a.configured_at is not None for a in attachments)
    for node in nodes:
        node.refresh_from_db()
        assert node.state == NodeState.ACTIVE and node.switch_vlan == network.vlan
    # every operation's log says how its port moved: one leader per step, the others moved with it
    tenant_lines = [
        line
        for o in provisions
        for line in o.log_lines.filter(step__name="network_tenant").values_list("message", flat=True)
    ]
    assert (
        sum("3 more port(s) of this switch moved in the same session" in line for line in tenant_lines) == 1
    )
    assert sum("moved and read back by a batch of its switch" in line for line in tenant_lines) == COUNT - 1

    release_reservation(r, actor=Actor(user=network_site.owner, label="o"))
    releases = list(Operation.objects.filter(node__in=nodes, kind=OperationKind.RELEASE))
    assert len(releases) == COUNT
    _gate(monkeypatch, releases)
    before = _sessions()
    results = _run_all(releases)
    assert set(results.values()) == {OperationState.SUCCEEDED}, results
    assert _sessions() - before == 1  # withdraws, moves, read back, the emptied network's gateway removed
    switch = read_fake_switch("leaf1")
    assert {switch["ports"][n.switch_port] for n in nodes} == {10}
    assert switch["gateways"] == {} and switch["published"] == {}
    assert TenantNetwork.objects.get(reservation=r).released_at is not None


def test_a_batch_that_fails_fails_every_step_it_covered(network_site, monkeypatch):
    from provisioner.drivers.fake_deploy import FakeDeployDriver

    r = reserve(network_site, COUNT, label="o")
    nodes = list(Node.objects.filter(reservation=r))
    provisions = list(Operation.objects.filter(reservation=r, kind=OperationKind.PROVISION))
    _gate(monkeypatch, provisions)
    handover = FakeDeployDriver.handover

    def switch_lost_during_handover(self, request, log):
        result = handover(self, request, log)
        write_fake_switch("leaf1", fault="unreachable")
        return result

    monkeypatch.setattr(FakeDeployDriver, "handover", switch_lost_during_handover)
    results = _run_all(provisions)
    assert set(results.values()) == {OperationState.FAILED}, results
    for op in provisions:
        step = op.steps.get(name="network_tenant")
        assert (
            step.attempts == step.max_attempts and "did not answer SSH" in step.error
        )  # retried, then failed
    switch = read_fake_switch("leaf1")
    assert {switch["ports"][n.switch_port] for n in nodes} == {10} and switch["published"] == {}
    for node in nodes:
        node.refresh_from_db()
        assert node.state == NodeState.ERROR and node.power_state == "off"


def test_a_peer_cabled_to_a_missing_port_fails_alone(network_site, monkeypatch):
    r = reserve(network_site, COUNT, label="o")
    nodes = list(Node.objects.filter(reservation=r).order_by("name"))
    provisions = list(Operation.objects.filter(reservation=r, kind=OperationKind.PROVISION))
    _gate(monkeypatch, provisions)
    bad = nodes[-1]
    Node.objects.filter(pk=bad.pk).update(switch_port="swp42")
    results = _run_all(provisions)
    by_node = {o.node_id: results[o.pk] for o in provisions}
    assert by_node.pop(bad.pk) == OperationState.FAILED
    assert set(by_node.values()) == {OperationState.SUCCEEDED}
    step = Operation.objects.get(node=bad, kind=OperationKind.PROVISION).steps.get(
        name="network_provisioning"
    )
    assert "has no port swp42" in step.error and step.attempts == 1
    switch = read_fake_switch("leaf1")
    network = TenantNetwork.objects.get(reservation=r)
    assert [switch["ports"][n.switch_port] for n in nodes[:-1]] == [network.vlan] * (COUNT - 1)


def test_a_bookings_first_provisioning_step_moves_every_server_of_the_booking(network_site):
    """Servers that reach network_provisioning one after another still move in one session: the first one's
    batch takes the ports of the booking's operations that have not reached the step yet (they are reserved,
    so on the provisioning network already as far as anyone may know); the others find their port read back
    since their operation was created."""
    r = reserve(network_site, COUNT, label="o")
    nodes = list(Node.objects.filter(reservation=r).order_by("name"))
    write_fake_switch(
        "leaf1", ports={**read_fake_switch("leaf1")["ports"], **{n.switch_port: 103 for n in nodes}}
    )
    provisions = list(
        Operation.objects.filter(reservation=r, kind=OperationKind.PROVISION).order_by("node__name")
    )
    before = _sessions()
    first = _run_all(provisions[:1])
    assert set(first.values()) == {OperationState.SUCCEEDED}, first
    switch = read_fake_switch("leaf1")
    assert [switch["ports"][n.switch_port] for n in nodes[1:]] == [10] * (COUNT - 1)  # not started yet
    assert (
        Operation.objects.filter(pk__in=[o.pk for o in provisions[1:]], current_step=0).count() == COUNT - 1
    )
    assert _sessions() - before == 2  # its provisioning batch (all four ports), its tenant move
    rest = _run_all(provisions[1:])
    assert set(rest.values()) == {OperationState.SUCCEEDED}, rest
    lines = [
        line
        for o in provisions[1:]
        for line in o.log_lines.filter(step__name="network_provisioning").values_list("message", flat=True)
    ]
    assert sum("moved and read back by a batch of its switch" in line for line in lines) == COUNT - 1
    leaders = [
        line
        for o in provisions
        for line in o.log_lines.filter(step__name="network_provisioning").values_list("message", flat=True)
        if "more port(s) of this switch moved in the same session" in line
    ]
    assert len(leaders) == 1 and "3 more port(s)" in leaders[0]  # no provisioning session of their own
