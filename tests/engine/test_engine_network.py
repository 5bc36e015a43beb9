"""The lifecycle moves a network-managed server's switch port (issue 18), checked on the (fake) switch's own
state: the provisioning VLAN while deploying, the tenant VLAN with its gateway and the public address
published before the customer is told, the cleaning VLAN before the wipe, the quarantine VLAN after a failed
burn-in; a switch that fails fails the step and the server is never handed over on the provisioning network."""

from __future__ import annotations

import json

import pytest

from provisioner.drivers.fake import fake_hw_dir
from provisioner.drivers.fake_deploy import FakeBurnInDriver, FakeDeployDriver
from provisioner.drivers.fake_switch import read_fake_switch, write_fake_switch
from provisioner.engine.runner import execute
from provisioner.lifecycle import Actor
from provisioner.models import NetworkAttachment, Node, Operation, Switch, TenantNetwork
from provisioner.services.reservations import release_reservation
from provisioner.states import NodeState, OperationKind, OperationState
from tests.conftest import reserve

pytestmark = pytest.mark.django_db(transaction=True)

PROVISIONING, QUARANTINE = 10, 99


def _port(node: Node) -> int | None:
    return read_fake_switch("leaf1")["ports"][node.switch_port]


def _provision(inv, monkeypatch, seen: dict):
    """Book one server and run its provisioning, noting the port's VLAN when deploy and handover ran."""
    deploy, handover = FakeDeployDriver.deploy, FakeDeployDriver.handover

    def watched_deploy(self, request, log):
        seen["deploy"] = _port(Node.objects.get(name=request.node_name))
        seen["request"] = request
        return deploy(self, request, log)

    def watched_handover(self, request, log):
        seen["handover"] = _port(Node.objects.get(name=request.node_name))
        return handover(self, request, log)

    monkeypatch.setattr(FakeDeployDriver, "deploy", watched_deploy)
    monkeypatch.setattr(FakeDeployDriver, "handover", watched_handover)
    r = reserve(inv, label="o")
    node = Node.objects.get(reservation=r)
    write_fake_switch("leaf1", ports={**read_fake_switch("leaf1")["ports"], node.switch_port: 100 + 7})
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    return r, node, provision


def test_provisioning_moves_the_port_and_hands_over_on_the_tenant_network(network_site, monkeypatch):
    seen: dict = {}
    r, node, provision = _provision(network_site, monkeypatch, seen)
    assert execute(provision.pk, owner="w1") == OperationState.SUCCEEDED
    node.refresh_from_db()
    network = TenantNetwork.objects.get(reservation=r)
    attachment = NetworkAttachment.objects.get(node=node, reservation=r)
    # deploy and handover ran on the provisioning VLAN (the port was elsewhere before: moved first)
    assert seen["deploy"] == PROVISIONING and seen["handover"] == PROVISIONING
    switch = read_fake_switch("leaf1")
    assert switch["ports"][node.switch_port] == network.vlan == 100
    assert switch["gateways"] == {"100": "198.19.0.1/29"}
    assert switch["published"] == {"203.0.113.1": "198.19.0.2"}
    assert node.state == NodeState.ACTIVE and node.switch_vlan == 100 and node.network_drift == ""
    assert attachment.configured_at is not None
    # the deployed OS learns its private network from the config drive
    assert seen["request"].private_network == {"address": "198.19.0.2", "prefix": 29, "gateway": "198.19.0.1"}
    disk = json.loads((fake_hw_dir() / f"{node.name}.disk.json").read_text())  # the fake deploy's disk
    assert disk["private_network"]["address"] == "198.19.0.2"
    steps = list(provision.steps.order_by("index").values_list("name", flat=True))
    assert steps.index("network_tenant") == steps.index("handover") + 1
    assert steps[-1] == "finish_provision"


