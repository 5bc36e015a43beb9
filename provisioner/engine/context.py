"""What a step function gets: the node, the operation, a log, cancellation, and the hardware."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from provisioner.models import LogLine, Node, Operation, Step
from provisioner.services.audit import Actor


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


class StepCancelled(Exception):
    pass
