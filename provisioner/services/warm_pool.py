"""The warm pool: per server type, an operator-set number of servers kept deployed with an image (the type's
most booked one unless the operator names one), burned in and powered on, on the provisioning network, held
by no customer (state ``warm``: in no organization's listings, counted as available capacity).

A reservation takes warm servers of its image first (services.reservations: new host keys generated on the
server, the customer's keys, a short health re-check, handover: about a minute instead of two firmware
self-tests, a stream and a full burn-in). The scheduler refills each pool in the background (:func:`refill`),
and wipes warm servers the pool no longer wants (it shrank, or its image changed). The catalog shows the
expected time to ready (:func:`expected_ready_seconds`).
"""

from __future__ import annotations

import dataclasses
import statistics
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from provisioner.engine.queue import create_operations, enqueue_many
from provisioner.errors import IllegalTransition
from provisioner.lifecycle import Actor, process_events
from provisioner.models import Allocation, Image, Node, Operation, Reservation, ServerType
from provisioner.services.reservations import lock_server_type, unfit_node_ids
from provisioner.states import OPEN_OPERATION_STATES, NodeEvent, NodeState, OperationKind, OperationState

# What a warm server takes from reserve to its customer's first login: new host keys, the short re-check,
# handover (measured in the lab by bench/time_to_ssh.py: well under a minute); the catalog says "about a
# minute".
WARM_READY_SECONDS = 60
# How many of the type's recent cold provisionings the catalog's estimate is the median of.
RECENT_DEPLOYS = 20


def pool_image(server_type: ServerType) -> Image | None:
    """The image the type's warm servers run: the operator's choice, else the type's most booked image
    (ties: the newest image), else none (no pool until one is booked or chosen)."""
    if server_type.warm_pool_image_id:
        return server_type.warm_pool_image
    top = (
        Reservation.objects.filter(server_type=server_type, image__isnull=False)
        .values("image")
        .annotate(n=Count("pk"))
        .order_by("-n", "-image")
        .first()
    )
    return Image.objects.filter(pk=top["image"]).first() if top else None


@dataclasses.dataclass(frozen=True)
class PoolStatus:
    """One type's warm pool as operators see it."""

    server_type: ServerType
    size: int
    image: Image | None
    warm: int
    warming: int


def pools() -> list[PoolStatus]:
    """Every server type's warm pool (size 0: none), for the fleet page and the admin API."""
    counts = {
        row["pk"]: row
        for row in ServerType.objects.annotate(
            warm=Count("nodes", filter=Q(nodes__state=NodeState.WARM)),
            warming=Count("nodes", filter=Q(nodes__state=NodeState.WARMING)),
        ).values("pk", "warm", "warming")
    }
    return [
        PoolStatus(st, st.warm_pool_size, pool_image(st), counts[st.pk]["warm"], counts[st.pk]["warming"])
        for st in ServerType.objects.select_related("warm_pool_image").order_by("slug")
    ]


def _idle_candidates(server_type: ServerType, unfit: list[int]) -> list[Node]:
    """Available nodes of the type that the pool may take: no booking now or ahead (a warm server booked for a
    later window would be deployed over anyway), no operator hold asked, no operation on them, fit."""
    now = timezone.now()
    booked = Allocation.objects.filter(Q(ends_at__isnull=True) | Q(ends_at__gt=now), active=True).values(
        "node_id"
    )
    busy = Operation.objects.filter(state__in=OPEN_OPERATION_STATES).values("node_id")
    return list(
        Node.objects.filter(server_type=server_type, state=NodeState.AVAILABLE, hold_requested="")
        .exclude(pk__in=booked)
        .exclude(pk__in=busy)
        .exclude(pk__in=unfit)
        # a fast-tracked agent first: its deploy starts without a power cycle
        .order_by(F("fast_track_until").desc(nulls_last=True), "name")
        .select_related("rack__site")
    )