def test_release_moves_the_port_to_cleaning_before_the_wipe_and_frees_the_network(network_site, monkeypatch):
    seen: dict = {}
    r, node, provision = _provision(network_site, monkeypatch, seen)
    assert execute(provision.pk, owner="w1") == OperationState.SUCCEEDED
    wipe = FakeDeployDriver.wipe

    def watched_wipe(self, node_name, log):
        seen["wipe"] = _port(Node.objects.get(name=node_name))
        seen["published_at_wipe"] = dict(read_fake_switch("leaf1")["published"])
        return wipe(self, node_name, log)

    monkeypatch.setattr(FakeDeployDriver, "wipe", watched_wipe)
    release_reservation(r, actor=Actor(user=network_site.owner, label="o"))
    release = Operation.objects.get(node=node, kind=OperationKind.RELEASE)
    assert execute(release.pk, owner="w1") == OperationState.SUCCEEDED
    assert seen["wipe"] == PROVISIONING  # the cleaning VLAN is the provisioning one at this site
    assert seen["published_at_wipe"] == {}
    switch = read_fake_switch("leaf1")
    assert switch["gateways"] == {} and switch["published"] == {}
    assert TenantNetwork.objects.get(reservation=r).released_at is not None
    assert not NetworkAttachment.objects.live().exists()
    node.refresh_from_db()
    assert node.state == NodeState.AVAILABLE and node.switch_vlan == PROVISIONING


def test_a_switch_unreachable_mid_handover_fails_and_never_hands_over(network_site, monkeypatch):
    seen: dict = {}
    _r, node, provision = _provision(network_site, monkeypatch, seen)
    handover = FakeDeployDriver.handover

    def switch_lost_during_handover(self, request, log):
        result = handover(self, request, log)
        write_fake_switch("leaf1", fault="unreachable")
        return result

    monkeypatch.setattr(FakeDeployDriver, "handover", switch_lost_during_handover)
    assert execute(provision.pk, owner="w1") == OperationState.FAILED
    step = provision.steps.get(name="network_tenant")
    assert step.attempts == step.max_attempts and "did not answer SSH" in step.error  # retried, then failed
    assert provision.steps.get(name="finish_provision").state != "succeeded"
    node.refresh_from_db()
    assert node.state == NodeState.ERROR
    assert node.power_state == "off"  # the customer's OS on the provisioning network: powered off
    assert _port(node) == PROVISIONING and read_fake_switch("leaf1")["published"] == {}


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (
            lambda node: write_fake_switch("leaf1", ports={"swp9": 10}),
            "switch leaf1 has no port swp3 (its ports: swp9)",
        ),
        (lambda node: Switch.objects.filter(name="leaf1").delete(), "switch 'leaf1' is not registered"),
        (lambda node: write_fake_switch("leaf1", fault="auth"), "refused the login"),
    ],
    ids=["unknown-port", "unknown-switch", "auth"],
)
def test_a_port_or_switch_that_cannot_be_used_fails_before_the_deploy(
    network_site, monkeypatch, break_it, message
):
    seen: dict = {}
    _r, node, provision = _provision(network_site, monkeypatch, seen)
    break_it(node)
    assert execute(provision.pk, owner="w1") == OperationState.FAILED
    step = provision.steps.get(name="network_provisioning")
    assert step.attempts == 1 and message in step.error  # not retried: retrying cannot help
    assert "deploy" not in seen
    node.refresh_from_db()
    assert node.state == NodeState.ERROR


def test_a_failed_burnin_puts_the_port_on_the_quarantine_vlan(network_site, monkeypatch):
    seen: dict = {}
    _r, node, provision = _provision(network_site, monkeypatch, seen)

    def faulty(self, node_name, expectations, log):
        return {
            "passed": False,
            "summary": "1 check failed",
            "checks": [{"name": "gpu_count", "passed": False, "message": "7 GPUs found, 8 expected"}],
        }

    monkeypatch.setattr(FakeBurnInDriver, "run", faulty)
    assert execute(provision.pk, owner="w1") == OperationState.FAILED
    node.refresh_from_db()
    assert node.state == NodeState.QUARANTINED
    assert _port(node) == QUARANTINE and node.switch_vlan == QUARANTINE
    assert read_fake_switch("leaf1")["published"] == {}


def test_an_unmanaged_site_logs_one_line_per_network_step(inventory, fake_hw_dir):
    r = reserve(inventory, label="o")
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    assert execute(provision.pk, owner="w1") == OperationState.SUCCEEDED
    lines = provision.log_lines.filter(message__contains="network is not managed")
    assert lines.count() == 2  # network_provisioning, network_tenant
