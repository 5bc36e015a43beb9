"""The warm pool in the lab: the scheduler keeps a server deployed and burned in with the pool's image; a
reservation of that image takes it (fresh host keys generated on the server, the customer's key in, ours
out, a short re-check) while a reservation of another image is deployed on an idle server; the pool refills
from servers coming back from a release."""

from __future__ import annotations

import pytest

from provisioner import crypto
from provisioner.handover import SshAuthFailed, run_command, scan_host_keys
from provisioner.lifecycle import Actor
from provisioner.models import Image, Node, Operation, ServerType
from provisioner.services import warm_pool
from provisioner.services.reservations import book_servers, release_reservation
from provisioner.states import NodeState, OperationKind, ReservationState
from tests.conftest import wait_for
from tests.e2e.conftest import wait_reservation_state

pytestmark = [pytest.mark.lab, pytest.mark.slow]
TIMEOUT = 300


@pytest.fixture
def lab2(lab_workers, live_server):
    from lab.management.commands.lab import start_lab, stop_lab

    try:
        yield start_lab(2, boot_url=live_server.url)
    finally:
        stop_lab()


def _reserve(customer, image):
    return book_servers(
        customer["org"],
        ServerType.objects.get(slug="h100-8x"),
        1,
        image=image,
        ssh_keys=[customer["key"]],
        actor=Actor(user=customer["user"], label=customer["user"].username),
    ).reservation


def _wait_warm(workers, count=1):
    wait_for(
        lambda: Node.objects.filter(state=NodeState.WARM).count() == count,
        TIMEOUT,
        interval=0.5,
        message=f"{count} warm server(s)",
        details=workers.logs,
    )


def test_warm_server_taken_first_with_new_host_keys_other_image_not_used_and_pool_refills(
    lab2, lab_workers, customers
):
    demo = Image.objects.get(slug="neocloud-demo-linux")
    # the same bits under another name: a reservation of it must not take the server warm with the demo image
    other = Image.objects.create(
        slug="other-linux", name="Other Linux", url=demo.url, sha256=demo.sha256, size_bytes=demo.size_bytes
    )
    h100 = ServerType.objects.get(slug="h100-8x")
    h100.warm_pool_size, h100.warm_pool_image = 1, demo
    h100.save()
    lab_workers.worker()
    lab_workers.scheduler()
    _wait_warm(lab_workers)
    warm = Node.objects.get(state=NodeState.WARM)
    warm_prints = dict(warm.host_key_fingerprints)
    assert warm.reservation_id is None and warm.owner_id is None and warm.image == demo
    assert warm.burnin_reports.get().passed
    # warm servers count as available capacity; the catalog promises about a minute
    assert warm_pool.expected_ready_seconds(h100, demo) == warm_pool.WARM_READY_SECONDS
    (status,) = [p for p in warm_pool.pools() if p.server_type == h100]
    assert (status.size, status.warm, status.image) == (1, 1, demo)

    acme, globex = customers["acme"], customers["globex"]
    # another image: deployed on the idle server, the warm one stays warm
    cold = _reserve(globex, other)
    wait_reservation_state(cold, ReservationState.ACTIVE, lab_workers, TIMEOUT)
    assert Node.objects.get(reservation=cold).pk != warm.pk
    assert Node.objects.get(pk=warm.pk).state == NodeState.WARM

    # the pool's image: the warm server, with host keys generated for this customer
    taken = _reserve(acme, demo)
    wait_reservation_state(taken, ReservationState.ACTIVE, lab_workers, TIMEOUT)
    node = Node.objects.get(reservation=taken)
    assert node.pk == warm.pk
    assert node.host_key_fingerprints and not set(node.host_key_fingerprints.values()) & set(
        warm_prints.values()
    )
    served = {
        k.fingerprint for k in scan_host_keys(node.ssh_address, node.ssh_port, node.host_key_fingerprints)
    }
    assert served == set(node.host_key_fingerprints.values())
    status_code, out, _ = run_command(
        node.ssh_address,
        node.ssh_port,
        node.ssh_user,
        acme["private"],
        node.host_key_fingerprints,
        "hostname",
        30,
    )
    assert status_code == 0 and out.strip() == node.name
    op = Operation.objects.filter(node=node, kind=OperationKind.PROVISION).latest("created_at")
    assert op.params.get("warm") is True
    assert op.log_lines.filter(message__contains="comes from the warm pool").exists()
    assert not op.log_lines.filter(message__startswith="TASK [Power off, boot from the network once").exists()
    warm_up = Operation.objects.filter(node=node, kind=OperationKind.WARM_UP).latest("created_at")
    ours = crypto.decrypt(warm_up.params["provisioning_key"]["private"])
    with pytest.raises(SshAuthFailed, match="refused key"):
        run_command(node.ssh_address, node.ssh_port, "root", ours, node.host_key_fingerprints, "true", 30)
    with pytest.raises(SshAuthFailed, match="refused key"):
        run_command(
            node.ssh_address, node.ssh_port, "root", globex["private"], node.host_key_fingerprints, "true", 30
        )
    assert node.burnin_reports.count() == 2  # the warm-up's full burn-in and the re-check

    # the pool refills from the server the other reservation gives back
    release_reservation(cold, actor=Actor(user=globex["user"], label="globex"))
    _wait_warm(lab_workers)
    assert Node.objects.get(state=NodeState.WARM).pk != warm.pk
