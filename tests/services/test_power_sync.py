"""Fleet power sync: concurrent polling, unknown (never a guess) for silent BMCs, drift events."""

from __future__ import annotations

import pytest

from provisioner.drivers.base import BmcAccess
from provisioner.drivers.fake import write_fake_bmc
from provisioner.models import AuditEvent, Node
from provisioner.services.power import sync_power
from provisioner.states import NodeState


def _access(node: Node) -> BmcAccess:
    return BmcAccess(
        protocol="fake", address=node.bmc_address, port=node.bmc_port, username="admin", password=""
    )


@pytest.mark.django_db
def test_power_sync_records_state_unknown_and_drift(inventory, fake_hw_dir, settings):
    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.3
    nodes = {n.name: n for n in Node.objects.all()}
    write_fake_bmc(_access(nodes["node-h100-8x-01"]), power="on")  # available but on: drift
    write_fake_bmc(_access(nodes["node-h100-8x-02"]), fault="timeout")  # silent BMC
    write_fake_bmc(_access(nodes["node-h100-8x-03"]), power="off")
    counts = sync_power()
    assert counts == {"polled": 6, "unknown": 1, "drift": 1}
    states = dict(Node.objects.values_list("name", "power_state"))
    assert states["node-h100-8x-01"] == "on"
    assert states["node-h100-8x-02"] == "unknown"
    assert states["node-h100-8x-03"] == "off"
    assert Node.objects.get(name="node-h100-8x-02").bmc_last_error  # the reason is kept for operators
    drift = AuditEvent.objects.get(action="power_drift")
    assert drift.node.name == "node-h100-8x-01" and "expected off" in drift.reason
    # a second pass with nothing changed records no second drift event
    assert sync_power()["drift"] == 0
    assert AuditEvent.objects.filter(action="power_drift").count() == 1
    assert Node.objects.get(name="node-h100-8x-01").state == NodeState.AVAILABLE


def _during_sweep(monkeypatch, meanwhile) -> None:
    """Run ``meanwhile()`` after the BMCs answered and before the sync writes: what the engine may do then."""
    from provisioner.services import power

    real = power.sweep_power

    def sweep(*args, **kwargs):
        results = real(*args, **kwargs)
        meanwhile()
        return results

    monkeypatch.setattr(power, "sweep_power", sweep)


@pytest.mark.django_db
def test_power_sync_keeps_the_power_state_the_engine_wrote_during_the_sweep(
    inventory, fake_hw_dir, settings, monkeypatch
):
    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.3
    node = Node.objects.get(name="node-h100-8x-01")
    Node.objects.filter(pk=node.pk).update(power_state="off")
    write_fake_bmc(_access(node), power="off")  # what the sweep reads, before a deploy powers it on

    # a deploy finishes meanwhile and records the server on (steps.deploy_image writes power_state only)
    _during_sweep(monkeypatch, lambda: Node.objects.filter(pk=node.pk).update(power_state="on"))
    sync_power()
    assert Node.objects.get(pk=node.pk).power_state == "on"


@pytest.mark.django_db
def test_power_sync_keeps_what_an_operation_that_took_the_node_meanwhile_wrote_even_the_same_value(
    inventory, fake_hw_dir, settings, monkeypatch
):
    from provisioner.engine.locks import acquire_lease
    from provisioner.engine.queue import create_operation
    from provisioner.states import OperationKind

    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.3
    node = Node.objects.get(name="node-h100-8x-01")
    Node.objects.filter(pk=node.pk).update(power_state="on")  # a stale "on" from an earlier sweep
    write_fake_bmc(_access(node), power="off")  # the sweep reads it off (rebooting)

    def operation_takes_node_and_powers_it_on() -> None:
        op = create_operation(OperationKind.POWER, node, params={"action": "on"})
        assert acquire_lease(node.pk, "worker-1", op)
        Node.objects.filter(pk=node.pk).update(power_state="on")  # the same value as before the sweep

    _during_sweep(monkeypatch, operation_takes_node_and_powers_it_on)
    sync_power()
    assert Node.objects.get(pk=node.pk).power_state == "on"


