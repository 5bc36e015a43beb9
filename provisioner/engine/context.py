"""What a step function gets: the node, the operation, a log, cancellation, waits, and the hardware."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from typing import Any

from django.utils import timezone

from provisioner.errors import WaitTimedOut
from provisioner.lifecycle import Actor
from provisioner.models import LogLine, Node, Operation, Step


@dataclasses.dataclass
class StepContext:
    operation: Operation
    step: Step
    actor: Actor
    cancelled: threading.Event

    @property
    def node(self) -> Node:
        return self.operation.node

    @property
    def params(self) -> dict[str, Any]:
        return self.operation.params

    @property
    def data(self) -> dict[str, Any]:
        """What this attempt of the step has done so far (kept across its waits; see :meth:`save_data`)."""
        return self.step.data

    def save_data(self, **changes: Any) -> None:
        """Record progress of this attempt (``ctx.data``) before acting on it, so that the step, run again
        after a wait, knows where it stands."""
        self.step.data.update(changes)
        Step.objects.filter(pk=self.step.pk).update(data=self.step.data)

    def refresh(self) -> None:
        self.operation.refresh_from_db()
        self.operation.node.refresh_from_db()

    def log(self, message: str, level: str = LogLine.Level.INFO, data: dict[str, Any] | None = None) -> None:
        """Append a line to the operation's log (shown live in the portal)."""
        LogLine.objects.create(
            operation=self.operation, step=self.step, level=level, message=message, data=data
        )

    def __call__(
        self, message: str, level: str = LogLine.Level.INFO, data: dict[str, Any] | None = None
    ) -> None:
        self.log(message, level, data)

    def check_cancelled(self) -> None:
        """Long steps call this between waits; it raises when the step timed out or the worker lost its lease."""
        if self.cancelled.is_set():
            raise StepCancelled("the step was interrupted (timeout or lost lease)")

    def wait(self, what: str, *, timeout: float, recheck_every: float = 30.0) -> None:
        """Leave the worker until ``what`` happens: the engine parks the operation (state waiting) and runs
        this step again when an event wakes it (:func:`provisioner.engine.queue.wake`) or after
        ``recheck_every`` seconds, whichever comes first. The step then finds what it waited for, or calls
        ``wait`` again. Always raises.

        The wait started the first time this attempt waited for ``what``; once ``timeout`` seconds have
        passed since then it raises :class:`WaitTimedOut` (retryable) instead of parking again.

        :raises WaitRequested: park, and run the step again later.
        :raises WaitTimedOut: ``what`` did not happen in time.
        """
        now = timezone.now()
        waits = self.step.data.setdefault("_waits", {})
        if what not in waits:
            self.save_data(_waits={**waits, what: now.isoformat()})
            waits = self.step.data["_waits"]
        since = dt.datetime.fromisoformat(waits[what])
        deadline = since + dt.timedelta(seconds=timeout)
        if now >= deadline:
            raise WaitTimedOut(f"{what}: nothing within {timeout:.0f} s")
        recheck_at = min(deadline, now + dt.timedelta(seconds=recheck_every))
        raise WaitRequested(what, since=since, deadline=deadline, recheck_at=recheck_at)


class StepCancelled(Exception):
    pass


class WaitRequested(BaseException):
    """Raised by :meth:`StepContext.wait`: park the operation until an event or ``recheck_at``. A
    BaseException, like GeneratorExit: control flow that no ``except Exception`` of a step or driver (a
    failure handler that powers the node off) may take for a failure."""

    def __init__(self, what: str, *, since: dt.datetime, deadline: dt.datetime, recheck_at: dt.datetime):
        super().__init__(f"waiting for {what}")
        self.what = what
        self.since = since
        self.deadline = deadline
        self.recheck_at = recheck_at
