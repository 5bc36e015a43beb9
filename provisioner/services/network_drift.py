"""Network drift (issue 18): every managed port read back from its switch and compared with what its node's
state requires; repaired on request.

A node's state requires its port on: the tenant VLAN of its reservation's network (active), the
provisioning or cleaning VLAN (available, reserved: between the wipe and the next deploy), the quarantine
VLAN (quarantined). Nodes an operation is working on (their port is moving) and nodes in maintenance, error
or enrolling (nothing is required of them) are not checked. One ``port_states`` call per switch reads all its
ports; the observed VLAN, when it was read and a drift sentence (blank: none) are written on each node, for
the operator's node view. ``repair`` moves every drifting port to its required VLAN, one
``set_access_vlans`` per switch, and reads it back.

The same pass finishes the release of tenant networks whose last server left but whose gateway removal
failed in the cleaning step (``remove_empty_networks``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Iterable

from django.db.models import Exists, OuterRef
from django.utils import timezone

from provisioner import hardware, networking
from provisioner.drivers.switch import SwitchDriver
from provisioner.errors import NeocloudError, UnknownSwitchPort
from provisioner.lifecycle import Actor, record
from provisioner.models import NetworkAttachment, Node, Operation, SiteNetwork
from provisioner.states import OPEN_OPERATION_STATES, NodeState

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Expectation:
    """What a node's state requires of its port: the VLANs that are right, the one a repair moves it to."""

    vlans: frozenset[int]
    target: int
    why: str


def expectation(node: Node, site_network: SiteNetwork, tenant_vlan: int | None) -> Expectation | None:
    """What ``node``'s state requires of its port (None: nothing, or it cannot be known). Pure."""
    state = node.state
    if state == NodeState.ACTIVE:
        if tenant_vlan is None:
            return None  # booked before its site's network was managed
        return Expectation(frozenset({tenant_vlan}), tenant_vlan, "its tenant network")
    if state in (NodeState.AVAILABLE, NodeState.RESERVED):
        vlans = frozenset({site_network.provisioning_vlan, site_network.cleaning_vlan})
        return Expectation(vlans, site_network.cleaning_vlan, "the cleaning or provisioning network")
    if state == NodeState.QUARANTINED:
        return Expectation(
            frozenset({site_network.quarantine_vlan}), site_network.quarantine_vlan, "the quarantine network"
        )
    return None


def _vlans(vlans: Iterable[int]) -> str:
    return " or ".join(str(v) for v in sorted(vlans))


@dataclasses.dataclass
class DriftReport:
    checked: int = 0
    drifting: list[str] = dataclasses.field(default_factory=list)  # one sentence per drifting node
    repaired: list[str] = dataclasses.field(default_factory=list)  # node names
    unreadable: list[str] = dataclasses.field(default_factory=list)  # one sentence per switch
    networks_released: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "checked": self.checked,
            "drifting": len(self.drifting),
            "repaired": len(self.repaired),
            "switches_unreadable": len(self.unreadable),
            "networks_released": self.networks_released,
        }


def _managed_nodes(node_names: Iterable[str] | None) -> list[Node]:
    busy = Operation.objects.filter(node=OuterRef("pk"), state__in=OPEN_OPERATION_STATES)
    nodes = (
        Node.objects.filter(rack__site__network__isnull=False)
        .exclude(switch_name="")
        .exclude(switch_port="")
        .annotate(busy=Exists(busy))
        .select_related("rack__site__network")
        .order_by("switch_name", "name")
    )
    if node_names is not None:
        nodes = nodes.filter(name__in=list(node_names))
    return list(nodes)


