"""Fast-track in the lab: after a wipe the real deploy agent stays up heartbeating, the next deploy streams
without power cycling the server into the ramdisk (one firmware self-test instead of two), and an agent that
stops heartbeating is powered off through the lab BMC."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from provisioner import hardware
from provisioner.handover import run_command
from provisioner.lifecycle import Actor
from provisioner.models import AuditEvent, Image, Node, Operation, ServerType
from provisioner.services.phases import phase_times
from provisioner.services.reservations import book_servers, release_reservation
from provisioner.states import NodeState, OperationKind, PowerStateChoice, ReservationState
from tests.conftest import wait_for
from tests.e2e.conftest import wait_reservation_state

pytestmark = [pytest.mark.lab, pytest.mark.slow]
TIMEOUT = 300


@pytest.fixture
def fast_track_lab(settings, lab_workers, live_server):
    """A one-node lab with fast-track on (a heartbeat a second, five missed ones allowed)."""
    from lab.management.commands.lab import start_lab, stop_lab

    settings.NEOCLOUD_FAST_TRACK = True
    settings.NEOCLOUD_FAST_TRACK_HEARTBEAT_SECONDS = 1.0
    settings.NEOCLOUD_FAST_TRACK_MISSED_HEARTBEATS = 5
    lab_workers.env.update(
        NEOCLOUD_FAST_TRACK="1",
        NEOCLOUD_FAST_TRACK_HEARTBEAT_SECONDS="1.0",
        NEOCLOUD_FAST_TRACK_MISSED_HEARTBEATS="5",
    )
    try:
        yield start_lab(1, boot_url=live_server.url)[0]
    finally:
        stop_lab()


def _reserve(customer):
    return book_servers(
        customer["org"],
        ServerType.objects.get(slug="h100-8x"),
        1,
        image=Image.objects.get(slug="neocloud-demo-linux"),
        ssh_keys=[customer["key"]],
        actor=Actor(user=customer["user"], label=customer["user"].username),
    ).reservation


def _power_ons(console: Path) -> list[str]:
    """The boot device of each power-on the lab firmware saw (its console), in order."""
    return re.findall(r"power on: boot (\w+)", console.read_text())


def _release_and_wait_fast_tracked(reservation, customer, workers) -> Node:
    release_reservation(reservation, actor=Actor(user=customer["user"], label="acme"))
    wait_reservation_state(reservation, ReservationState.RELEASED, workers, TIMEOUT)
    wait_for(
        lambda: Node.objects.filter(state=NodeState.AVAILABLE, fast_track_ticket__isnull=False).exists(),
        60,
        message="the wiped node fast-tracked",
        details=workers.logs,
    )
    return Node.objects.get()


def test_deploy_after_a_fast_track_wipe_skips_the_power_cycle_and_a_silent_agent_is_powered_off(
    fast_track_lab, lab_workers, customers
):
    lab_workers.worker()
    lab_workers.scheduler()
    spec = fast_track_lab
    acme = customers["acme"]

    # cold: two power-ons (into the ramdisk, then into the OS)
    first = _reserve(acme)
    wait_reservation_state(first, ReservationState.ACTIVE, lab_workers, TIMEOUT)
    from django.conf import settings

    console = Path(settings.NEOCLOUD_LAB_DIR) / "nodes" / spec.name / "console.log"
    assert _power_ons(console) == ["pxe", "disk"]

    # the release's wipe leaves its agent up, heartbeating, and the server on
    node = _release_and_wait_fast_tracked(first, acme, lab_workers)
    assert node.power_state == PowerStateChoice.ON and node.agent_heartbeat_at is not None
    before = len(_power_ons(console))
    assert _power_ons(console)[-1] == "pxe"
    wait_for(
        lambda: Node.objects.get().agent_heartbeat_at > node.agent_heartbeat_at,
        30,
        message="a heartbeat after the wipe",
        details=lab_workers.logs,
    )

    # fast-track deploy: no power cycle into the ramdisk, only the reboot into the deployed OS
    second = _reserve(acme)
    wait_reservation_state(second, ReservationState.ACTIVE, lab_workers, TIMEOUT)
    assert _power_ons(console)[before:] == ["disk"]
    node = Node.objects.get()
    assert node.state == NodeState.ACTIVE and node.fast_track_ticket_id is None
    op = Operation.objects.filter(node=node, kind=OperationKind.PROVISION).latest("created_at")
    assert op.log_lines.filter(message__startswith="fast-track: the deploy agent on").exists()
    assert not op.log_lines.filter(message__startswith="TASK [Power off, boot from the network once").exists()
    # the portal's time per phase: no POST into the ramdisk, the agent took the ticket at a heartbeat
    phases = [name for name, _ in phase_times(op)]
    assert phases == ["agent pickup (fast-track)", "stream", "first boot", "burn-in", "handover"]
    cold_op = Operation.objects.filter(node=node, kind=OperationKind.PROVISION).earliest("created_at")
    assert next(name for name, _ in phase_times(cold_op)) == "POST into the ramdisk"
    status, out, _ = run_command(
        node.ssh_address,
        node.ssh_port,
        node.ssh_user,
        acme["private"],
        node.host_key_fingerprints,
        "hostname",
        30,
    )
    assert status == 0 and out.strip() == node.name

    # an agent that stops heartbeating is powered off through the BMC; the server is back on the cold path
    node = _release_and_wait_fast_tracked(second, acme, lab_workers)
    pids = re.findall(r"deploy ramdisk: agent started \(pid (\d+)\)", console.read_text())
    os.kill(int(pids[-1]), signal.SIGKILL)
    wait_for(
        lambda: Node.objects.filter(pk=node.pk, fast_track_ticket__isnull=True, power_state="off").exists(),
        60,
        message="the silent agent's server powered off",
        details=lab_workers.logs,
    )
    driver = hardware.power_driver(node)
    try:
        assert driver.get_power_state().value == "off"  # the lab BMC's own state
    finally:
        driver.close()
    assert AuditEvent.objects.filter(node=node, action="fast_track_expired").exists()
    assert Node.objects.get().state == NodeState.AVAILABLE
