"""One switch session for every port of a switch due for the same move (issue 18's benchmark: a reservation
of 32 servers handed over at once meant 32 SSH logins on one switch, each 0.6-1.0 s here).

When a node's network step runs, it takes the switch's lock (``SwitchLock``: a claim in its ``Switch`` row, taken
and given back by single-row UPDATEs, so it holds across worker processes on PostgreSQL and SQLite and no
transaction stays open while the switch is driven), then gathers every *peer*: an operation of another node cabled to the same switch that stands at
the same step of the same kind of plan (``current_step`` is that step: every earlier step succeeded, so a
peer at ``network_tenant`` has had its own handover remove our key), not cancelled, not finished; at
``network_provisioning`` also the provisioning and warm-up operations not at the step yet (``EARLY_STEPS``).
It moves its own port and all its peers' ports in one call (``set_access_vlans``, or the step's ``apply``:
``join_tenant_networks`` at ``network_tenant``; one session: every port checked, moved and read back), and
records each node's port (``switch_vlan``,
``switch_checked_at``) and a line in each peer's operation log. A peer's own step, when its turn comes, finds
its port recorded on the wanted VLAN since it reached the step, under the same lock, and only records that
(no session of its own). A step that finds the lock held looks again for up to ``LOCK_LOOK_SECONDS`` (the
batch may cover it, or end) before it parks.

Gathering: before it takes the lock, a step whose reservation has other servers on the same switch that are
running the steps before this one (their operation is running, not parked on an agent or queued) may wait for
them, at most ``NEOCLOUD_SWITCH_BATCH_WAIT_SECONDS`` (default 0: off, since a step that finds the switch busy
parks, holding no worker thread, and joins the next batch; the batch's end wakes the steps it covered and one
still waiting, the next batch's leader).

A batch that fails records nothing for its peers: each peer's own step then runs its own batch (so a switch
that stays unreachable fails each one's step in the normal way, with the normal retries). A port the switch
does not have fails only its own node: the batch falls back to the leader's port alone (an unknown port
changes nothing on the switch), and the peer's own step then fails with the switch's sentence.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Callable, Sequence

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from provisioner import hardware
from provisioner.drivers.switch import SwitchDriver
from provisioner.engine.context import StepContext
from provisioner.engine.registry import PLANS
from provisioner.errors import SwitchCommandFailed, UnknownSwitchPort
from provisioner.models import LogLine, Node, Operation, Step, Switch
from provisioner.states import OperationKind, OperationState

OPEN = (OperationState.PENDING, OperationState.RUNNING, OperationState.WAITING)


@dataclasses.dataclass
class Move:
    """One node's port due to ``vlan``; ``extra`` is what the step needs besides (its attachments)."""

    operation: Operation
    node: Node
    vlan: int
    why: str
    extra: object = None
    # False: the step has work left even with the port on its VLAN (an attachment to mark or to end)
    settled: bool = True

    @property
    def port(self) -> str:
        return self.node.switch_port


# plan(operation) -> the node's move, or None: nothing to do for it (its step logs why)
PlanFn = Callable[[Operation], "Move | None"]
# apply/after(driver, moves): work in the same session (the moves, with gateways and publishing or withdrawing;
# then the records)
HookFn = Callable[[SwitchDriver, Sequence[Move]], None]

# Plans whose steps before ``network_provisioning`` never need the port elsewhere (the server is reserved or
# available, so on the provisioning or cleaning network already): a provisioning batch also takes the ports of
# their operations that have not reached the step yet, so a booking's servers are moved, and read back, in the
# session of its first server's step instead of in one session per wave of servers reaching it. A reimage is
# not among them: its server is its customer's, on the tenant network, until begin_reimage.
EARLY_STEPS: dict[str, frozenset[str]] = {
    "network_provisioning": frozenset({OperationKind.PROVISION, OperationKind.WARM_UP}),
}


