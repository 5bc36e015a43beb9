"""A long burn-in leaves the worker: started on the lab server as an Ansible async job over real SSH, the
operation parks while the GPUs are loaded, and the report is collected afterwards (the job's files and the
copied agent removed from the server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.models import Node, Operation
from provisioner.states import OperationKind, ReservationState
from tests.e2e.conftest import wait_reservation_state
from tests.e2e.test_lab_lifecycle import TIMEOUT, _reserve

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_a_long_burnin_runs_detached_while_its_operation_waits(lab, lab_workers, customers):
    lab_workers.env["NEOCLOUD_BURNIN_DETACH_AFTER_SECONDS"] = "2"
    lab_workers.worker()
    lab_workers.scheduler()
    # the simulated load lasts 6 s here: longer than the 2 s above, so it runs detached
    for node in Node.objects.all():
        node.driver_info = {**node.driver_info, "burnin_load_seconds": 6}
        node.save(update_fields=["driver_info"])
    reservation = _reserve(customers["acme"], 1)
    wait_reservation_state(reservation, ReservationState.ACTIVE, lab_workers, TIMEOUT)
    node = Node.objects.get(reservation=reservation)
    op = Operation.objects.get(node=node, kind=OperationKind.PROVISION)
    messages = list(op.log_lines.values_list("message", flat=True))
    started = [m for m in messages if m.startswith(f"burn-in started on {node.name}")]
    assert started, messages
    assert any(m.startswith("waiting for the burn-in") for m in messages), messages
    assert any(m.startswith("TASK [Collect the burn-in report]") for m in messages)
    report = node.burnin_reports.get()
    assert report.passed and report.report["checks"]
    # the job cleaned up after itself: no agent left in /tmp of the (simulated) server
    assert not list(Path("/tmp").glob(f"neocloud-burnin-{op.pk}-*.pyz"))
