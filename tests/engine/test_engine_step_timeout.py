"""A step that overruns its timeout is interrupted; the engine waits for it to stop before it tries the step
again (or fails the operation), so two attempts never drive the same node at once."""

from __future__ import annotations

import threading
import time

import pytest

from provisioner.drivers.ansible import runner as ansible
from provisioner.engine import queue, runner
from provisioner.engine.registry import STEPS, StepSpec
from provisioner.models import Node, Operation
from provisioner.states import OperationKind, OperationState


def test_the_engine_waits_longer_for_an_interrupted_step_than_a_driver_takes_to_stop():
    # a cancelled playbook may run on for ansible.CANCEL_GRACE_SECONDS before its caller returns
    assert runner.STEP_STOP_GRACE_SECONDS > ansible.CANCEL_GRACE_SECONDS


@pytest.mark.slow
def test_a_timed_out_attempt_still_stopping_is_not_overlapped_by_the_next(
    inventory, fake_hw_dir, monkeypatch, transactional_db
):
    running = 0
    overlap = []
    lock = threading.Lock()
    attempts = []

    def slow_to_stop(ctx):
        nonlocal running
        with lock:
            running += 1
            overlap.append(running)
            attempts.append(time.monotonic())
        try:
            if len(attempts) == 1:
                while not ctx.cancelled.is_set():
                    time.sleep(0.05)
                time.sleep(11)  # like a playbook finishing its current task before it stops
        finally:
            with lock:
                running -= 1

    monkeypatch.setitem(STEPS, "power_action", StepSpec("power_action", slow_to_stop, 0.3, 2))
    node = Node.objects.get(name="node-a100-8x-01")
    op = queue.create_operation(OperationKind.POWER, node, params={"action": "on"})
    assert runner.execute(op.pk, owner="w1") == OperationState.SUCCEEDED
    assert len(attempts) == 2 and max(overlap) == 1
    assert Operation.objects.get(pk=op.pk).steps.get().attempts == 2
