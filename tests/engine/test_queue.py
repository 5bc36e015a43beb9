"""Operations created and queued in bulk: the same rows as one at a time, in a few statements."""

from __future__ import annotations

import pytest
from django.db import connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext
from django_tasks_db.models import DBTaskResult

from provisioner.engine.queue import create_operation, create_operations, enqueue, enqueue_many, site_queue
from provisioner.engine.registry import plan_for
from provisioner.engine.tasks import execute_operation
from provisioner.models import Node, Step
from provisioner.states import OperationKind

pytestmark = pytest.mark.django_db


def _task_row(op_id: int) -> dict:
    row = DBTaskResult.objects.get(args_kwargs__args__0=op_id)
    return {k: v for k, v in model_to_dict(row).items() if k not in ("id", "enqueued_at", "args_kwargs")} | {
        "args_kwargs": row.args_kwargs
    }


def test_bulk_queued_tasks_are_the_rows_the_backend_writes_one_at_a_time(
    inventory, django_capture_on_commit_callbacks
):
    nodes = list(Node.objects.filter(server_type__slug="h100-8x").order_by("name"))
    single = create_operation(OperationKind.PROVISION, nodes[0], requested_by=inventory.owner)
    with django_capture_on_commit_callbacks(execute=True):
        enqueue(single)  # one operation: the backend's own enqueue
    bulk = create_operations(OperationKind.PROVISION, nodes[1:], requested_by=inventory.owner)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        enqueue_many(bulk)
    assert len(callbacks) == 1
    expected = _task_row(single.pk)
    assert (
        expected["queue_name"] == site_queue("lab") and expected["task_path"] == execute_operation.module_path
    )
    for op in bulk:
        assert _task_row(op.pk) == {**expected, "args_kwargs": {"args": [op.pk], "kwargs": {}}}
    assert DBTaskResult.objects.count() == len(nodes)


def test_create_operations_plans_the_steps_of_each_in_two_statements(inventory):
    nodes = list(Node.objects.filter(server_type__slug="h100-8x").order_by("name"))
    with CaptureQueriesContext(connection) as ctx:
        ops = create_operations(OperationKind.RELEASE, nodes, requested_by=inventory.owner, params={"a": 1})
    assert len(ctx.captured_queries) == 2
    assert [op.node_id for op in ops] == [n.pk for n in nodes]
    names = [spec.name for spec in plan_for(OperationKind.RELEASE)]
    for op in ops:
        op.refresh_from_db()
        assert (op.kind, op.params, op.requested_by_id, op.state) == (
            "release",
            {"a": 1},
            inventory.owner.pk,
            "pending",
        )
        assert (
            list(Step.objects.filter(operation=op).order_by("index").values_list("name", flat=True)) == names
        )


def test_enqueue_many_reads_the_sites_once_unless_told(inventory, django_capture_on_commit_callbacks):
    nodes = list(Node.objects.filter(server_type__slug="h100-8x").order_by("name"))
    ops = create_operations(OperationKind.POWER, nodes)
    with CaptureQueriesContext(connection) as ctx:
        enqueue_many(ops)
    assert len(ctx.captured_queries) == 1
    with CaptureQueriesContext(connection) as ctx:
        enqueue_many(ops, queues={n.pk: "site-elsewhere" for n in nodes})
    assert len(ctx.captured_queries) == 0