# A step that finds the switch's lock held looks again every LOCK_LOOK_INTERVAL seconds for at most
# LOCK_LOOK_SECONDS (its port moved by that batch, or the lock free) before it parks.
LOCK_LOOK_SECONDS = 1.0
LOCK_LOOK_INTERVAL = 0.1


def _move_all(driver: SwitchDriver, moves: Sequence[Move]) -> None:
    driver.set_access_vlans({m.port: m.vlan for m in moves})


class SwitchLock:
    """The switch's batch lock, held in its ``Switch`` row (``batch_holder``, ``batch_until``): taken by one
    conditional UPDATE (free, or its holder's claim expired: a worker that died), given back by another. It
    holds across worker processes on PostgreSQL and SQLite alike, and keeps no transaction open while the
    switch is driven, so other operations write on meanwhile."""

    def __init__(self, ctx: StepContext, name: str) -> None:
        self.ctx, self.name = ctx, name
        self.holder = f"operation {ctx.operation.pk} {uuid.uuid4().hex[:12]}"
        self.ttl = dt.timedelta(seconds=ctx.step.timeout_seconds)

    @property
    def waiting_for(self) -> str:
        return f"switch {self.name} to be free (another step moves its ports)"[:120]

    def take(self) -> bool:
        """Take the lock if it is free (or its holder's claim expired). One conditional UPDATE."""
        now = timezone.now()
        return bool(
            Switch.objects.filter(name=self.name)
            .filter(Q(batch_holder="") | Q(batch_until__isnull=True) | Q(batch_until__lt=now))
            .update(batch_holder=self.holder, batch_until=now + self.ttl)
        )

    def holder_now(self) -> str:
        """Who holds the lock now ("" when free or its claim expired). One query."""
        row = Switch.objects.filter(name=self.name).values_list("batch_holder", "batch_until").first()
        if row is None or not row[0] or row[1] is None or row[1] < timezone.now():
            return ""
        return str(row[0])

    def give_back(self) -> None:
        Switch.objects.filter(name=self.name, batch_holder=self.holder).update(
            batch_holder="", batch_until=None
        )


def reached_at(operation: Operation, step_name: str):
    """When the operation reached ``step_name``: the end of the step before it (else its start). For a plan
    of ``EARLY_STEPS`` (nothing before the step moves the port), the operation's creation: a batch may have
    moved its port since, before the operation even started."""
    index = PLANS[operation.kind].index(step_name)
    if operation.kind in EARLY_STEPS.get(step_name, ()):
        return operation.created_at
    if index > 0:
        finished = (
            Step.objects.filter(operation=operation, index=index - 1)
            .values_list("finished_at", flat=True)
            .first()
        )
        if finished is not None:
            return finished
    return operation.started_at or operation.created_at


def peers(ctx: StepContext, step_name: str) -> list[Operation]:
    """Open operations of other nodes on the same switch standing at ``step_name`` (every earlier step done),
    or, for a plan of ``EARLY_STEPS``, not past it yet."""
    at_step = Q(pk__in=[])
    for kind, names in PLANS.items():
        if step_name in names:
            index = names.index(step_name)
            if kind in EARLY_STEPS.get(step_name, ()):
                at_step |= Q(kind=kind, current_step__lte=index)
            else:
                at_step |= Q(kind=kind, current_step=index)
    return list(
        Operation.objects.filter(at_step, state__in=OPEN, cancel_requested=False)
        .filter(node__switch_name=ctx.node.switch_name)
        .exclude(node_id=ctx.node.pk)
        .select_related("node")
        .order_by("node__switch_port")
    )


def moved_by_batch(move: Move, step_name: str) -> bool:
    """Whether a batch already put the node's port on its VLAN (and read it back) since it reached the step,
    and did the step's other work (``settled``)."""
    node = move.node
    node.refresh_from_db(fields=["switch_vlan", "switch_checked_at"])
    since = reached_at(move.operation, step_name)
    return (
        move.settled
        and node.switch_vlan == move.vlan
        and node.switch_checked_at is not None
        and node.switch_checked_at >= since
    )


