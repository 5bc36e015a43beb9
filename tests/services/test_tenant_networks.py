"""Tenant networks: a reservation at a network-managed site gets its VLAN, subnet, private and public
addresses in the booking's transaction; exhausted pools are capacity errors that leave nothing behind."""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connections, transaction
from django.utils import timezone

from provisioner.errors import CapacityError, InvalidRequest
from provisioner.lifecycle import Actor
from provisioner.models import Allocation, NetworkAttachment, Reservation, SiteNetwork, TenantNetwork
from provisioner.services.inventory import enroll
from provisioner.services.reservations import book_servers

HOUR = dt.timedelta(hours=1)


def _reserve(inv, count, **kw):
    kw.setdefault("image", inv.image)
    kw.setdefault("ssh_keys", [inv.key])
    kw.setdefault("actor", Actor(user=inv.owner, label="olivia"))
    org = kw.pop("org", inv.acme)
    return book_servers(org, kw.pop("server_type", inv.h100), count, **kw).reservation


@pytest.mark.django_db
def test_a_reservation_gets_its_own_vlan_subnet_and_addresses(network_site):
    r = _reserve(network_site, 2)
    network = TenantNetwork.objects.get(reservation=r)
    assert network.vlan == 100 and network.cidr == "198.19.0.0/29" and network.gateway == "198.19.0.1"
    assert network.organization == network_site.acme and not network.shared
    attachments = list(NetworkAttachment.objects.filter(reservation=r).order_by("node__name"))
    assert [a.node.reservation_id for a in attachments] == [r.pk, r.pk]
    assert [a.private_address for a in attachments] == ["198.19.0.2", "198.19.0.3"]
    assert [a.public_address for a in attachments] == ["203.0.113.1", "203.0.113.2"]
    other = _reserve(network_site, 1, org=network_site.other, ssh_keys=[network_site.other_key])
    second = TenantNetwork.objects.get(reservation=other)
    assert (second.vlan, second.cidr, second.gateway) == (101, "198.19.0.8/29", "198.19.0.9")
    assert NetworkAttachment.objects.get(reservation=other).public_address == "203.0.113.3"


@pytest.mark.django_db
def test_an_organization_may_share_one_network_across_its_reservations(network_site):
    network_site.acme.shared_private_network = True
    network_site.acme.save()
    first = _reserve(network_site, 1)
    second = _reserve(network_site, 1)
    networks = TenantNetwork.objects.filter(organization=network_site.acme)
    assert networks.count() == 1 and networks.get().shared
    addresses = sorted(
        NetworkAttachment.objects.filter(reservation__in=[first, second]).values_list(
            "private_address", flat=True
        )
    )
    assert addresses == ["198.19.0.2", "198.19.0.3"]


@pytest.mark.django_db
def test_unmanaged_sites_get_no_network(inventory):
    _reserve(inventory, 2)
    assert not TenantNetwork.objects.exists() and not NetworkAttachment.objects.exists()


@pytest.mark.django_db
def test_an_exhausted_vlan_pool_is_a_capacity_error_and_books_nothing(network_site):
    SiteNetwork.objects.filter(pk=network_site.site_network.pk).update(tenant_vlan_last=101)
    _reserve(network_site, 1)
    _reserve(network_site, 1)
    before = (Reservation.objects.count(), Allocation.objects.count(), NetworkAttachment.objects.count())
    with pytest.raises(CapacityError, match=r"every tenant VLAN of site lab \(100-101\) is in use"):
        _reserve(network_site, 1)
    after = (Reservation.objects.count(), Allocation.objects.count(), NetworkAttachment.objects.count())
    assert after == before and TenantNetwork.objects.count() == 2


