"""The warm pool with the fake drivers: filled by the scheduler's pass, taken first by a reservation of its
image (new host keys, the customer's keys, a short re-check, no deploy), never by one of another image,
refilled, shrunk; and what the catalog says about the time to ready."""

from __future__ import annotations

import pytest

from provisioner.engine.runner import execute
from provisioner.models import Image, Node, Operation
from provisioner.services import warm_pool
from provisioner.services.reservations import availability
from provisioner.states import NodeState, OperationKind, OperationState, ReservationState
from tests.conftest import reserve


@pytest.fixture(autouse=True)
def _real_commits(transactional_db, fake_hw_dir):
    """Operations run with execute(): their commits must be real."""


def _run_all(kind: str | None = None) -> None:
    ops = Operation.objects.filter(state=OperationState.PENDING)
    if kind:
        ops = ops.filter(kind=kind)
    for op in ops:
        assert execute(op.pk, owner="test") == OperationState.SUCCEEDED, op.error


def _fill(inventory, size: int, image=None):
    inventory.h100.warm_pool_size, inventory.h100.warm_pool_image = size, image or inventory.image
    inventory.h100.save()
    assert warm_pool.refill()["warmed"] == size
    assert Node.objects.filter(state=NodeState.WARMING).count() == size
    _run_all(OperationKind.WARM_UP)
    return list(Node.objects.filter(state=NodeState.WARM))


def test_a_reservation_takes_a_warm_server_first_with_new_host_keys_and_no_deploy(inventory):
    (warm,) = _fill(inventory, 1)
    assert warm.owner_id is None and warm.reservation_id is None and warm.image_id == inventory.image.pk
    assert warm.burnin_reports.get().passed
    warm_prints = dict(warm.host_key_fingerprints)
    # warm servers are capacity, and the catalog promises about a minute
    assert availability(inventory.h100) == 4
    assert warm_pool.expected_ready_seconds(inventory.h100) == warm_pool.WARM_READY_SECONDS

    r = reserve(inventory)
    node = Node.objects.get(reservation=r)
    assert node.pk == warm.pk
    op = r.operations.get(kind=OperationKind.PROVISION)
    assert op.params == {"warm": True}
    _run_all()
    r.refresh_from_db()
    node.refresh_from_db()
    assert r.state == ReservationState.ACTIVE and node.state == NodeState.ACTIVE
    assert node.host_key_fingerprints and node.host_key_fingerprints != warm_prints
    assert op.log_lines.filter(message__contains="comes from the warm pool").exists()
    assert not op.log_lines.filter(message__startswith="deploying").exists()
    assert node.burnin_reports.count() == 2


def test_a_warm_server_of_another_image_is_not_taken_while_an_idle_one_is_free(inventory):
    other = Image.objects.create(
        slug="other", name="Other", url=inventory.image.url, sha256=inventory.image.sha256, size_bytes=1024
    )
    (warm,) = _fill(inventory, 1, other)
    r = reserve(inventory)
    node = Node.objects.get(reservation=r)
    assert node.pk != warm.pk
    assert r.operations.get(kind=OperationKind.PROVISION).params == {}
    assert Node.objects.get(pk=warm.pk).state == NodeState.WARM


def test_the_pool_refills_when_a_warm_server_is_taken_and_shrinks_when_asked(inventory):
    (warm,) = _fill(inventory, 1)
    reserve(inventory)
    assert warm_pool.refill()["warmed"] == 1
    _run_all()
    assert Node.objects.filter(state=NodeState.WARM).exclude(pk=warm.pk).count() == 1
    (status,) = [p for p in warm_pool.pools() if p.server_type == inventory.h100]
    assert (status.size, status.warm, status.warming, status.image) == (1, 1, 0, inventory.image)

    inventory.h100.warm_pool_size = 0
    inventory.h100.save()
    assert warm_pool.refill() == {"warmed": 0, "wiped": 1}
    _run_all(OperationKind.CLEAN)
    assert not Node.objects.filter(state=NodeState.WARM).exists()


def test_the_catalog_estimates_the_cold_path_from_recent_deploys_or_the_post_time(inventory, settings):
    settings.NEOCLOUD_POST_SECONDS_ESTIMATE = 200
    assert warm_pool.expected_ready_seconds(inventory.h100) == 2 * 200 + warm_pool.COLD_WORK_SECONDS
    reserve(inventory)
    _run_all()
    measured = warm_pool.expected_ready_seconds(inventory.h100)
    assert 0 <= measured < 60  # the fake deploy takes no time


def test_time_per_phase_of_a_warm_provisioning_names_its_phases(inventory):
    from provisioner.services.phases import phase_times

    _fill(inventory, 1)
    r = reserve(inventory)
    _run_all()
    op = r.operations.get(kind=OperationKind.PROVISION)
    assert [name for name, _ in phase_times(op)] == ["new host keys", "burn-in", "handover"]
    assert all(seconds >= 0 for _, seconds in phase_times(op))


def test_operators_see_the_pool_on_the_fleet_page_and_customers_the_time_to_ready(
    client, inventory, settings
):
    from django.urls import reverse

    settings.NEOCLOUD_POST_SECONDS_ESTIMATE = 240
    client.force_login(inventory.owner)
    body = client.get(reverse("portal:catalog")).content.decode()
    assert "Ready in about 11 minutes" in body  # two POSTs of 4 minutes and the work: nothing measured yet
    _fill(inventory, 1)
    body = client.get(reverse("portal:catalog")).content.decode()
    assert 'data-testid="ready-h100-8x">Ready in about 1 minute<' in body
    client.force_login(inventory.operator)
    fleet = client.get(reverse("portal:ops_fleet")).content.decode()
    assert 'id="warm-pools"' in fleet and 'data-type="h100-8x"' in fleet
