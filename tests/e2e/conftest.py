"""End-to-end fixtures: the lab (real BMCs, firmware, agent, sshd), the boot service on a live server,
and real workers running the Ansible paths."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from provisioner.models import Node, Reservation
from provisioner.states import NodeState, ReservationState
from tests.conftest import WorkerPool, ssh_keygen, wait_for


@pytest.fixture
def lab_workers(settings, transactional_db, live_server, tmp_path) -> Iterator[WorkerPool]:
    settings.NEOCLOUD_DEPLOY_DRIVER = "ansible"
    settings.NEOCLOUD_BURNIN_DRIVER = "ansible"
    settings.NEOCLOUD_BOOT_URL = live_server.url
    # a lab of its own per test: disks, injected faults and logs never leak from one test into the next
    settings.NEOCLOUD_LAB_DIR = tmp_path / "lab"
    pool = WorkerPool(settings, tmp_path)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture
def lab(lab_workers, live_server, settings):
    """A 3-node lab (ipmi, redfish, ipmi) enrolled into Neocloud, with its boot service on the live server."""
    from lab.management.commands.lab import start_lab, stop_lab

    try:
        specs = start_lab(3, boot_url=live_server.url)
        yield {s.name: s for s in specs}
    finally:
        stop_lab()


@pytest.fixture
def customers(transactional_db, tmp_path):
    from django.contrib.auth.models import User

    from provisioner.models import Membership, Organization, SSHKey
    from provisioner.sshkeys import parse_public_key

    out = {}
    for slug in ("acme", "globex"):
        user = User.objects.create_user(f"{slug}-owner", password="pw-0123456789")
        org = Organization.objects.create(name=slug.title(), slug=slug, server_quota=8)
        Membership.objects.create(organization=org, user=user, role=Membership.Role.OWNER)
        private, public = ssh_keygen(tmp_path, kind="ed25519", name=slug)
        parsed = parse_public_key(public)
        key = SSHKey.objects.create(
            organization=org,
            created_by=user,
            name="key",
            public_key=parsed.line,
            fingerprint=parsed.fingerprint,
        )
        out[slug] = {"user": user, "org": org, "key": key, "private": private}
    return out


def wait_reservation_state(reservation, state, workers: WorkerPool, timeout: float) -> None:
    """Wait until the reservation is in ``state``; fail at once, with the workers' logs, when a node ends in
    error or quarantine or the reservation is waiting or failed."""

    def done():
        r = Reservation.objects.get(pk=reservation.pk)
        bad = Node.objects.filter(state__in=[NodeState.ERROR, NodeState.QUARANTINED]).first()
        assert bad is None, f"{bad.name} is {bad.state}: {bad.state_reason}\n{workers.logs()}"
        assert r.state not in (ReservationState.WAITING, ReservationState.FAILED), r.status_message
        return r.state == state

    wait_for(
        done, timeout, interval=0.5, message=f"reservation {reservation.pk} {state}", details=workers.logs
    )
