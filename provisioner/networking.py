"""Tenant networks in the database: which VLAN, subnet and addresses a reservation's servers get, and giving
them back (issue 18). No switch I/O here: the engine's network steps move the ports (engine/steps.py).

A site is *network-managed* when it has a ``SiteNetwork``. Allocation happens in the transaction that books
the servers (services/reservations.py): it takes the site network's row lock (``SELECT ... FOR NO KEY
UPDATE``; on SQLite the IMMEDIATE transaction already holds the write lock), so two bookings at one site
choose their VLAN, subnet and addresses one after the other; the partial unique constraints on live networks
and attachments (migration 0020) reject a duplicate should any code path forget the lock. An exhausted pool
(VLANs, subnets or public addresses) is a ``CapacityError`` that rolls the booking back whole.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from provisioner import prepared
from provisioner.errors import CapacityError
from provisioner.models import Allocation, NetworkAttachment, Node, Reservation, SiteNetwork, TenantNetwork
from provisioner.prepared import PreparedQuery
from provisioner.states import OPEN_RESERVATION_STATES, NodeState
from provisioner.transactions import requires_transaction


def site_network_of(node: Node) -> SiteNetwork | None:
    """The node's site's network record, or None: the site is not network-managed (or the node has no rack)."""
    if node.rack_id is None:
        return None
    return SiteNetwork.objects.filter(site__racks=node.rack_id).first()


def managed_site_ids() -> set[int]:
    return set(SiteNetwork.objects.values_list("site_id", flat=True))


def live_attachment(node: Node, reservation_id: int | None = None) -> NetworkAttachment | None:
    """The node's live attachment for its reservation (or ``reservation_id``), with its network."""
    reservation_id = reservation_id if reservation_id is not None else node.reservation_id
    if reservation_id is None:
        return None
    return (
        NetworkAttachment.objects.live()
        .select_related("network")
        .filter(node=node, reservation_id=reservation_id)
        .first()
    )


def _lock_site_network(site_id: int) -> SiteNetwork:
    return SiteNetwork.objects.select_for_update(no_key=True).get(site_id=site_id)


def _free_vlan(site_network: SiteNetwork) -> int:
    used = set(
        TenantNetwork.objects.live().filter(site_id=site_network.site_id).values_list("vlan", flat=True)
    )
    for vlan in site_network.tenant_vlans():
        if vlan not in used and vlan not in site_network.infrastructure_vlans:
            return vlan
    raise CapacityError(
        f"not enough network capacity: every tenant VLAN of site {site_network.site.slug} "
        f"({site_network.tenant_vlan_first}-{site_network.tenant_vlan_last}) is in use; try again later"
    )


def _free_subnet(site_network: SiteNetwork) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    used = set(
        TenantNetwork.objects.live().filter(site_id=site_network.site_id).values_list("cidr", flat=True)
    )
    for subnet in site_network.supernet().subnets(new_prefix=site_network.tenant_prefix):
        if str(subnet) not in used:
            return subnet
    raise CapacityError(
        f"not enough network capacity: every /{site_network.tenant_prefix} of site "
        f"{site_network.site.slug}'s tenant supernet {site_network.tenant_supernet} is in use; try again later"
    )


