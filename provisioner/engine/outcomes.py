"""How the engine announces that an operation ended, without knowing who listens.

The engine runs operations; what an ending means for reservations, spares, quarantine and rollouts is the
services' business. They register one listener at start-up (``ProvisionerConfig.ready``), as Ironic's
conductor leaves notifications to others instead of importing its API. The engine calls the listeners
after the operation's final state is written; what a listener that died left undone (its process killed in
between) the scheduler's reconcilers repair (settle_stranded_nodes, settle_finished_reservations).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from provisioner.models import Operation, Step
from provisioner.states import OperationState

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OperationEnded:
    """An operation reached ``state`` (succeeded, failed or cancelled). For a failure: the step that failed
    (None when the engine gave up on it, e.g. its worker died too often), the error it raised (None when
    there was none to keep) and the sentence recorded."""

    operation: Operation
    state: OperationState
    actor: Any  # provisioner.lifecycle.Actor
    step: Step | None = None
    error: BaseException | None = None
    message: str = ""


Listener = Callable[[OperationEnded], None]
_listeners: list[Listener] = []


def listen(listener: Listener) -> None:
    """Register a listener (idempotent: one registration per function)."""
    if listener not in _listeners:
        _listeners.append(listener)


def announce(ended: OperationEnded) -> None:
    """Tell every listener. Without one (a misconfigured installation), say so loudly: reservations would
    never become active."""
    if not _listeners:
        log.error(
            "operation %s %s, but nothing listens for operations ending", ended.operation.pk, ended.state
        )
    for listener in _listeners:
        listener(ended)
