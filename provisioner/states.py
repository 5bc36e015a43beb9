"""The node lifecycle: every state, every event and every allowed transition, in one table.

Only :func:`provisioner.lifecycle.process_event` changes ``Node.state``, and it looks the
transition up here. The table is tested exhaustively (tests/test_states.py).

    enrolling -> available -> reserved -> deploying -> burning_in -> active -> releasing -> cleaning -> available
plus maintenance (operator hold), quarantined (failed burn-in or hardware fault) and error (a step failed).
"""

from __future__ import annotations

from django.db import models


class NodeState(models.TextChoices):
    ENROLLING = "enrolling", "Enrolling"
    AVAILABLE = "available", "Available"
    RESERVED = "reserved", "Reserved"
    DEPLOYING = "deploying", "Deploying"
    BURNING_IN = "burning_in", "Burning in"
    ACTIVE = "active", "Active"
    RELEASING = "releasing", "Releasing"
    CLEANING = "cleaning", "Cleaning"
    MAINTENANCE = "maintenance", "Maintenance"
    QUARANTINED = "quarantined", "Quarantined"
    ERROR = "error", "Error"
    # The warm pool: deployed with an image and burned in by the operator's pool, powered on, reachable by
    # no customer (no reservation; only our provisioning key logs in). Counted as available capacity.
    WARMING = "warming", "Warming up"
    WARM = "warm", "Warm"


class NodeEvent(models.TextChoices):
    ENROLLED = "enrolled", "enrollment finished"
    RESERVE = "reserve", "reserved for a customer"
    UNRESERVE = "unreserve", "reservation given up before deploy"
    DEPLOY = "deploy", "deploy started"
    DEPLOYED = "deployed", "image deployed, burn-in starts"
    BURNIN_PASSED = "burnin_passed", "burn-in passed, handed over"
    BURNIN_FAILED = "burnin_failed", "burn-in failed"
    REIMAGE = "reimage", "reimage started"
    RELEASE = "release", "release started"
    CLEAN = "clean", "wipe started"
    CLEANED = "cleaned", "wipe finished"
    FAIL = "fail", "a step failed"
    MAINTAIN = "maintain", "operator hold"
    UNMAINTAIN = "unmaintain", "operator hold lifted"
    QUARANTINE = "quarantine", "quarantined"
    UNQUARANTINE = "unquarantine", "returned from quarantine after repair"
    RECOVER = "recover", "operator retry after an error"
    WARM_UP = "warm_up", "taken into the warm pool: deploy and burn-in start"
    WARMED = "warmed", "deployed and burned in: warm"


S = NodeState
E = NodeEvent

# Named groups, like Ironic's STABLE_STATES: the engine and the UI use these, not ad-hoc lists.
STABLE_STATES = frozenset({S.AVAILABLE, S.RESERVED, S.ACTIVE, S.MAINTENANCE, S.QUARANTINED, S.ERROR, S.WARM})
TRANSIENT_STATES = frozenset({S.ENROLLING, S.DEPLOYING, S.BURNING_IN, S.RELEASING, S.CLEANING, S.WARMING})
# States a node may be in while it belongs to a customer's reservation.
LEASED_STATES = frozenset({S.RESERVED, S.DEPLOYING, S.BURNING_IN, S.ACTIVE})
# Nodes that can be allocated to a reservation window (now or later): everything but operator holds and faults.
ALLOCATABLE_STATES = frozenset(
    {S.AVAILABLE, S.RESERVED, S.DEPLOYING, S.BURNING_IN, S.ACTIVE, S.RELEASING, S.CLEANING, S.WARMING, S.WARM}
)
# Free to be taken by a reservation that starts now: idle, or warm (a warm server of the asked image is
# handed over as it is, one of another image is deployed over like an idle one).
FREE_NOW_STATES = frozenset({S.AVAILABLE, S.WARM})

