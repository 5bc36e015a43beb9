"""The Ansible deploy driver waits for the deploy agent as the engine's wait, not in a playbook: no report
yet parks the step; a failed, superseded or stalled agent fails it in words; a checksum mismatch is final."""

from __future__ import annotations

import threading
import time

import pytest

from provisioner.boot import tickets
from provisioner.drivers.ansible.drivers import WIPE_STALL_TIMEOUT, _agent_result
from provisioner.engine.context import StepContext, WaitRequested
from provisioner.engine.queue import create_operation
from provisioner.errors import DeployFailed, ImageChecksumMismatch
from provisioner.lifecycle import Actor
from provisioner.models import DeployTicket, Node

pytestmark = pytest.mark.django_db


def _ctx(kind: str, step: str) -> tuple[StepContext, DeployTicket]:
    node = Node.objects.first()
    op = create_operation(kind, node)
    ctx = StepContext(op, op.steps.get(name=step), Actor.system("test"), threading.Event())
    ticket = tickets.open_ticket(node, op, {"action": "deploy"})
    ctx.save_data(ticket=ticket.pk, phase="agent")
    return ctx, ticket


def test_no_report_yet_parks_the_step_until_the_agent_reports(inventory):
    ctx, ticket = _ctx("provision", "deploy")
    with pytest.raises(WaitRequested) as waited:
        _agent_result(ctx, "the deploy agent", 900)
    assert waited.value.what == "the deploy agent"
    assert (waited.value.deadline - waited.value.since).total_seconds() == 900
    tickets.record_result(ticket, {"status": "ok", "bytes_written": 10})
    assert _agent_result(ctx, "the deploy agent", 900)["bytes_written"] == 10


@pytest.mark.parametrize(
    ("result", "error", "retryable"),
    [
        (
            {"status": "failed", "error_code": "image_checksum_mismatch", "message": "sha256 differs"},
            ImageChecksumMismatch,
            False,
        ),
        ({"status": "failed", "error_code": "disk_error", "message": "no disk"}, DeployFailed, True),
        ({"status": "superseded"}, DeployFailed, True),
    ],
)
def test_a_failed_or_superseded_agent_fails_the_attempt(inventory, result, error, retryable):
    ctx, ticket = _ctx("provision", "deploy")
    DeployTicket.objects.filter(pk=ticket.pk).update(result=result, result_at=ticket.created_at)
    with pytest.raises(error) as failed:
        _agent_result(ctx, "the deploy agent", 900)
    assert failed.value.retryable is retryable


def test_a_wipe_that_stops_progressing_fails_and_one_that_progresses_waits_on(inventory):
    ctx, ticket = _ctx("clean", "wipe")
    DeployTicket.objects.filter(pk=ticket.pk).update(progress={"stage": "erase", "percent": 40})
    with pytest.raises(WaitRequested):
        _agent_result(ctx, "the wipe", 6 * 3600, stall_timeout=WIPE_STALL_TIMEOUT)
    # the same progress, seen again after more than the stall timeout: the wipe is stuck
    ctx.save_data(progress_at=time.time() - WIPE_STALL_TIMEOUT - 5)
    with pytest.raises(DeployFailed, match="no progress reported for 6"):
        _agent_result(ctx, "the wipe", 6 * 3600, stall_timeout=WIPE_STALL_TIMEOUT)
    # new progress resets the clock
    DeployTicket.objects.filter(pk=ticket.pk).update(progress={"stage": "erase", "percent": 41})
    with pytest.raises(WaitRequested):
        _agent_result(ctx, "the wipe", 6 * 3600, stall_timeout=WIPE_STALL_TIMEOUT)
