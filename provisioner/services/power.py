"""Fleet power sync: poll every enrolled BMC concurrently, record power state and drift.

A BMC that does not answer makes the node's power state ``unknown`` (never a guess of "off"). A node whose
power disagrees with its lifecycle state (an active server found off, an available one found on) gets a
``power_drift`` audit event once per change, so operators see it without a flood of duplicates.

The sweep takes seconds while the engine keeps working: a deploy may power a node on, a power action may
read its BMC, a release may move it. Each node's result is therefore written with a compare-and-set on
what the sync read before the sweep (state, state_changed_at, power_state, power_checked_at and the
operation holding the node's lease): a node that changed meanwhile keeps what the engine wrote (newer
than our reading) and gets no drift event (its reading was taken against a state it is no longer in);
the next sweep reads it again.
"""

from __future__ import annotations

import logging
from collections import Counter

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from provisioner.drivers.base import BmcAccess, PowerState
from provisioner.drivers.sweep import sweep_power
from provisioner.lifecycle import Actor, record
from provisioner.models import AuditEvent, BmcCallErrors, BmcCredential, Node
from provisioner.states import NodeState, PowerStateChoice

log = logging.getLogger(__name__)

# What power state each stable lifecycle state implies; transient states may be either.
EXPECTED_POWER = {
    NodeState.ACTIVE: PowerState.ON,
    NodeState.AVAILABLE: PowerState.OFF,
}


def sync_power(*, max_workers: int = 64) -> dict[str, int]:
    """Read every enrolled BMC once and record each node's power state; record drift where its power
    contradicts its lifecycle state. Safe to run while the engine works on nodes (see the module's
    docstring); idempotent apart from ``power_checked_at``. Returns counts: polled, unknown, drift."""
    nodes = list(
        Node.objects.exclude(state=NodeState.ENROLLING)
        .filter(pk__in=BmcCredential.objects.values("node_id"))
        .exclude(bmc_protocol=Node.BmcProtocol.FAKE, bmc_address="")
        .select_related("bmc_credential")
    )
    # each node's access on its own: one credential that cannot be decrypted (saved without a password,
    # or under a key no longer configured) makes that node unknown, not the whole sweep fail
    accesses: dict[int, BmcAccess] = {}
    unusable: dict[int, str] = {}
    for n in nodes:
        try:
            accesses[n.pk] = n.bmc_access()
        except ImproperlyConfigured as exc:
            log.warning("power sync: %s: BMC credential unusable: %s", n.name, exc)
            unusable[n.pk] = f"BMC credential unusable: {exc}"
    results = sweep_power(
        list(accesses.values()), timeout=settings.NEOCLOUD_BMC_TIMEOUT_SECONDS, max_workers=max_workers
    )
    now = timezone.now()
    counts = {"polled": len(nodes), "unknown": 0, "drift": 0}
    failed_calls: Counter[tuple[str, str]] = Counter(
        (access.protocol, result.error_kind)
        for access, result in results.items()
        if result.error_kind is not None
    )
    for (protocol, kind), n in sorted(failed_calls.items()):
        BmcCallErrors.objects.add(protocol, kind, n)
    actor = Actor.system("power-sync")
    for node in nodes:
        if node.pk in unusable:
            state, error = PowerState.UNKNOWN, unusable[node.pk]
        else:
            result = results[accesses[node.pk]]
            state, error = result.state, result.error or ""
        if state == PowerState.UNKNOWN:
            counts["unknown"] += 1
            _write_if_unchanged(
                node,
                power_state=PowerStateChoice.UNKNOWN,
                power_checked_at=now,
                bmc_last_error=error[:300],
            )
            continue
        written = dict(
            power_state=state.value, power_checked_at=now, bmc_last_contact_at=now, bmc_last_error=""
        )
        expected = EXPECTED_POWER.get(NodeState(node.state))
        if expected is None or state == expected or not _drift_is_news(node, state):
            _write_if_unchanged(node, **written)
            continue
        # the event and the write stand or fall together: no drift for a node that moved meanwhile
        with transaction.atomic():
            if not _write_if_unchanged(node, **written):
                continue
            counts["drift"] += 1
            record(
                actor,
                "power_drift",
                node=node,
                from_state=node.state,
                to_state=node.state,
                reason=f"{node.name} is {node.state} but its BMC reports power {state.value} (expected {expected.value})",
                data={"power": state.value, "expected": expected.value},
            )
    return counts


def _write_if_unchanged(node: Node, **fields: object) -> bool:
    """One conditional UPDATE: write ``fields`` only if the node's state and power are still what the sync
    read before its sweep. Returns whether it wrote."""
    updated = Node.objects.filter(
        pk=node.pk,
        state=node.state,
        state_changed_at=node.state_changed_at,
        power_state=node.power_state,
        power_checked_at=node.power_checked_at,
        # an operation that took or gave back the node meanwhile may have written the same power value
        lease_operation_id=node.lease_operation_id,
    ).update(**fields)
    if not updated:
        log.info("power sync: %s changed during the sweep; keeping what the engine wrote", node.name)
    return bool(updated)


def _drift_is_news(node: Node, power: PowerState) -> bool:
    """Whether drift at ``power`` is worth an event: the power changed since the last known reading (an
    ``unknown`` in between, a BMC that went silent and came back, is no change), or no drift event at this
    power was recorded since the node's last transition."""
    if node.power_state not in (power.value, PowerStateChoice.UNKNOWN):
        return True
    last = (
        AuditEvent.objects.filter(node=node).filter(Q(action="power_drift") | Q(action="transition")).first()
    )
    return last is None or last.action != "power_drift" or last.data.get("power") != power.value
