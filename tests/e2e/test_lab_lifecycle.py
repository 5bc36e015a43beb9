"""End to end in the lab: real BMCs, PXE through the boot service, the real deploy agent writing a real
image to each server's disk, Ansible over real SSH, burn-in, handover, release and wipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner import crypto
from provisioner.handover import SshAuthFailed, run_command
from provisioner.lifecycle import Actor
from provisioner.models import Image, Node, Operation, Reservation, ServerType
from provisioner.pxe.configdrive import read_config_drive
from provisioner.services.reservations import book_servers, release_reservation
from provisioner.states import NodeState, OperationKind, ReservationState
from tests.conftest import wait_for
from tests.e2e.conftest import wait_reservation_state

pytestmark = [pytest.mark.lab, pytest.mark.slow]
TIMEOUT = 480


def _reserve(customer, count):
    return book_servers(
        customer["org"],
        ServerType.objects.get(slug="h100-8x"),
        count,
        image=Image.objects.get(slug="neocloud-demo-linux"),
        ssh_keys=[customer["key"]],
        actor=Actor(user=customer["user"], label=customer["user"].username),
    ).reservation


def _login(node: Node, private_key: str, command: str):
    return run_command(
        node.ssh_address, node.ssh_port, node.ssh_user, private_key, node.host_key_fingerprints, command, 30
    )


def test_two_customers_reserve_ssh_in_release_and_servers_return_wiped(lab, lab_workers, customers):
    lab_workers.worker()
    lab_workers.worker()
    lab_workers.scheduler()
    acme = _reserve(customers["acme"], 2)
    globex = _reserve(customers["globex"], 1)
    wait_reservation_state(acme, ReservationState.ACTIVE, lab_workers, TIMEOUT)
    wait_reservation_state(globex, ReservationState.ACTIVE, lab_workers, TIMEOUT)

    for reservation, who in ((acme, "acme"), (globex, "globex")):
        for node in Node.objects.filter(reservation=reservation):
            spec = lab[node.name]
            # the OS on disk is the image, the config drive holds this customer's key
            config = read_config_drive(spec.disk_path)
            assert config["hostname"] == node.name
            assert customers[who]["key"].public_key in config["authorized_keys"]
            # the customer logs in with strict host-key checking against the recorded fingerprints
            status, out, _ = _login(node, customers[who]["private"], "ip -4 -o addr show scope global")
            assert status == 0 and node.ssh_address in out
            assert set(node.host_key_fingerprints) and node.known_hosts.startswith(node.ssh_address)
            # the other customer's key does not get in
            other = "globex" if who == "acme" else "acme"
            with pytest.raises(SshAuthFailed, match="refused key"):
                _login(node, customers[other]["private"], "true")
            # and neither does our provisioning key, removed at handover
            op = Operation.objects.filter(node=node, kind=OperationKind.PROVISION).latest("created_at")
            provisioning_private = crypto.decrypt(op.params["provisioning_key"]["private"])
            with pytest.raises(SshAuthFailed, match="refused key"):
                _login(node, provisioning_private, "true")
            assert node.burnin_reports.get().passed
            # the BMC plays ran around the agent's work, which the engine waited for outside any playbook
            assert op.log_lines.filter(
                message__startswith="TASK [Power off, boot from the network once"
            ).exists()
            assert op.log_lines.filter(message__startswith="TASK [Boot from disk from now on").exists()

    release_reservation(acme, actor=Actor(user=customers["acme"]["user"], label="acme"))
    release_reservation(globex, actor=Actor(user=customers["globex"]["user"], label="globex"))
    wait_reservation_state(acme, ReservationState.RELEASED, lab_workers, TIMEOUT)
    wait_reservation_state(globex, ReservationState.RELEASED, lab_workers, TIMEOUT)
    wait_for(
        lambda: Node.objects.filter(state=NodeState.AVAILABLE).count() == 3,
        60,
        message="all available",
        details=lab_workers.logs,
    )
    for spec in lab.values():
        with open(spec.disk_path, "rb") as disk:
            assert not any(disk.read(4 * 1024 * 1024)), f"{spec.name}: disk not overwritten"
        assert read_config_drive(spec.disk_path) is None


def test_corrupted_image_fails_the_node_into_error_and_a_spare_takes_over(
    lab, lab_workers, customers, settings
):
    faults = Path(settings.NEOCLOUD_LAB_DIR) / "nodes" / "lab-node-01" / "faults.json"
    faults.write_text(json.dumps({"image_corruption": True}))
    lab_workers.worker()
    lab_workers.scheduler()
    r = _reserve(customers["acme"], 1)
    wait_for(
        lambda: Node.objects.get(name="lab-node-01").state == NodeState.ERROR,
        TIMEOUT,
        interval=0.5,
        message="node-01 error",
        details=lab_workers.logs,
    )
    bad = Node.objects.get(name="lab-node-01")
    assert "sha256" in bad.state_reason.lower() or "checksum" in bad.state_reason.lower(), bad.state_reason
    assert read_config_drive(lab["lab-node-01"].disk_path) is None  # never looks deployed
    wait_for(
        lambda: Reservation.objects.get(pk=r.pk).state == ReservationState.ACTIVE,
        TIMEOUT,
        interval=0.5,
        message="spare active",
        details=lab_workers.logs,
    )
    assert Node.objects.get(reservation=r).name != "lab-node-01"


def test_gpu_fault_quarantines_the_server_and_the_customer_gets_a_healthy_spare(
    lab, lab_workers, customers, settings
):
    faults = Path(settings.NEOCLOUD_LAB_DIR) / "nodes" / "lab-node-01" / "gpu_faults.json"
    faults.write_text(json.dumps({"3": ["pcie_width:8"]}))
    lab_workers.worker()
    lab_workers.scheduler()
    r = _reserve(customers["acme"], 1)
    wait_for(
        lambda: Node.objects.get(name="lab-node-01").state == NodeState.QUARANTINED,
        TIMEOUT,
        interval=0.5,
        message="node-01 quarantined",
        details=lab_workers.logs,
    )
    bad = Node.objects.get(name="lab-node-01")
    assert "GPU 3" in bad.state_reason and "x8" in bad.state_reason, bad.state_reason
    report = bad.burnin_reports.get()
    assert not report.passed and [c["name"] for c in report.failed_checks] == ["pcie.link"]
    wait_for(
        lambda: Reservation.objects.get(pk=r.pk).state == ReservationState.ACTIVE,
        TIMEOUT,
        interval=0.5,
        message="spare active",
        details=lab_workers.logs,
    )
    spare = Node.objects.get(reservation=r)
    assert spare.name != "lab-node-01" and spare.burnin_reports.get().passed
    assert "replaced by a healthy spare" in Reservation.objects.get(pk=r.pk).status_message
