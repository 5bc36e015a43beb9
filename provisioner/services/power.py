"""Fleet power sync: poll every enrolled BMC concurrently, record power state and drift.

A BMC that does not answer makes the node's power state ``unknown`` (never a guess of "off"). A node whose
power disagrees with its lifecycle state (an active server found off, an available one found on) gets a
``power_drift`` audit event once per change, so operators see it without a flood of duplicates.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from provisioner.drivers.base import PowerState
from provisioner.drivers.sweep import sweep_power
from provisioner.models import AuditEvent, BmcCredential, Node
from provisioner.services.audit import Actor, record
from provisioner.states import NodeState, PowerStateChoice

# What power state each stable lifecycle state implies; transient states may be either.
EXPECTED_POWER = {
    NodeState.ACTIVE: PowerState.ON,
    NodeState.AVAILABLE: PowerState.OFF,
}


def sync_power(*, max_workers: int = 64) -> dict[str, int]:
    nodes = list(
        Node.objects.exclude(state=NodeState.ENROLLING)
        .filter(pk__in=BmcCredential.objects.values("node_id"))
        .exclude(bmc_protocol=Node.BmcProtocol.FAKE, bmc_address="")
        .select_related("bmc_credential")
    )
    accesses = {n.pk: n.bmc_access() for n in nodes}
    results = sweep_power(
        list(accesses.values()), timeout=settings.NEOCLOUD_BMC_TIMEOUT_SECONDS, max_workers=max_workers
    )
    now = timezone.now()
    counts = {"polled": len(nodes), "unknown": 0, "drift": 0}
    actor = Actor.system("power-sync")
    for node in nodes:
        result = results[accesses[node.pk]]
        state = result.state
        if state == PowerState.UNKNOWN:
            counts["unknown"] += 1
            Node.objects.filter(pk=node.pk).update(
                power_state=PowerStateChoice.UNKNOWN,
                power_checked_at=now,
                bmc_last_error=(result.error or "")[:300],
            )
            continue
        Node.objects.filter(pk=node.pk).update(
            power_state=state.value, power_checked_at=now, bmc_last_contact_at=now, bmc_last_error=""
        )
        expected = EXPECTED_POWER.get(NodeState(node.state))
        if (
            expected is not None
            and state != expected
            and (node.power_state != state.value or not _drift_recorded(node))
        ):
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


def _drift_recorded(node: Node) -> bool:
    last = (
        AuditEvent.objects.filter(node=node).filter(Q(action="power_drift") | Q(action="transition")).first()
    )
    return last is not None and last.action == "power_drift"