@pytest.mark.django_db
def test_exhausted_subnets_and_public_addresses_are_capacity_errors(network_site):
    # a /28 holds two /29s: the third network has no subnet although VLANs are left
    SiteNetwork.objects.filter(pk=network_site.site_network.pk).update(tenant_supernet="198.19.0.0/28")
    _reserve(network_site, 1)
    _reserve(network_site, 1)
    with pytest.raises(
        CapacityError, match=r"every /29 of site lab's tenant supernet 198.19.0.0/28 is in use"
    ):
        _reserve(network_site, 1)
    SiteNetwork.objects.filter(pk=network_site.site_network.pk).update(
        tenant_supernet="198.19.0.0/27",
        public_range="203.0.113.0/30",  # two public addresses, both taken
    )
    with pytest.raises(CapacityError, match=r"every public address of site lab \(203.0.113.0/30\) is in use"):
        _reserve(network_site, 1, server_type=network_site.a100)
    assert TenantNetwork.objects.count() == 2 and NetworkAttachment.objects.count() == 2
    assert Allocation.objects.filter(reservation__server_type=network_site.a100).count() == 0


@pytest.mark.django_db
def test_future_windows_get_their_network_when_booked(network_site):
    start = timezone.now() + 5 * HOUR
    r = _reserve(network_site, 2, starts_at=start, ends_at=start + HOUR)
    assert TenantNetwork.objects.get(reservation=r).attachments.count() == 2


@pytest.mark.django_db
def test_live_vlans_cidrs_and_addresses_are_unique_in_the_database(network_site):
    r = _reserve(network_site, 1)
    net = TenantNetwork.objects.get(reservation=r)
    with pytest.raises(IntegrityError), transaction.atomic():
        TenantNetwork.objects.create(
            site=net.site,
            vlan=net.vlan,
            cidr="198.19.0.16/29",
            gateway="198.19.0.17",
            organization=net.organization,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        TenantNetwork.objects.create(
            site=net.site, vlan=103, cidr=net.cidr, gateway=net.gateway, organization=net.organization
        )
    a = net.attachments.get()
    with pytest.raises(IntegrityError), transaction.atomic():
        NetworkAttachment.objects.create(
            network=net, node=a.node, site=net.site, private_address=a.private_address, public_address=None
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        NetworkAttachment.objects.create(
            network=net,
            node=a.node,
            site=net.site,
            private_address="198.19.0.6",
            public_address=a.public_address,
        )
    # released rows free their VLAN and addresses
    TenantNetwork.objects.filter(pk=net.pk).update(released_at=timezone.now())
    NetworkAttachment.objects.filter(pk=a.pk).update(released_at=timezone.now())
    TenantNetwork.objects.create(
        site=net.site, vlan=net.vlan, cidr=net.cidr, gateway=net.gateway, organization=net.organization
    )


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_never_get_the_same_vlan(network_site):
    """Four organizations' bookings race at one site (PostgreSQL: the site network's row lock; SQLite: the
    IMMEDIATE transaction): four different VLANs and subnets, no error."""
    barrier = threading.Barrier(4)
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        try:
            barrier.wait()
            _reserve(network_site, 1, server_type=network_site.h100 if i < 2 else network_site.a100)
        except Exception as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    live = TenantNetwork.objects.live()
    assert live.count() == 4
    assert len(set(live.values_list("vlan", flat=True))) == 4
    assert len(set(live.values_list("cidr", flat=True))) == 4
    assert len(set(NetworkAttachment.objects.values_list("public_address", flat=True))) == 4


def _site_network(**kw):
    fields = dict(
        provisioning_vlan=10,
        cleaning_vlan=10,
        quarantine_vlan=99,
        tenant_vlan_first=100,
        tenant_vlan_last=199,
        tenant_supernet="198.19.0.0/16",
        tenant_prefix=24,
        public_range="203.0.113.0/24",
    )
    fields.update(kw)
    return SiteNetwork(**fields)


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"provisioning_vlan": 0}, "provisioning_vlan", "not a VLAN id"),
        ({"quarantine_vlan": 4095}, "quarantine_vlan", "not a VLAN id"),
        ({"tenant_vlan_first": 5, "tenant_vlan_last": 20}, "tenant_vlan_first", "includes VLAN 10"),
        ({"tenant_vlan_last": 50}, "tenant_vlan_last", "empty"),
        ({"quarantine_vlan": 10}, "quarantine_vlan", "must differ"),
        ({"tenant_prefix": 12}, "tenant_prefix", "does not fit inside 198.19.0.0/16"),
        ({"tenant_prefix": 31}, "tenant_prefix", "does not fit"),
        ({"tenant_supernet": "198.19.0.1/16"}, "tenant_supernet", "not a network in CIDR form"),
        ({"public_range": "198.19.5.0/24"}, "public_range", "overlaps the tenant supernet"),
    ],
)
def test_a_site_network_is_validated(fields, field, message):
    found = _site_network(**fields).problems()
    assert field in found and message in found[field], found
    with pytest.raises(ValidationError):
        _site_network(**fields).clean()


