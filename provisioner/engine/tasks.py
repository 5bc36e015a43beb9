"""The engine's task, queued through Django's Tasks API (django-tasks backport, database backend)."""

from __future__ import annotations

from django_tasks import task


@task(queue_name="default")
def execute_operation(operation_id: int) -> str:
    """Run an operation to its end or its next wait in this worker (see engine/runner.py). Queued on the
    node's site queue (engine/queue.py)."""
    from provisioner.engine.runner import execute

    return str(execute(operation_id))