def check_network_drift(
    *, repair: bool = False, actor: Actor | None = None, node_names: Iterable[str] | None = None
) -> DriftReport:
    """Read every managed port back (one session and one ``port_states`` per switch), record what each
    switch says on its nodes and whether it drifted; with ``repair``, move the drifting ports back.
    ``node_names``: only those nodes (an operator's repair of one node)."""
    actor = actor or Actor.system("network-drift")
    report = DriftReport()
    tenant_vlans = {
        node_id: vlan
        for node_id, reservation_id, node_reservation, vlan in NetworkAttachment.objects.live().values_list(
            "node_id", "reservation_id", "node__reservation_id", "network__vlan"
        )
        if reservation_id == node_reservation
    }
    by_switch: dict[str, list[tuple[Node, Expectation]]] = defaultdict(list)
    for node in _managed_nodes(node_names):
        if node.busy:  # type: ignore[attr-defined]
            continue
        expected = expectation(node, node.rack.site.network, tenant_vlans.get(node.pk))  # type: ignore[union-attr]
        if expected is not None:
            by_switch[node.switch_name].append((node, expected))
    now = timezone.now()
    for switch_name, members in sorted(by_switch.items()):
        try:
            driver = hardware.switch_driver(switch_name)
            with driver:
                seen = _read(driver, [n.switch_port for n, _ in members])
                drifting = []
                for node, expected in members:
                    report.checked += 1
                    vlan = seen.get(node.switch_port)
                    if isinstance(vlan, str):  # the port is not on the switch
                        sentence = vlan
                        observed = None
                    else:
                        observed = vlan
                        sentence = ""
                        if observed not in expected.vlans:
                            sentence = (
                                f"switch {switch_name} port {node.switch_port} is on VLAN {observed}; "
                                f"{node.state} requires VLAN {_vlans(expected.vlans)} ({expected.why})"
                            )
                    Node.objects.filter(pk=node.pk).update(
                        switch_vlan=observed, switch_checked_at=now, network_drift=sentence[:300]
                    )
                    if sentence:
                        report.drifting.append(f"{node.name}: {sentence}")
                        if not isinstance(vlan, str):
                            drifting.append((node, expected))
                if repair and drifting:
                    driver.set_access_vlans({n.switch_port: e.target for n, e in drifting})
                    after = driver.port_states([n.switch_port for n, _ in drifting])
                    for node, expected in drifting:
                        vlan_now = after[node.switch_port].vlan
                        fixed = vlan_now == expected.target
                        Node.objects.filter(pk=node.pk).update(
                            switch_vlan=vlan_now,
                            switch_checked_at=timezone.now(),
                            network_drift="" if fixed else f"repair left the port on VLAN {vlan_now}",
                        )
                        if fixed:
                            report.repaired.append(node.name)
                            record(
                                actor,
                                "network_repair",
                                node=node,
                                reason=f"port {switch_name}/{node.switch_port} moved back to VLAN "
                                f"{expected.target} ({expected.why})",
                            )
        except NeocloudError as exc:
            sentence = f"switch {switch_name} could not be read: {exc}"
            report.unreadable.append(sentence)
            Node.objects.filter(pk__in=[n.pk for n, _ in members]).update(
                switch_checked_at=now, network_drift=sentence[:300]
            )
    report.networks_released = remove_empty_networks()
    if report.drifting or report.unreadable:
        log.warning("network drift: %s", "; ".join(report.drifting + report.unreadable))
    return report


def _read(driver: SwitchDriver, ports: list[str]) -> dict[str, int | str | None]:
    """Each port's VLAN, or for a port the switch does not have, the switch's sentence saying so."""
    try:
        return {p: s.vlan for p, s in driver.port_states(ports).items()}
    except UnknownSwitchPort:
        out: dict[str, int | str | None] = {}
        for port in ports:  # in the same session: which ones are missing
            try:
                out[port] = driver.port_state(port).vlan
            except UnknownSwitchPort as exc:
                out[port] = str(exc)
        return out


def remove_empty_networks() -> int:
    """Tenant networks whose last server left but that were not released (their cleaning step's gateway
    removal failed, or a release ended the last attachment without a switch): their gateway removed from
    every switch that had it, their VLAN and subnet back to the pool. Returns how many were released."""
    released = 0
    for network in networking.empty_networks():
        try:
            for name in sorted(networking.switches_of(network)):
                with hardware.switch_driver(name) as driver:
                    driver.remove_vlan_gateway(network.vlan)
        except NeocloudError as exc:
            log.warning("tenant network %s (VLAN %s) not released yet: %s", network.cidr, network.vlan, exc)
            continue
        if networking.release_network(network):
            released += 1
    return released
