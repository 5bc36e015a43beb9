"""Rolling bulk reimage: at most ``max_parallel`` nodes at once; halt once more than ``failure_budget`` fail.

A rollout's progress is derived from its operations (one per started node) plus "refused" audit events
for nodes that could not be started (busy, leased without force, in a state that cannot be reimaged).
A reimage that ends cancelled was interrupted, not failed (its customer released the server meanwhile,
and the release's wipe owns it now): the node counts as skipped, done but not against the failure budget.
Every decision is taken with the Rollout row locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
IMMEDIATE transactions serialize writers), so two workers finishing operations at the same moment cannot
both start "the last free slot" or start the same node twice.

An operator may cancel a running rollout (``cancel_rollout``): no node not yet started is started after the
cancel commits (the cancel takes the same lock as the advance that starts nodes), and the reimages already
started (pending or running) run to completion: each has already taken its node out of the pool (the node
is cleaning or its customer's reimage is under way), so stopping it half-way would strand the node in a
transient state. The rollout stays ``cancelling`` until the last of them ends, then turns ``cancelled``
with a message counting what was reimaged, failed, skipped and not started.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone

from provisioner import hardware
from provisioner.errors import (
    IllegalTransition,
    InvalidNodeData,
    InvalidNodesData,
    InvalidRequest,
    NeocloudError,
)
from provisioner.lifecycle import Actor, record
from provisioner.models import AuditEvent, Image, Node, Operation, Rollout
from provisioner.services import nodes as node_service
from provisioner.states import LEASED_STATES, OPEN_OPERATION_STATES, NodeState, OperationKind, OperationState

MAX_ROLLOUT_NODES = 10_000
REFUSED_ACTION = "rollout_refused"
_FAILED = (OperationState.FAILED,)
# Only a release cancels an operation (it sets cancel_requested): no server failed.
_SKIPPED = (OperationState.CANCELLED,)
_IN_FLIGHT = OPEN_OPERATION_STATES


@dataclasses.dataclass(frozen=True)
class RolloutProgress:
    """Counts of a rollout; ``operations`` maps node id to its operation, ``refused`` node id to why.
    ``failed`` counts failed reimages and refused nodes (they spend the failure budget); ``skipped`` counts
    reimages cancelled because the customer released the server meanwhile (they do not)."""

    total: int
    succeeded: int
    failed: int
    skipped: int
    running: int
    pending: int
    refused: dict[int, str]
    operations: dict[int, Operation]

    @property
    def done(self) -> int:
        """Nodes the rollout is finished with, whatever the outcome."""
        return self.succeeded + self.failed + self.skipped


def progress(rollout: Rollout) -> RolloutProgress:
    """Where a rollout stands now. Read-only."""
    ops: dict[int, Operation] = {}
    for op in Operation.objects.filter(rollout=rollout).order_by("created_at", "id"):
        ops[op.node_id] = op  # a node has one operation per rollout; the latest wins if ever more
    refused = {
        int(e.data["node"]): e.reason
        for e in AuditEvent.objects.filter(action=REFUSED_ACTION, data__rollout=rollout.pk)
    }
    succeeded = sum(op.state == OperationState.SUCCEEDED for op in ops.values())
    failed = sum(op.state in _FAILED for op in ops.values()) + len(refused)
    skipped = sum(op.state in _SKIPPED for op in ops.values())
    running = sum(op.state in _IN_FLIGHT for op in ops.values())
    started = set(ops) | set(refused)
    pending = sum(1 for nid in rollout.node_ids if nid not in started)
    return RolloutProgress(
        total=len(rollout.node_ids),
        succeeded=succeeded,
        failed=failed,
        skipped=skipped,
        running=running,
        pending=pending,
        refused=refused,
        operations=ops,
    )


def start_rollout(
    nodes: Iterable[Node],
    *,
    actor: Actor,
    image: Image | None = None,
    max_parallel: int,
    failure_budget: int,
    force: bool = False,
    named: bool = False,
) -> Rollout:
    """Create a rollout over ``nodes`` (in the given order) and start its first ``max_parallel`` reimages.

    Not idempotent: each call creates a new rollout. Without ``force`` a rollout that includes a node leased
    to a customer is refused as a whole, before anything starts.

    A node whose record fails its drivers' validation (no image to write, no BMC address, ...) is refused
    when its turn comes, like a busy node: recorded with the reason, counted against the failure budget.
    ``named``: the operator named the nodes one by one (not a filter); then such a node refuses the whole
    rollout before anything starts, naming every such node and field: they asked for exactly these.

    :raises InvalidRequest: no nodes, duplicates, or max_parallel < 1.
    :raises IllegalTransition: a node is leased and ``force`` is false (the message names the nodes).
    :raises InvalidNodesData: ``named`` and nodes fail validation.
    """
    node_list = list(nodes)
    if not node_list:
        raise InvalidRequest("a rollout needs at least one node")
    if len(node_list) > MAX_ROLLOUT_NODES:
        raise InvalidRequest(f"a rollout may cover at most {MAX_ROLLOUT_NODES} nodes")
    ids = [n.pk for n in node_list]
    if len(set(ids)) != len(ids):
        raise InvalidRequest("each node may appear only once in a rollout")
    if max_parallel < 1:
        raise InvalidRequest("max_parallel must be at least 1")
    if failure_budget < 0:
        raise InvalidRequest("failure_budget cannot be negative")
    if not force:
        leased = list(Node.objects.filter(pk__in=ids, state__in=LEASED_STATES).values_list("name", flat=True))
        if leased:
            raise IllegalTransition(
                f"{len(leased)} node(s) are leased to customers ({', '.join(sorted(leased)[:10])}); "
                "leave them out or pass force to reimage them anyway"
            )
    if named:
        _refuse_invalid(node_list, image)
    with transaction.atomic():
        rollout = Rollout.objects.create(
            requested_by=actor.user,
            image=image,
            node_ids=ids,
            max_parallel=max_parallel,
            failure_budget=failure_budget,
            force=force,
        )
        record(
            actor,
            "rollout_start",
            reason=f"rollout {rollout.pk}: {len(ids)} node(s), {max_parallel} at a time, "
            f"failure budget {failure_budget}",
            data={"rollout": rollout.pk, "force": force},
        )
    return advance_rollout(rollout, actor=actor)


def _refuse_invalid(nodes: list[Node], image: Image | None) -> None:
    """Validate each node for the reimage it would get (see ``node_service.reimage``).

    :raises InvalidNodesData: naming every node that fails, with its field.
    """
    found = []
    for node in Node.objects.filter(pk__in=[n.pk for n in nodes]).select_related("server_type", "image"):
        if node.state not in node_service.REIMAGEABLE_STATES:
            continue  # refused when its turn comes, as before: its state may change meanwhile
        kind = OperationKind.REIMAGE if node.state == NodeState.ACTIVE else OperationKind.CLEAN
        try:
            hardware.validate_for(node, kind, image=image)
        except InvalidNodeData as exc:
            found.append(exc)
    if found:
        raise InvalidNodesData(sorted(found, key=lambda e: e.node), doing="reimaged")


def advance_rollout(rollout: Rollout | int, *, actor: Actor | None = None) -> Rollout:
    """Start the next nodes while fewer than ``max_parallel`` are in flight; halt when more than
    ``failure_budget`` have failed; mark the rollout succeeded when every node is done.

    Idempotent and safe to call concurrently (from every finished operation and from the scheduler):
    the Rollout row is locked for the whole decision.
    """
    actor = actor or Actor.system("rollout")
    pk = rollout if isinstance(rollout, int) else rollout.pk
    with transaction.atomic():
        locked = Rollout.objects.select_for_update().get(pk=pk)
        if locked.state == Rollout.State.CANCELLING:
            _finish_cancel_if_idle(locked, progress(locked), actor)
            return locked
        if locked.state != Rollout.State.RUNNING:
            return locked
        status = progress(locked)
        if status.failed > locked.failure_budget:
            _halt(locked, status, actor)
            return locked
        started = set(status.operations) | set(status.refused)
        waiting = [nid for nid in locked.node_ids if nid not in started]
        in_flight = status.running
        failed = status.failed
        for nid in waiting:
            if in_flight >= locked.max_parallel:
                break
            node = Node.objects.filter(pk=nid).first()
            if node is None:
                error: NeocloudError = InvalidRequest(f"node {nid} no longer exists")
            else:
                try:
                    node_service.reimage(
                        node,
                        actor=actor,
                        image=locked.image,
                        force=locked.force,
                        rollout=locked,
                        reason=f"rolling reimage {locked.pk}",
                    )
                    in_flight += 1
                    continue
                except NeocloudError as exc:
                    error = exc
            failed += 1
            record(
                actor,
                REFUSED_ACTION,
                node=node,
                reason=f"rollout {locked.pk}: {error}",
                data={"rollout": locked.pk, "node": nid, "code": error.code},
            )
            if failed > locked.failure_budget:
                _halt(locked, progress(locked), actor)
                return locked
        final = progress(locked)
        if final.pending == 0 and final.running == 0:
            _end(locked, Rollout.State.SUCCEEDED, _finished_message(final, locked.failure_budget), actor)
    return locked


def _finished_message(status: RolloutProgress, failure_budget: int) -> str:
    if status.failed == 0 and status.skipped == 0:
        return f"all {status.total} node(s) reimaged"
    parts = [f"{status.succeeded} of {status.total} node(s) reimaged"]
    if status.failed:
        parts.append(f"{status.failed} failed (within the failure budget of {failure_budget})")
    if status.skipped:
        parts.append(f"{status.skipped} skipped (released by their customer during the rollout)")
    return "; ".join(parts)


def _end(rollout: Rollout, state: str, message: str, actor: Actor) -> None:
    """End a rollout (locked by the caller) in ``state`` with ``message``, audited."""
    rollout.state = state
    rollout.finished_at = timezone.now()
    rollout.message = message
    rollout.save(update_fields=["state", "finished_at", "message"])
    action = "rollout_halt" if state == Rollout.State.HALTED else "rollout_finish"
    record(actor, action, reason=f"rollout {rollout.pk}: {message}", data={"rollout": rollout.pk})


def _halt(rollout: Rollout, status: RolloutProgress, actor: Actor) -> None:
    message = (
        f"halted: {status.failed} node(s) failed, more than the failure budget of {rollout.failure_budget}; "
        f"{status.pending} node(s) not started"
        + (f", {status.skipped} skipped (released by their customer)" if status.skipped else "")
        + (f", {status.running} still running to completion" if status.running else "")
    )
    _end(rollout, Rollout.State.HALTED, message, actor)


def cancel_rollout(rollout: Rollout | int, *, actor: Actor, reason: str) -> Rollout:
    """Cancel a running rollout: start no further node; the reimages already started run to completion.

    The rollout turns ``cancelling`` while any of its reimages is pending or running, ``cancelled`` (with its
    final counts in ``message``) at once if none is, or else when the last one ends (its finish hook, or the
    scheduler's pass, advances the rollout). Takes the rollout's row lock, like ``advance_rollout``: an
    advance that has started nodes before the cancel commits counts them as running; one after starts none.

    Idempotent: cancelling a rollout already cancelling or cancelled returns it unchanged (not audited again).

    :raises InvalidRequest: ``reason`` is blank.
    :raises IllegalTransition: the rollout has already succeeded or halted (nothing is left to cancel).
    """
    reason = reason.strip()
    if not reason:
        raise InvalidRequest("say why the rollout is cancelled (reason)")
    pk = rollout if isinstance(rollout, int) else rollout.pk
    with transaction.atomic():
        locked = Rollout.objects.select_for_update().get(pk=pk)
        if locked.state in (Rollout.State.CANCELLING, Rollout.State.CANCELLED):
            return locked
        if locked.state != Rollout.State.RUNNING:
            raise IllegalTransition(
                f"rollout {locked.pk} has already {locked.state}; only a running rollout can be cancelled"
            )
        status = progress(locked)
        locked.state = Rollout.State.CANCELLING
        locked.cancelled_by = actor.user
        locked.cancel_reason = reason
        locked.message = (
            f"cancelling ({reason}): {status.running} running reimage(s) finish, "
            f"{status.pending} node(s) not started"
        )
        locked.save(update_fields=["state", "cancelled_by", "cancel_reason", "message"])
        record(
            actor,
            "rollout_cancel",
            reason=f"rollout {locked.pk}: {reason}",
            data={"rollout": locked.pk, "running": status.running, "not_started": status.pending},
        )
        _finish_cancel_if_idle(locked, status, actor)
    return locked


def _finish_cancel_if_idle(rollout: Rollout, status: RolloutProgress, actor: Actor) -> None:
    """A cancelling rollout (locked by the caller) turns cancelled once none of its reimages is in flight."""
    if status.running:
        return
    parts = [f"{status.succeeded} of {status.total} node(s) reimaged"]
    if status.failed:
        parts.append(f"{status.failed} failed")
    if status.skipped:
        parts.append(f"{status.skipped} skipped (released by their customer during the rollout)")
    parts.append(f"{status.pending} not started")
    _end(rollout, Rollout.State.CANCELLED, f"cancelled ({rollout.cancel_reason}): " + "; ".join(parts), actor)


def advance_running_rollouts(actor: Actor | None = None) -> int:
    """Scheduler pass: advance every running or cancelling rollout (catches a lost finish hook: a cancelling
    rollout whose last reimage ended turns cancelled). Returns how many."""
    count = 0
    active = (Rollout.State.RUNNING, Rollout.State.CANCELLING)
    for pk in Rollout.objects.filter(state__in=active).values_list("pk", flat=True):
        advance_rollout(pk, actor=actor or Actor.system("scheduler"))
        count += 1
    return count