def approaching(ctx: StepContext, step_name: str) -> bool:
    """Whether servers of the operation's reservation on the same switch are running the steps before
    ``step_name`` (an operation parked on its agent or still queued is not: it may be long)."""
    if ctx.operation.reservation_id is None:
        return False
    before = Q(pk__in=[])
    for kind, names in PLANS.items():
        if step_name in names:
            before |= Q(kind=kind, current_step__lt=names.index(step_name))
    return (
        Operation.objects.filter(before, reservation_id=ctx.operation.reservation_id)
        .filter(state=OperationState.RUNNING, cancel_requested=False, node__switch_name=ctx.node.switch_name)
        .exclude(node_id=ctx.node.pk)
        .exists()
    )


def gather(ctx: StepContext, step_name: str) -> None:
    """Wait while ``approaching`` (at most NEOCLOUD_SWITCH_BATCH_WAIT_SECONDS)."""
    deadline = time.monotonic() + settings.NEOCLOUD_SWITCH_BATCH_WAIT_SECONDS
    while time.monotonic() < deadline and approaching(ctx, step_name):
        ctx.check_cancelled()
        time.sleep(0.1)


def record(node: Node, vlan: int | None) -> None:
    Node.objects.filter(pk=node.pk).update(
        switch_vlan=vlan, switch_checked_at=timezone.now(), network_drift=""
    )
    node.switch_vlan = vlan


def record_moves(moves: Sequence[Move]) -> None:
    """Each move's port on its VLAN, as the switch read it back: one UPDATE per VLAN."""
    now = timezone.now()
    by_vlan: dict[int, list[int]] = {}
    for move in moves:
        by_vlan.setdefault(move.vlan, []).append(move.node.pk)
        move.node.switch_vlan = move.vlan
    for vlan, pks in by_vlan.items():
        Node.objects.filter(pk__in=pks).update(switch_vlan=vlan, switch_checked_at=now, network_drift="")


def run(
    ctx: StepContext,
    step_name: str,
    plan: PlanFn,
    *,
    after: HookFn | None = None,
    apply: HookFn = _move_all,
) -> Move | None:
    """Move the node's port (and its peers') as ``plan`` says, in one session under the switch's lock.
    Returns the node's own move (None: ``plan`` had none), already done when this returns. ``apply`` moves
    the ports (default: one ``set_access_vlans``; every port checked, moved, read back).

    :raises InvalidNodeData: the node's cabling or switch record is unusable (not retried).
    :raises UnknownSwitchPort, SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed: from the switch;
        whatever ``apply`` / ``after`` raise.
    """
    driver, _ = hardware.node_switch_port(ctx.node)
    gather(ctx, step_name)
    lock = SwitchLock(ctx, ctx.node.switch_name)
    if not lock.take():
        # Another step drives the switch now. A batch takes a few tenths of a second (with the session
        # kept): look again for a moment, holding this thread, since it may have covered this port or the
        # switch may be free, rather than park for a wake through the task queue (a second or more when the
        # workers are busy: PostgreSQL, 32 servers, +2-3 s at network_tenant).
        deadline = time.monotonic() + LOCK_LOOK_SECONDS
        seen: str | None = None
        while True:
            holder = lock.holder_now()
            if holder != seen:  # a batch ended (or began) since the last look: this port may be done
                own = plan(ctx.operation)
                if own is not None and moved_by_batch(own, step_name):
                    _log_done(ctx, own)
                    return own
                seen = holder
            if holder == "" and lock.take():
                break
            if time.monotonic() >= deadline:
                # park, holding no worker thread; the batch's end wakes this operation
                ctx.wait(lock.waiting_for, timeout=ctx.step.timeout_seconds, recheck_every=2.0)
            ctx.check_cancelled()
            time.sleep(LOCK_LOOK_INTERVAL)
    covered: list[int] = []
    try:
        own = plan(ctx.operation)
        if own is None:
            return None
        if moved_by_batch(own, step_name):
            _log_done(ctx, own)
            return own
        moves = [own]
        for operation in peers(ctx, step_name):
            move = plan(operation)
            if move is None or not move.port or moved_by_batch(move, step_name):
                continue
            try:
                driver.validate_port_name(move.node.switch_name, move.port)
            except UnknownSwitchPort:
                continue  # its own step says so
            moves.append(move)
        covered = _at_step(moves[1:], step_name)
        _session(ctx, driver, moves, after=after, apply=apply)
        covered = _at_step(moves[1:], step_name)  # the batch may have shrunk (a port not on the switch)
        return own
    finally:
        lock.give_back()
        _wake_after(ctx, step_name, covered)


