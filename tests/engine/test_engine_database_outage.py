"""A database that fails under a running operation (PostgreSQL restarted) interrupts it like a worker's death
instead of failing it: found by bench/soak.py, where each PostgreSQL restart failed the operations in flight
with "internal error (OperationalError: the connection is closed)" and sent their nodes to error."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import OperationalError
from django.utils import timezone

from provisioner.engine import queue, runner
from provisioner.engine.reaper import reap
from provisioner.engine.registry import STEPS, StepSpec
from provisioner.models import Node, Operation
from provisioner.states import NodeState, OperationKind, OperationState


@pytest.mark.django_db(transaction=True)
def test_a_step_whose_database_fails_leaves_its_operation_for_the_reaper_and_it_succeeds_resumed(
    inventory, fake_hw_dir, monkeypatch
):
    calls = []

    def database_restarts_once(ctx):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("the connection is closed")

    monkeypatch.setitem(STEPS, "power_action", StepSpec("power_action", database_restarts_once, 30, 1))
    node = Node.objects.get(name="node-a100-8x-01")
    op = queue.create_operation(OperationKind.POWER, node, params={"action": "on"})

    assert runner.execute(op.pk, owner="w1") == "lost"
    op.refresh_from_db()
    assert op.state == OperationState.RUNNING and op.error == ""
    assert Node.objects.get(pk=node.pk).state != NodeState.ERROR

    Operation.objects.filter(pk=op.pk).update(heartbeat_at=timezone.now() - dt.timedelta(hours=1))
    reap()
    assert runner.execute(op.pk, owner="w2") == OperationState.SUCCEEDED
    assert len(calls) == 2
    assert (
        Operation.objects.get(pk=op.pk).steps.get().attempts <= 1 + 1
    )  # one attempt, the interrupted one not counted