def _hosts(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Iterator[str]:
    return (str(a) for a in network.hosts())


def _new_network(site_network: SiteNetwork, reservation: Reservation, shared: bool) -> TenantNetwork:
    vlan = _free_vlan(site_network)
    subnet = _free_subnet(site_network)
    return TenantNetwork.objects.create(
        site_id=site_network.site_id,
        vlan=vlan,
        cidr=str(subnet),
        gateway=next(_hosts(subnet)),
        organization_id=reservation.organization_id,
        reservation=None if shared else reservation,
        shared=shared,
    )


@requires_transaction
def allocate_networks(reservation: Reservation, node_ids: Sequence[int]) -> list[NetworkAttachment]:
    """Give the reservation's nodes at network-managed sites their tenant network (a new one per site, or
    the organization's shared one where it asks for that), a private address on it and a public address of
    the site's range. Call inside the booking's transaction; nodes at unmanaged sites get nothing.

    :raises CapacityError: no free VLAN, subnet, private or public address (the caller rolls back).
    """
    by_site: dict[int, list[int]] = defaultdict(list)
    for node_id, site_id in (
        Node.objects.filter(pk__in=node_ids, rack__site__network__isnull=False)
        .order_by("name")
        .values_list("pk", "rack__site_id")
    ):
        by_site[site_id].append(node_id)
    if not by_site:
        return []
    shared = reservation.organization.shared_private_network
    made: list[NetworkAttachment] = []
    for site_id in sorted(by_site):
        site_network = _lock_site_network(site_id)
        network = None
        if shared:
            network = (
                TenantNetwork.objects.live()
                .filter(site_id=site_id, organization_id=reservation.organization_id, shared=True)
                .first()
            )
        if network is None:
            network = _new_network(site_network, reservation, shared)
        made += _attach(site_network, network, reservation, by_site[site_id])
    return made


def _attach(
    site_network: SiteNetwork, network: TenantNetwork, reservation: Reservation, node_ids: Iterable[int]
) -> list[NetworkAttachment]:
    taken_private = set(network.attachments.live().values_list("private_address", flat=True))
    taken_private.add(network.gateway)
    taken_public = set(
        NetworkAttachment.objects.live()
        .filter(site_id=site_network.site_id, public_address__isnull=False)
        .values_list("public_address", flat=True)
    )
    private = (a for a in _hosts(ipaddress.ip_network(network.cidr)) if a not in taken_private)
    public = (a for a in _hosts(site_network.public_network()) if a not in taken_public)
    rows = []
    for node_id in node_ids:
        private_address = next(private, None)
        if private_address is None:
            raise CapacityError(
                f"not enough network capacity: the private network {network.cidr} has no address left for "
                "another server"
            )
        public_address = next(public, None)
        if public_address is None:
            raise CapacityError(
                f"not enough network capacity: every public address of site {site_network.site.slug} "
                f"({site_network.public_range}) is in use; try again later"
            )
        rows.append(
            NetworkAttachment(
                network=network,
                node_id=node_id,
                reservation=reservation,
                site_id=site_network.site_id,
                private_address=private_address,
                public_address=public_address,
            )
        )
    return NetworkAttachment.objects.bulk_create(rows)


@requires_transaction
def attach_spare(reservation: Reservation, node: Node) -> NetworkAttachment | None:
    """Put one more node (a spare) on the reservation's network at its site, making one if none is live.
    None at an unmanaged site or when the node already has its attachment. Call inside the transaction that
    allocates the spare.

    :raises CapacityError: as allocate_networks.
    """
    if live_attachment(node, reservation.pk) is not None:
        return None
    site_id = Node.objects.filter(pk=node.pk).values_list("rack__site_id", flat=True).first()
    if site_id is None or not SiteNetwork.objects.filter(site_id=site_id).exists():
        return None
    site_network = _lock_site_network(site_id)
    network = (
        TenantNetwork.objects.live()
        .filter(site_id=site_id)
        .filter(
            Q(reservation=reservation)
            | Q(shared=True, organization_id=reservation.organization_id)
            | Q(attachments__reservation=reservation, attachments__released_at__isnull=True)
        )
        .distinct()
        .first()
    )
    if network is None:
        network = _new_network(site_network, reservation, reservation.organization.shared_private_network)
    return _attach(site_network, network, reservation, [node.pk])[0]


def end_attachment(attachment: NetworkAttachment) -> TenantNetwork | None:
    """End the attachment; returns its network when that has no live attachment left and is not an
    organization's shared network: the caller removes its gateway from the switch, then ``release_network``."""
    NetworkAttachment.objects.filter(pk=attachment.pk, released_at__isnull=True).update(
        released_at=timezone.now()
    )
    network = attachment.network
    if (
        network.released_at is None
        and not network.attachments.live().exists()
        and (not network.shared or not shared_in_use(network))
    ):
        return network
    return None


def shared_in_use(network: TenantNetwork) -> bool:
    """Whether the organization of a shared network has an open reservation that may still use it."""
    return Reservation.objects.filter(
        organization_id=network.organization_id, state__in=OPEN_RESERVATION_STATES
    ).exists()


def release_network(network: TenantNetwork) -> bool:
    """Give the network's VLAN and subnet back to the pool, unless a server joined it since. Idempotent."""
    return bool(
        TenantNetwork.objects.filter(pk=network.pk, released_at__isnull=True)
        .exclude(pk__in=NetworkAttachment.objects.live().values("network_id"))
        .update(released_at=timezone.now())
    )


def end_unjoined_attachments(reservation: Reservation, keep_node_ids: Iterable[int]) -> int:
    """On release: end the reservation's live attachments of servers that never joined the network on the
    switch (a window released before its servers started, one quarantined before handover), but for
    ``keep_node_ids`` (their cleaning ends theirs) and servers in error (a failed move may have left the
    port on the tenant VLAN: their recovery's cleaning ends theirs). Networks left empty that no server ever
    joined are released at once; one with a gateway on a switch is left to the drift job. Returns how many
    ended. Call inside the release's transaction."""
    keep = set(keep_node_ids)
    # Read with a statement built once (most releases have none to end: a booking at unmanaged sites).
    ending = [
        pk
        for pk, node_id, node_state in _UNJOINED_ATTACHMENTS.rows(reservation.pk)
        if node_id not in keep and node_state != NodeState.ERROR
    ]
    if not ending:
        return 0
    ended = 0
    for attachment in NetworkAttachment.objects.filter(pk__in=ending).select_related("network"):
        network = end_attachment(attachment)
        ended += 1
        if network is not None and not network.attachments.filter(configured_at__isnull=False).exists():
            release_network(network)
    return ended


_UNJOINED_ATTACHMENTS = PreparedQuery(
    lambda pk: (
        NetworkAttachment.objects.live()
        .filter(reservation_id=pk, configured_at__isnull=True)
        .values_list("pk", "node_id", "node__state")
    ),
    prepared.INT,
)


def attachments_leaving(node: Node) -> QuerySet[NetworkAttachment]:
    """The node's live attachments whose reservation no longer holds it (released, or the node taken out):
    what its cleaning ends. A future window's attachment (its allocation still active) stays."""
    held = Allocation.objects.filter(node=node, active=True).values("reservation_id")
    return (
        NetworkAttachment.objects.live()
        .filter(node=node)
        .exclude(reservation_id__in=held)
        .select_related("network")
    )


def switches_of(network: TenantNetwork) -> set[str]:
    """The switches of every server that joined ``network`` on the switch (its gateway was made on each)."""
    return set(
        NetworkAttachment.objects.filter(network=network, configured_at__isnull=False)
        .exclude(node__switch_name="")
        .values_list("node__switch_name", flat=True)
    )


def empty_networks() -> list[TenantNetwork]:
    """Live networks without a live attachment whose release is due (not an organization's shared network
    still in use): what the drift job finishes when a cleaning step could not (remove_empty_networks)."""
    empty = TenantNetwork.objects.live().exclude(pk__in=NetworkAttachment.objects.live().values("network_id"))
    return [n for n in empty.select_related("site") if not n.shared or not shared_in_use(n)]


def reservation_networks(reservation_id: int) -> list[dict[str, object]]:
    """What a customer sees of a reservation's private networks (one query): each network's CIDR and gateway
    (never its VLAN) and its servers' private and public addresses, by server name."""
    rows = _RESERVATION_ATTACHMENTS.rows(reservation_id)
    return _networks(rows).get(reservation_id, [])


def _attachment_rows(attachments: QuerySet[NetworkAttachment]) -> QuerySet[NetworkAttachment, Any]:
    return attachments.order_by("reservation_id", "network_id", "node__name").values_list(
        "reservation_id",
        "network_id",
        "network__cidr",
        "network__gateway",
        "node__name",
        "private_address",
        "public_address",
    )


# One reservation's (a response about one reservation reads it; built once, see provisioner.prepared).
_RESERVATION_ATTACHMENTS = PreparedQuery(
    lambda pk: _attachment_rows(NetworkAttachment.objects.live().filter(reservation_id=pk)), prepared.INT
)


def networks_by_reservation(reservation_ids: Iterable[int]) -> dict[int, list[dict[str, object]]]:
    """``reservation_networks`` of many reservations in one query (a list of reservations), by reservation id;
    a reservation without a private network is absent."""
    ids = list(reservation_ids)
    return _networks(_attachment_rows(NetworkAttachment.objects.live().filter(reservation_id__in=ids)))


def _networks(rows: Iterable[Sequence[Any]]) -> dict[int, list[dict[str, object]]]:
    found: dict[int, dict[int, dict[str, object]]] = {}
    for reservation_id, network_id, cidr, gateway, name, private, public in rows:
        networks = found.setdefault(reservation_id, {})
        entry = networks.setdefault(network_id, {"cidr": cidr, "gateway": gateway, "servers": []})
        entry["servers"].append(  # type: ignore[attr-defined]
            {"name": name, "private_address": private, "public_address": public}
        )
    return {reservation_id: list(networks.values()) for reservation_id, networks in found.items()}


def customer_endpoint(node: Node) -> tuple[str, int, str] | None:
    """Where a customer reaches a server on a tenant network: its public address, port 22, and its
    known_hosts lines for that address (None: not on one; customers use its SSH address). No query when the
    node's live attachment was prefetched as ``live_attachments``."""
    if node.reservation_id is None:
        return None
    prefetched = getattr(node, "live_attachments", None)
    if prefetched is not None:
        attachment = next((a for a in prefetched if a.reservation_id == node.reservation_id), None)
    else:
        attachment = live_attachment(node)
    if attachment is None or attachment.configured_at is None or not attachment.public_address:
        return None
    address = attachment.public_address
    lines = []
    for line in node.known_hosts.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            lines.append(f"{address} {parts[1]} {parts[2]}")
    return address, 22, "\n".join(lines)