def test_a_good_site_network_has_no_problems():
    assert _site_network().problems() == {}
    assert _site_network(cleaning_vlan=11).problems() == {}


@pytest.mark.django_db
def test_inventory_yaml_configures_a_site_network(db):
    site = {
        "slug": "fra1",
        "name": "Frankfurt",
        "racks": ["r1"],
        "network": {
            "provisioning_vlan": 10,
            "quarantine_vlan": 99,
            "tenant_vlans": "100-199",
            "tenant_supernet": "198.19.0.0/16",
            "public_range": "203.0.113.0/24",
        },
    }
    enroll({"sites": [site]}, actor=Actor.system("test"))
    net = SiteNetwork.objects.get(site__slug="fra1")
    assert (net.cleaning_vlan, net.tenant_vlan_first, net.tenant_vlan_last, net.tenant_prefix) == (
        10,
        100,
        199,
        24,
    )
    site["network"]["tenant_vlans"] = "5-20"
    with pytest.raises(
        InvalidRequest, match=r"site fra1: network: the tenant VLAN pool 5-20 includes VLAN 10"
    ):
        enroll({"sites": [site]}, actor=Actor.system("test"))
    site["network"]["tenant_vlans"] = "many"
    with pytest.raises(InvalidRequest, match="is not a range such as 100-199"):
        enroll({"sites": [site]}, actor=Actor.system("test"))
    assert SiteNetwork.objects.get(site__slug="fra1").tenant_vlan_first == 100


def test_tenant_networks_are_carved_in_order():
    assert [str(n) for n in list(ipaddress.ip_network("198.19.0.0/27").subnets(new_prefix=29))][:2] == [
        "198.19.0.0/29",
        "198.19.0.8/29",
    ]


@pytest.mark.django_db
def test_a_managed_node_without_cabling_or_switch_is_not_offered_and_its_work_is_refused(network_site):
    from provisioner import hardware
    from provisioner.errors import InvalidNodeData
    from provisioner.models import Node
    from provisioner.services.reservations import availability
    from provisioner.states import OperationKind

    Node.objects.filter(name="node-h100-8x-01").update(switch_port="")
    Node.objects.filter(name="node-h100-8x-02").update(switch_name="leaf9")
    assert availability(network_site.h100) == 2
    problems = hardware.pool_problems(Node.objects.get(name="node-h100-8x-02"))
    assert "switch 'leaf9' is not registered" in str(problems["network"])
    with pytest.raises(InvalidNodeData, match="no switch cabling is recorded for the boot NIC"):
        hardware.validate_for(Node.objects.get(name="node-h100-8x-01"), OperationKind.CLEAN)
    hardware.validate_for(Node.objects.get(name="node-h100-8x-01"), OperationKind.POWER)  # no port moves
    r = _reserve(network_site, 2)
    assert set(Node.objects.filter(reservation=r).values_list("name", flat=True)) == {
        "node-h100-8x-03",
        "node-h100-8x-04",
    }
    with pytest.raises(CapacityError):
        _reserve(network_site, 1)