TRANSITIONS: dict[tuple[NodeState, NodeEvent], NodeState] = {
    (S.ENROLLING, E.ENROLLED): S.AVAILABLE,
    (S.AVAILABLE, E.RESERVE): S.RESERVED,
    (S.RESERVED, E.UNRESERVE): S.AVAILABLE,
    (S.RESERVED, E.DEPLOY): S.DEPLOYING,
    (S.DEPLOYING, E.DEPLOYED): S.BURNING_IN,
    (S.BURNING_IN, E.BURNIN_PASSED): S.ACTIVE,
    (S.BURNING_IN, E.BURNIN_FAILED): S.QUARANTINED,
    (S.ACTIVE, E.REIMAGE): S.DEPLOYING,
    (S.ACTIVE, E.RELEASE): S.RELEASING,
    (S.RESERVED, E.RELEASE): S.RELEASING,
    # A customer may release while the server is still being prepared; the engine cancels that work first.
    (S.DEPLOYING, E.RELEASE): S.RELEASING,
    (S.BURNING_IN, E.RELEASE): S.RELEASING,
    (S.RELEASING, E.CLEAN): S.CLEANING,
    (S.CLEANING, E.CLEANED): S.AVAILABLE,
    (S.CLEANING, E.MAINTAIN): S.MAINTENANCE,  # the wipe ends on hold: an operator asked while it was leased
    (S.AVAILABLE, E.CLEAN): S.CLEANING,  # operator reimage/wipe of an idle node
    (S.AVAILABLE, E.MAINTAIN): S.MAINTENANCE,
    (S.ERROR, E.MAINTAIN): S.MAINTENANCE,
    (S.QUARANTINED, E.MAINTAIN): S.MAINTENANCE,
    (S.MAINTENANCE, E.UNMAINTAIN): S.CLEANING,  # a node back from a hold is wiped before it is leased again
    (S.ERROR, E.RECOVER): S.CLEANING,
    (S.QUARANTINED, E.UNQUARANTINE): S.CLEANING,
    (S.AVAILABLE, E.QUARANTINE): S.QUARANTINED,
    (S.ACTIVE, E.QUARANTINE): S.QUARANTINED,
    (S.ERROR, E.QUARANTINE): S.QUARANTINED,
    (S.MAINTENANCE, E.QUARANTINE): S.QUARANTINED,
    (S.AVAILABLE, E.WARM_UP): S.WARMING,
    (S.WARMING, E.WARMED): S.WARM,
    (S.WARMING, E.BURNIN_FAILED): S.QUARANTINED,
    (S.WARM, E.RESERVE): S.RESERVED,
    (S.WARM, E.CLEAN): S.CLEANING,  # the pool shrank or its image changed: wiped back to the pool
    (S.WARM, E.MAINTAIN): S.MAINTENANCE,
    (S.WARM, E.QUARANTINE): S.QUARANTINED,
}
# Any transient state can fail into error: a step failed and the operation gave up.
for _state in TRANSIENT_STATES:
    TRANSITIONS[(_state, E.FAIL)] = S.ERROR


def next_state(state: str, event: str) -> NodeState | None:
    """The state that ``event`` leads to from ``state``, or None when the table forbids it."""
    try:
        return TRANSITIONS.get((NodeState(state), NodeEvent(event)))
    except ValueError:
        return None


def allowed_events(state: str) -> list[NodeEvent]:
    """Events allowed from ``state``, for the UI and for error messages."""
    return [event for (from_state, event) in TRANSITIONS if from_state == state]


class PowerStateChoice(models.TextChoices):
    ON = "on", "On"
    OFF = "off", "Off"
    UNKNOWN = "unknown", "Unknown"


class ReservationState(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"  # window in the future
    PROVISIONING = "provisioning", "Provisioning"
    ACTIVE = "active", "Active"
    RELEASING = "releasing", "Releasing"
    RELEASED = "released", "Released"
    FAILED = "failed", "Failed"
    WAITING = "waiting", "Waiting for capacity"  # a server failed burn-in and no spare was free


OPEN_RESERVATION_STATES = frozenset(
    {
        ReservationState.SCHEDULED,
        ReservationState.PROVISIONING,
        ReservationState.ACTIVE,
        ReservationState.WAITING,
    }
)


class OperationKind(models.TextChoices):
    PROVISION = "provision", "Provision"
    REIMAGE = "reimage", "Reimage"
    RELEASE = "release", "Release"
    CLEAN = "clean", "Wipe"  # a clean operation wipes the disk (release, reimage of an idle server)
    BURNIN = "burnin", "Burn-in"
    POWER = "power", "Power"
    WARM_UP = "warm_up", "Warm up"  # deploy and burn in a server of the warm pool


class OperationState(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    # Parked on the outside world (the deploy agent, the OS's first boot, a wipe): no worker holds it; an
    # event (the agent's report) or its recheck time queues it again, and it fails once its deadline passes.
    WAITING = "waiting", "Waiting"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED_OPERATION_STATES = frozenset(
    {OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED}
)
# Not finished: queued, run by a worker, or parked in a wait. An operation in one of these holds its node.
OPEN_OPERATION_STATES = (OperationState.PENDING, OperationState.RUNNING, OperationState.WAITING)


class StepState(models.TextChoices):
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"  # the step's attempt is parked (its operation is waiting)
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    SKIPPED = "skipped", "Skipped"
