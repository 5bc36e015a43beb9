"""Network drift: every managed port read back from its switch (one session per switch), drift recorded on
the node for operators, repaired on request; emptied tenant networks whose release did not finish are
finished here."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from provisioner.drivers.fake_switch import read_fake_switch, write_fake_switch
from provisioner.engine.runner import execute
from provisioner.models import AuditEvent, Node, Operation, TenantNetwork
from provisioner.services.network_drift import check_network_drift, remove_empty_networks
from provisioner.states import NodeState, OperationKind, OperationState
from tests.conftest import reserve

pytestmark = pytest.mark.django_db(transaction=True)


def _active(inv) -> Node:
    r = reserve(inv, label="o")
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    assert execute(provision.pk, owner="w1") == OperationState.SUCCEEDED
    return Node.objects.get(reservation=r)


def _move(port: str, vlan: int | None) -> None:
    write_fake_switch("leaf1", ports={**read_fake_switch("leaf1")["ports"], port: vlan})


def test_drift_is_found_recorded_and_repaired_on_request(network_site):
    node = _active(network_site)
    sessions = read_fake_switch("leaf1")["sessions"]
    report = check_network_drift()
    assert report.checked == 6 and report.drifting == [] and report.unreadable == []
    assert read_fake_switch("leaf1")["sessions"] == sessions + 1  # one session for the switch's six ports
    node.refresh_from_db()
    assert node.switch_vlan == 100 and node.network_drift == "" and node.switch_checked_at is not None

    _move(node.switch_port, 10)  # someone put the customer's server back on the provisioning network
    report = check_network_drift()
    node.refresh_from_db()
    assert node.switch_vlan == 10
    assert node.network_drift == (
        f"switch leaf1 port {node.switch_port} is on VLAN 10; active requires VLAN 100 (its tenant network)"
    )
    assert report.drifting == [f"{node.name}: {node.network_drift}"] and report.repaired == []
    assert read_fake_switch("leaf1")["ports"][node.switch_port] == 10  # found, not touched

    report = check_network_drift(repair=True)
    assert report.repaired == [node.name]
    assert read_fake_switch("leaf1")["ports"][node.switch_port] == 100
    node.refresh_from_db()
    assert node.switch_vlan == 100 and node.network_drift == ""
    assert AuditEvent.objects.filter(action="network_repair", node=node).exists()


def test_idle_and_quarantined_ports_and_missing_ports(network_site):
    nodes = {n.name: n for n in Node.objects.all()}
    q = nodes["node-a100-8x-01"]
    Node.objects.filter(pk=q.pk).update(state=NodeState.QUARANTINED)
    _move(nodes["node-a100-8x-02"].switch_port, 100)  # an idle server on a tenant VLAN
    ports = read_fake_switch("leaf1")["ports"]
    del ports[nodes["node-h100-8x-04"].switch_port]
    write_fake_switch("leaf1", ports=ports)
    report = check_network_drift()
    drift = {n.name: n.network_drift for n in Node.objects.all()}
    assert "requires VLAN 99 (the quarantine network)" in drift["node-a100-8x-01"]
    assert (
        "is on VLAN 100; available requires VLAN 10 (the cleaning or provisioning network)"
        in drift["node-a100-8x-02"]
    )
    assert "switch leaf1 has no port swp6" in drift["node-h100-8x-04"]
    assert drift["node-h100-8x-01"] == ""
    assert len(report.drifting) == 3


def test_an_unreachable_switch_is_reported_on_its_nodes(network_site):
    write_fake_switch("leaf1", fault="unreachable")
    report = check_network_drift()
    assert len(report.unreadable) == 1 and "did not answer SSH" in report.unreadable[0]
    assert all(n.network_drift.startswith("switch leaf1 could not be read") for n in Node.objects.all())


def test_the_management_command_repairs_and_exits_nonzero_while_drift_is_left(network_site, capsys):
    node = Node.objects.get(name="node-h100-8x-01")
    Node.objects.filter(pk=node.pk).update(state=NodeState.QUARANTINED)
    with pytest.raises(SystemExit) as exit_:
        call_command("network_drift")
    assert exit_.value.code == 1
    assert "requires VLAN 99" in capsys.readouterr().out
    call_command("network_drift", "--repair")
    assert read_fake_switch("leaf1")["ports"][node.switch_port] == 99
    assert "node-h100-8x-01: repaired" in capsys.readouterr().out


def test_an_emptied_network_whose_gateway_stayed_is_released_by_the_drift_job(network_site):
    node = _active(network_site)
    network = TenantNetwork.objects.get(reservation=node.reservation)
    assert read_fake_switch("leaf1")["gateways"] == {"100": "198.19.0.1/29"}
    network.attachments.update(released_at=network.created_at)  # the cleaning step ended it, then failed
    assert remove_empty_networks() == 1
    assert read_fake_switch("leaf1")["gateways"] == {}
    network.refresh_from_db()
    assert network.released_at is not None
