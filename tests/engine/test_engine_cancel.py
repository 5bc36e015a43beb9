"""The engine in this process: a provisioning operation the customer cancels (by releasing) while one of its
steps is failing ends cancelled, and the release that now owns the node wipes it back into the pool."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from provisioner.drivers.fake_deploy import FakeBurnInDriver, FakeDeployDriver
from provisioner.engine.reaper import reap
from provisioner.engine.runner import execute
from provisioner.errors import DeployFailed
from provisioner.lifecycle import Actor, process_event
from provisioner.models import Node, Operation
from provisioner.services.reservations import release_reservation
from provisioner.states import (
    NodeEvent,
    NodeState,
    OperationKind,
    OperationState,
    ReservationState,
    StepState,
)
from tests.conftest import reserve


def _reserve(inv):
    return reserve(inv, label="o")


def test_a_step_failing_after_the_customer_released_cancels_the_operation_and_the_release_wipes(
    inventory, fake_hw_dir, monkeypatch, transactional_db
):
    r = _reserve(inventory)
    node = Node.objects.get(reservation=r)
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)

    def deploy_released_midway(self, request, log):
        # the customer releases while the image is being written; then the deploy agent gives up
        release_reservation(r, actor=Actor(user=inventory.owner, label="o"))
        raise DeployFailed(f"the deploy agent on {request.node_name} stopped without reporting back")

    monkeypatch.setattr(FakeDeployDriver, "deploy", deploy_released_midway)
    assert execute(provision.pk, owner="w1") == OperationState.CANCELLED
    node.refresh_from_db()
    assert node.state == NodeState.RELEASING  # the release's transition stands
    # the interrupted step and the ones after it are skipped, none left pending or running
    assert list(provision.steps.order_by("index").values_list("state", flat=True)) == [
        StepState.SUCCEEDED,
        StepState.SUCCEEDED,  # network_provisioning: nothing to do at a site whose network is not managed
        *[StepState.SKIPPED] * 6,
    ]
    release = Operation.objects.get(node=node, kind=OperationKind.RELEASE)
    assert execute(release.pk, owner="w1") == OperationState.SUCCEEDED
    node.refresh_from_db()
    assert node.state == NodeState.AVAILABLE and node.reservation_id is None
    r.refresh_from_db()
    assert r.state == ReservationState.RELEASED


def test_the_reaper_cancels_rather_than_fails_a_dead_workers_cancelled_operation(
    inventory, fake_hw_dir, settings, transactional_db
):
    settings.NEOCLOUD_MAX_RECOVERIES = 0
    r = _reserve(inventory)
    node = process_event(Node.objects.get(reservation=r), NodeEvent.DEPLOY, actor=Actor.system("t"))
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    stale = timezone.now() - dt.timedelta(seconds=60)
    Operation.objects.filter(pk=provision.pk).update(
        state=OperationState.RUNNING, worker_id="dead:1", heartbeat_at=stale
    )
    Node.objects.filter(pk=node.pk).update(
        lease_owner="dead:1", lease_operation=provision, lease_expires_at=stale
    )
    release_reservation(r, actor=Actor(user=inventory.owner, label="o"))
    # out of recoveries, but a cancelled operation is resumed only to record its cancellation
    assert reap() == {"resumed": 1, "failed": 0}
    assert execute(provision.pk, owner="w2") == OperationState.CANCELLED
    node.refresh_from_db()
    assert node.state == NodeState.RELEASING
    assert not provision.steps.exclude(state__in=[StepState.SUCCEEDED, StepState.SKIPPED]).exists()
    release = Operation.objects.get(node=node, kind=OperationKind.RELEASE)
    assert execute(release.pk, owner="w1") == OperationState.SUCCEEDED
    assert Node.objects.get(pk=node.pk).state == NodeState.AVAILABLE


def test_a_burnin_that_fails_while_the_customer_releases_keeps_the_server_out_of_the_pool(
    inventory, fake_hw_dir, monkeypatch, transactional_db
):
    r = _reserve(inventory)
    node = Node.objects.get(reservation=r)
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)

    def burnin_released_midway(self, node_name, expectations, log):
        release_reservation(r, actor=Actor(user=inventory.owner, label="o"))
        message = "GPU 3 reported Xid 79 (fell off the bus)"
        return {
            "passed": False,
            "summary": message,
            "checks": [{"name": "xid", "passed": False, "message": message}],
        }

    monkeypatch.setattr(FakeBurnInDriver, "run", burnin_released_midway)
    assert execute(provision.pk, owner="w1") == OperationState.FAILED
    node.refresh_from_db()
    assert node.state == NodeState.ERROR and "Xid 79" in node.state_reason