def refill(actor: Actor | None = None) -> dict[str, int]:
    """Bring every type's warm pool to its size: warm up idle servers when it is short, wipe warm servers it
    does not want (beyond its size, or of another image than the pool's). Servers are taken under the
    type's reservation lock, so a booking and the pool never take the same server. Returns how many were
    warmed up and wiped."""
    actor = actor or Actor.system("warm-pool")
    warmed = wiped = 0
    for server_type in ServerType.objects.filter(
        Q(warm_pool_size__gt=0) | Q(nodes__state__in=[NodeState.WARM, NodeState.WARMING])
    ).distinct():
        image = pool_image(server_type)
        unfit = unfit_node_ids(server_type)
        with transaction.atomic():
            lock_server_type(server_type)
            members = list(
                Node.objects.filter(server_type=server_type, state__in=[NodeState.WARM, NodeState.WARMING])
            )
            unwanted = [
                node
                for node in members
                if node.state == NodeState.WARM and (image is None or node.image_id != image.pk)
            ]
            kept = [node for node in members if node not in unwanted]
            excess = len(kept) - server_type.warm_pool_size
            if excess > 0:
                warm_kept = sorted((n for n in kept if n.state == NodeState.WARM), key=lambda n: n.name)
                unwanted += warm_kept[::-1][:excess]
            wiped += _wipe(unwanted, actor)
            short = server_type.warm_pool_size - (len(members) - len(unwanted))
            if short > 0 and image is not None:
                warmed += _warm_up(_idle_candidates(server_type, unfit)[:short], image, actor)
    return {"warmed": warmed, "wiped": wiped}


def _warm_up(nodes: list[Node], image: Image, actor: Actor) -> int:
    if not nodes:
        return 0
    try:
        process_events(
            nodes,
            NodeEvent.WARM_UP,
            actor=actor,
            reason=f"warm pool: deploy {image.slug} and burn in",
            expected_state=NodeState.AVAILABLE,
        )
    except IllegalTransition:
        return 0  # one was taken meanwhile: the next pass tries again
    ops = create_operations(OperationKind.WARM_UP, nodes, params={"image_id": image.pk})
    enqueue_many(ops)
    return len(ops)


def _wipe(nodes: list[Node], actor: Actor) -> int:
    if not nodes:
        return 0
    try:
        process_events(
            nodes,
            NodeEvent.CLEAN,
            actor=actor,
            reason="the warm pool no longer wants it (smaller, or another image)",
            expected_state=NodeState.WARM,
        )
    except IllegalTransition:
        return 0
    ops = create_operations(OperationKind.CLEAN, nodes)
    enqueue_many(ops)
    return len(ops)


def expected_ready_seconds(server_type: ServerType, image: Image | None = None) -> int:
    """What the catalog tells a customer about reserving one server of the type now: about a minute when a
    warm server (of ``image``, when given) is free; else the median of the type's recent cold provisionings,
    reserve to handed over; else an estimate from the firmware's self-test, paid twice on the cold path
    (into the deploy ramdisk, into the OS), plus the stream, burn-in and handover."""
    warm = Node.objects.filter(server_type=server_type, state=NodeState.WARM, reservation__isnull=True)
    if image is not None:
        warm = warm.filter(image=image)
    if warm.exists():
        return WARM_READY_SECONDS
    since = timezone.now() - timedelta(days=30)
    recent = (
        Operation.objects.filter(
            node__server_type=server_type,
            kind=OperationKind.PROVISION,
            state=OperationState.SUCCEEDED,
            created_at__gte=since,
            finished_at__isnull=False,
        )
        .exclude(params__has_key="warm")
        .order_by("-created_at")
        .values_list("created_at", "finished_at")[:RECENT_DEPLOYS]
    )
    durations = [(end - start).total_seconds() for start, end in recent]
    if durations:
        return round(statistics.median(durations))
    return int(2 * settings.NEOCLOUD_POST_SECONDS_ESTIMATE + COLD_WORK_SECONDS)


# The cold path's work besides its two self-tests when nothing was measured yet: stream, first boot, burn-in
# (a minute of load), handover.
COLD_WORK_SECONDS = 180


def set_pool(server_type: ServerType, size: int, image: Image | None, *, actor: Actor) -> PoolStatus:
    """An operator's setting of the type's warm pool: its size and image (None: the most booked one). The
    scheduler's next pass fills or shrinks the pool. Audited.

    :raises InvalidRequest: a negative size, or an image the type's deploy driver cannot write.
    """
    from provisioner import hardware
    from provisioner.errors import InvalidRequest
    from provisioner.lifecycle import record

    if size < 0:
        raise InvalidRequest("the warm pool's size is a whole number of at least 0")
    if image is not None and (problem := hardware.image_problem(server_type, image)):
        raise InvalidRequest(f"image {image.slug} {problem}; choose another image")
    ServerType.objects.filter(pk=server_type.pk).update(warm_pool_size=size, warm_pool_image=image)
    record(
        actor,
        "set_warm_pool",
        reason=f"{server_type.slug}: {size} warm server(s) of {image.slug if image else 'the most booked image'}",
    )
    return next(p for p in pools() if p.server_type.pk == server_type.pk)
