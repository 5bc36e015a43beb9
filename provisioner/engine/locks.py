"""Node leases: at most one operation works on a node at a time.

A lease is three columns on Node (owner, operation, expiry) taken with a conditional UPDATE, which is
atomic on SQLite and PostgreSQL alike. The holder renews it with heartbeats; a holder that dies stops
renewing, the lease expires, and the reaper (engine/reaper.py) resumes or fails the operation.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from provisioner.errors import NodeLocked
from provisioner.models import Node, Operation
from provisioner.states import OPEN_OPERATION_STATES

log = logging.getLogger(__name__)


def held_by(node: Node) -> str:
    """The one notion of a node being held: by an open operation (pending, running or waiting: the
    operation owns the node's lease), or by a lease not yet expired (a worker that has not released it).
    Returns why, for a message ("operation 12 (provision, waiting)"), or "" when the node is free.
    Row locks are not holds: they last one transaction and serialize decisions, they do not own the node."""
    op = (
        Operation.objects.filter(node_id=node.pk, state__in=OPEN_OPERATION_STATES)
        .order_by("pk")
        .values_list("pk", "kind", "state")
        .first()
    )
    if op is not None:
        return f"operation {op[0]} ({op[1]}, {op[2]})"
    lease = Node.objects.filter(pk=node.pk).values_list("lease_owner", "lease_expires_at").first()
    if lease and lease[0] and (lease[1] is None or lease[1] > timezone.now()):
        return f"a lease held by {lease[0]}"
    return ""


def _ttl() -> timedelta:
    return timedelta(seconds=settings.NEOCLOUD_LEASE_TTL_SECONDS)


def acquire_lease(node_id: int, owner: str, operation: Operation | None) -> bool:
    """Take the node's lease if it is free, expired, or already ours. Returns whether we hold it."""
    now = timezone.now()
    free = Q(lease_owner="") | Q(lease_expires_at__lt=now) | Q(lease_owner=owner)
    if operation is not None:
        free |= Q(lease_operation=operation)  # the same operation resumed by another worker
    return (
        Node.objects.filter(free, pk=node_id).update(
            lease_owner=owner, lease_operation=operation, lease_expires_at=now + _ttl()
        )
        == 1
    )


def renew_lease(node_id: int, owner: str) -> bool:
    return (
        Node.objects.filter(pk=node_id, lease_owner=owner).update(lease_expires_at=timezone.now() + _ttl())
        == 1
    )


def park_lease(node_id: int, owner: str, operation_id: int) -> None:
    """Hand the lease from the worker to its operation, which waits with no process behind it: no other
    operation takes the node meanwhile (no expiry), and the worker that resumes the operation takes it back
    (:func:`acquire_lease` lets the same operation in)."""
    Node.objects.filter(pk=node_id, lease_owner=owner).update(
        lease_owner=f"operation:{operation_id}", lease_expires_at=None
    )


def release_lease(node_id: int, owner: str) -> None:
    Node.objects.filter(pk=node_id, lease_owner=owner).update(
        lease_owner="", lease_operation=None, lease_expires_at=None
    )


class Heartbeat:
    """A background thread renewing a lease (and the operation's heartbeat) until stopped.

    ``lost`` is set when a renewal finds the lease taken by someone else: the holder must stop work.
    """

    def __init__(self, node_id: int, owner: str, operation_id: int | None) -> None:
        self.node_id = node_id
        self.owner = owner
        self.operation_id = operation_id
        self.lost = threading.Event()
        # set by the engine once it handed the lease to the waiting operation (park_lease): not lost
        self.parked = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{node_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=settings.NEOCLOUD_HEARTBEAT_SECONDS * 4)

    def _run(self) -> None:
        try:
            while not self._stop.wait(settings.NEOCLOUD_HEARTBEAT_SECONDS):
                try:
                    if not renew_lease(self.node_id, self.owner):
                        if self.parked:
                            return
                        log.warning("lease on node %s lost by %s", self.node_id, self.owner)
                        self.lost.set()
                        return
                    if self.operation_id is not None:
                        Operation.objects.filter(pk=self.operation_id, worker_id=self.owner).update(
                            heartbeat_at=timezone.now()
                        )
                except Exception:  # a transient database error must not kill the heartbeat
                    log.exception("heartbeat for node %s failed; retrying", self.node_id)
                    close_old_connections()
        finally:
            connection.close()


@contextlib.contextmanager
def node_task(node_id: int, owner: str, operation: Operation | None = None) -> Iterator[Heartbeat]:
    """``with node_task(node_id, owner) as hb:`` holds the node's lease for the block, heartbeating.

    :raises NodeLocked: another operation holds the node.
    """
    if not acquire_lease(node_id, owner, operation):
        holder = Node.objects.filter(pk=node_id).values_list("lease_owner", "lease_operation_id").first()
        raise NodeLocked(
            f"node {node_id} is busy with operation {holder[1] if holder else '?'}; try again later"
        )
    try:
        with Heartbeat(node_id, owner, operation.pk if operation else None) as hb:
            yield hb
    finally:
        release_lease(node_id, owner)