@pytest.mark.django_db
def test_power_sync_keeps_a_newer_power_check_and_a_silent_bmc_does_not_erase_it(
    inventory, fake_hw_dir, settings, monkeypatch
):
    from django.utils import timezone

    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.3
    node = Node.objects.get(name="node-h100-8x-01")
    write_fake_bmc(_access(node), fault="timeout")
    checked = timezone.now()

    # a power action reads the BMC meanwhile (it answered the engine, not the sweep)
    _during_sweep(
        monkeypatch,
        lambda: Node.objects.filter(pk=node.pk).update(power_state="on", power_checked_at=checked),
    )
    sync_power()
    node.refresh_from_db()
    assert (node.power_state, node.power_checked_at) == ("on", checked)


@pytest.mark.django_db
def test_power_sync_records_no_drift_for_a_node_whose_state_changed_during_the_sweep(
    inventory, fake_hw_dir, settings, monkeypatch
):
    from provisioner.lifecycle import Actor, process_event
    from provisioner.states import NodeEvent

    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.3
    node = Node.objects.get(name="node-h100-8x-01")
    write_fake_bmc(_access(node), power="on")  # available and on: drift, had it stayed available

    _during_sweep(
        monkeypatch,
        lambda: process_event(node, NodeEvent.MAINTAIN, actor=Actor.system("test"), reason="hold"),
    )
    counts = sync_power()
    assert counts["drift"] == 0
    assert not AuditEvent.objects.filter(action="power_drift").exists()
    assert Node.objects.get(pk=node.pk).state == NodeState.MAINTENANCE


@pytest.mark.django_db
def test_power_sync_logs_drift_once_across_a_bmc_that_goes_silent_and_comes_back(
    inventory, fake_hw_dir, settings
):
    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.3
    node = Node.objects.get(name="node-h100-8x-01")
    access = _access(node)
    write_fake_bmc(access, power="on")  # available but on: drift
    assert sync_power()["drift"] == 1
    write_fake_bmc(access, fault="timeout")
    assert sync_power()["unknown"] == 1
    assert Node.objects.get(pk=node.pk).power_state == "unknown"
    write_fake_bmc(access, fault=None)  # back, still on: the same drift, not a new one
    assert sync_power()["drift"] == 0
    assert AuditEvent.objects.filter(action="power_drift").count() == 1
    # a real change is news again: off (as expected), then on once more
    write_fake_bmc(access, power="off")
    assert sync_power()["drift"] == 0
    write_fake_bmc(access, power="on")
    assert sync_power()["drift"] == 1
    assert AuditEvent.objects.filter(action="power_drift").count() == 2


@pytest.mark.django_db
def test_power_sync_records_a_node_whose_bmc_password_cannot_be_decrypted_and_polls_the_rest(
    inventory, fake_hw_dir, settings
):
    """A credential saved without a password (or under another key) made sync_power raise for the whole
    fleet: that node is recorded unknown with the reason, every other node is still polled."""
    from provisioner.models import BmcCredential

    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.3
    nodes = {n.name: n for n in Node.objects.all()}
    BmcCredential.objects.filter(node=nodes["node-h100-8x-01"]).update(password_encrypted="")
    write_fake_bmc(_access(nodes["node-h100-8x-02"]), power="off")
    counts = sync_power()
    assert counts == {"polled": 6, "unknown": 1, "drift": 0}
    broken = Node.objects.get(name="node-h100-8x-01")
    assert broken.power_state == "unknown" and broken.power_checked_at is not None
    assert "credential" in broken.bmc_last_error
    polled = Node.objects.get(name="node-h100-8x-02")
    assert polled.power_state == "off" and polled.bmc_last_contact_at is not None