def _stands_at(operation: Operation, step_name: str) -> bool:
    """Whether the operation stands at the step (an early one of ``EARLY_STEPS`` has not reached it)."""
    return operation.current_step == PLANS[operation.kind].index(step_name)


def _at_step(moves: Sequence[Move], step_name: str) -> list[int]:
    """The operations of ``moves`` standing at the step (an early one has not reached it: nothing to wake)."""
    return [m.operation.pk for m in moves if _stands_at(m.operation, step_name)]


def _wake_after(ctx: StepContext, step_name: str, covered: list[int]) -> None:
    """The batch's end: the steps it covered look again (done, or they retry on their own should it have
    failed), and one of those still waiting for the switch takes it for the next batch (all at once would
    only park again, but one)."""
    from provisioner.engine.queue import wake

    waiting = [o.pk for o in _standing_at(ctx, step_name) if o.pk not in covered]
    wake(covered + waiting[:1])


def _standing_at(ctx: StepContext, step_name: str) -> list[Operation]:
    return [o for o in peers(ctx, step_name) if _stands_at(o, step_name)]


def _log_done(ctx: StepContext, own: Move) -> None:
    ctx.log(
        f"{own.node.name}: switch {own.node.switch_name} port {own.port} on VLAN {own.vlan} ({own.why}), "
        "moved and read back by a batch of its switch"
    )


def _session(
    ctx: StepContext,
    driver: SwitchDriver,
    moves: list[Move],
    *,
    after: HookFn | None,
    apply: HookFn,
) -> None:
    own = moves[0]
    # a worker's next batch on this switch reuses the session (a login is most of a batch's time)
    driver.keep_session = True
    started = time.monotonic()
    with driver:
        try:
            # checks every port first (an unknown one changes nothing), moves them, reads every one back
            apply(driver, moves)
        except UnknownSwitchPort:
            if len(moves) == 1:
                raise
            # a port is not on the switch: this node's alone (raising again if it is this node's); a peer's
            # own step fails with the switch's sentence
            moves[1:] = []
            apply(driver, moves)
        except SwitchCommandFailed:
            # refused, or a port read back otherwise: record where the switch says each port is
            seen = driver.port_states([m.port for m in moves])
            for move in moves:
                record(move.node, seen[move.port].vlan)
            raise
        record_moves(moves)  # as the driver read them back
        if after is not None:
            after(driver, moves)
    ctx.log(
        f"{own.node.name}: switch {own.node.switch_name} port {own.port} on VLAN {own.vlan} ({own.why})"
        + (
            f"; {len(moves) - 1} more port(s) of this switch moved in the same session"
            if len(moves) > 1
            else ""
        )
        + f" (switch session {time.monotonic() - started:.2f} s)"
    )
    # each covered operation's line goes to its own step of that name (an early one has not reached it yet)
    step_name = ctx.step.name
    steps = {
        (operation_id, index): pk
        for operation_id, index, pk in Step.objects.filter(
            operation_id__in=[m.operation.pk for m in moves[1:]], name=step_name
        ).values_list("operation_id", "index", "pk")
    }
    LogLine.objects.bulk_create(
        LogLine(
            operation=move.operation,
            step_id=steps.get((move.operation.pk, PLANS[move.operation.kind].index(step_name))),
            message=(
                f"{move.node.name}: switch {move.node.switch_name} port {move.port} on VLAN {move.vlan} "
                f"({move.why}), moved in one session with {own.node.name}'s port"
            ),
        )
        for move in moves[1:]
    )
