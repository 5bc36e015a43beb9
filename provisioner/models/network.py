"""The network we drive: switches and how to log in, each site's VLANs and address ranges, tenant networks
and the servers on them."""

from __future__ import annotations

import ipaddress

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from provisioner import crypto
from provisioner.drivers.registry import SWITCH_DRIVERS
from provisioner.drivers.switch import VLAN_MAX, VLAN_MIN, SwitchAccess
from provisioner.models.tenancy import OrgScopedQuerySet


class Switch(models.Model):
    """A switch whose ports the control plane moves between VLANs. ``name`` is what nodes' cabling
    (``Node.switch_name``) calls it. The password and private key are encrypted at rest (NEOCLOUD_CREDENTIAL_KEYS)
    and never shown; either may be blank, not both."""

    name = models.CharField(max_length=100, unique=True)
    site = models.ForeignKey("provisioner.Site", null=True, blank=True, on_delete=models.PROTECT)
    driver = models.CharField(max_length=20, choices=[(d, d) for d in SWITCH_DRIVERS], default="linux")
    address = models.CharField(max_length=255, help_text="management address (host name or IP)")
    port = models.PositiveIntegerField(default=22)
    username = models.CharField(max_length=100)
    password_encrypted = models.TextField(blank=True)
    private_key_encrypted = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The switch's batch lock (engine/switch_batch.py): which network step moves this switch's ports now, and
    # until when its claim holds should its worker die. Taken and given back by single-row UPDATEs, so no
    # database transaction stays open across the SSH session (on SQLite that would stop every writer).
    batch_holder = models.CharField(max_length=80, blank=True, editable=False)
    batch_until = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Switch {self.name} {self.driver}://{self.username}@{self.address}:{self.port} secrets=***>"

    @property
    def password(self) -> str:
        return crypto.decrypt(self.password_encrypted) if self.password_encrypted else ""

    @password.setter
    def password(self, value: str) -> None:
        self.password_encrypted = crypto.encrypt(value) if value else ""

    @property
    def private_key(self) -> str:
        return crypto.decrypt(self.private_key_encrypted) if self.private_key_encrypted else ""

    @private_key.setter
    def private_key(self, value: str) -> None:
        self.private_key_encrypted = crypto.encrypt(value) if value else ""

    def access(self, timeout: float = 10.0) -> SwitchAccess:
        """What the driver needs to log in (secrets decrypted here, held only by the driver)."""
        return SwitchAccess(
            name=self.name,
            driver=self.driver,
            address=self.address,
            port=self.port,
            username=self.username,
            password=self.password,
            private_key=self.private_key,
            timeout=timeout,
        )


def _vlan_field(help_text: str) -> models.PositiveSmallIntegerField:
    return models.PositiveSmallIntegerField(
        validators=[MinValueValidator(VLAN_MIN), MaxValueValidator(VLAN_MAX)], help_text=help_text
    )


class SiteNetwork(models.Model):
    """How a site's servers are networked (issue 18). A site with one is *network-managed*: every server's
    switch port is moved between the provisioning, cleaning, quarantine and tenant VLANs by the lifecycle;
    a site without one is left as cabled (the engine's network steps do nothing there).

    Tenant networks are carved from ``tenant_supernet`` in ``/tenant_prefix`` subnets, each on one VLAN of
    ``tenant_vlan_first``..``tenant_vlan_last``; every server of a managed site gets one public address from
    ``public_range`` for its reservation (published by the switch's 1:1 NAT)."""

    site = models.OneToOneField("provisioner.Site", on_delete=models.CASCADE, related_name="network")
    provisioning_vlan = _vlan_field("boot service, image mirror, deploy agents")
    cleaning_vlan = _vlan_field("where released servers are wiped (may be the provisioning VLAN)")
    quarantine_vlan = _vlan_field("servers that failed burn-in: nothing but the control plane reachable")
    tenant_vlan_first = _vlan_field("first VLAN of the tenant pool")
    tenant_vlan_last = _vlan_field("last VLAN of the tenant pool (inclusive)")
    tenant_supernet = models.CharField(max_length=43, help_text="CIDR carved into tenant networks")
    tenant_prefix = models.PositiveSmallIntegerField(
        default=24, help_text="prefix length of a tenant network"
    )
    public_range = models.CharField(max_length=43, help_text="CIDR of public addresses, one per server")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["site__slug"]

    def __str__(self) -> str:
        return f"network of {self.site}"

    @property
    def infrastructure_vlans(self) -> set[int]:
        return {self.provisioning_vlan, self.cleaning_vlan, self.quarantine_vlan}

    def tenant_vlans(self) -> range:
        return range(self.tenant_vlan_first, self.tenant_vlan_last + 1)

    def supernet(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.tenant_supernet, strict=True)

    def public_network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.public_range, strict=True)

    def problems(self) -> dict[str, str]:
        """What is wrong with this record, by field (empty: usable). Pure."""
        out: dict[str, str] = {}
        for field in (
            "provisioning_vlan",
            "cleaning_vlan",
            "quarantine_vlan",
            "tenant_vlan_first",
            "tenant_vlan_last",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or not VLAN_MIN <= value <= VLAN_MAX:
                out[field] = f"{value!r} is not a VLAN id ({VLAN_MIN}-{VLAN_MAX})"
        if out:
            return out
        if self.tenant_vlan_first > self.tenant_vlan_last:
            out["tenant_vlan_last"] = (
                f"the tenant VLAN pool {self.tenant_vlan_first}-{self.tenant_vlan_last} is empty "
                "(the last VLAN is below the first)"
            )
        overlap = sorted(v for v in self.infrastructure_vlans if v in self.tenant_vlans())
        if overlap:
            out["tenant_vlan_first"] = (
                f"the tenant VLAN pool {self.tenant_vlan_first}-{self.tenant_vlan_last} includes VLAN "
                f"{', '.join(map(str, overlap))}, the provisioning, cleaning or quarantine network"
            )
        if self.quarantine_vlan in (self.provisioning_vlan, self.cleaning_vlan):
            out["quarantine_vlan"] = (
                f"the quarantine VLAN {self.quarantine_vlan} must differ from the provisioning and cleaning VLANs"
            )
        try:
            supernet = self.supernet()
        except ValueError as exc:
            out["tenant_supernet"] = f"{self.tenant_supernet!r} is not a network in CIDR form: {exc}"
        else:
            if not supernet.prefixlen <= self.tenant_prefix <= supernet.max_prefixlen - 2:
                out["tenant_prefix"] = (
                    f"a /{self.tenant_prefix} tenant network does not fit inside {supernet} with room for a "
                    f"gateway and a server (a prefix from /{supernet.prefixlen} to "
                    f"/{supernet.max_prefixlen - 2})"
                )
        try:
            public = self.public_network()
        except ValueError as exc:
            out["public_range"] = f"{self.public_range!r} is not a network in CIDR form: {exc}"
        else:
            if (
                "tenant_supernet" not in out
                and public.version == supernet.version
                and public.overlaps(supernet)
            ):
                out["public_range"] = f"the public range {public} overlaps the tenant supernet {supernet}"
        return out

    def clean(self) -> None:
        found = self.problems()
        if found:
            raise ValidationError(found)


class TenantNetworkQuerySet(OrgScopedQuerySet):
    def live(self) -> TenantNetworkQuerySet:
        return self.filter(released_at__isnull=True)


class TenantNetwork(models.Model):
    """A tenant's private network at one site: a VLAN from the site's pool and a subnet of its supernet,
    the gateway being the subnet's first host (an interface on the switch). One per reservation, or one per
    organization and site when the organization shares its network across its reservations (``shared``).
    Released (``released_at``) when its last server left it: its VLAN and subnet go back to the pool."""

    site = models.ForeignKey("provisioner.Site", on_delete=models.PROTECT, related_name="tenant_networks")
    vlan = models.PositiveSmallIntegerField(
        validators=[MinValueValidator(VLAN_MIN), MaxValueValidator(VLAN_MAX)]
    )
    cidr = models.CharField(max_length=43)
    gateway = models.GenericIPAddressField()
    organization = models.ForeignKey(
        "provisioner.Organization", on_delete=models.PROTECT, related_name="tenant_networks"
    )
    reservation = models.ForeignKey(
        "provisioner.Reservation", null=True, blank=True, on_delete=models.SET_NULL, related_name="networks"
    )
    shared = models.BooleanField(
        default=False, help_text="the organization's network for all its reservations"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)

    objects = TenantNetworkQuerySet.as_manager()

    class Meta:
        ordering = ["site_id", "vlan", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["site", "vlan"],
                condition=models.Q(released_at__isnull=True),
                name="uniq_live_tenant_vlan",
            ),
            models.UniqueConstraint(
                fields=["site", "cidr"],
                condition=models.Q(released_at__isnull=True),
                name="uniq_live_tenant_cidr",
            ),
            models.UniqueConstraint(
                fields=["site", "organization"],
                condition=models.Q(released_at__isnull=True, shared=True),
                name="uniq_live_shared_network",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.cidr} (VLAN {self.vlan}) for {self.organization}"

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.cidr).prefixlen

    @property
    def gateway_cidr(self) -> str:
        """The gateway with its prefix, e.g. ``198.19.3.1/24`` (what the switch's interface gets)."""
        return f"{self.gateway}/{self.prefix}"


class NetworkAttachmentQuerySet(OrgScopedQuerySet):
    org_field = "network__organization"

    def live(self) -> NetworkAttachmentQuerySet:
        return self.filter(released_at__isnull=True)


class NetworkAttachment(models.Model):
    """A server on a tenant network for one reservation: its private address there and its public address
    (the site's public range, published to the private one by the switch). Ended (``released_at``) when the
    server leaves the network on release."""

    network = models.ForeignKey(TenantNetwork, on_delete=models.PROTECT, related_name="attachments")
    node = models.ForeignKey("provisioner.Node", on_delete=models.PROTECT, related_name="network_attachments")
    reservation = models.ForeignKey(
        "provisioner.Reservation",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="attachments",
    )
    # The site again (the network's): a live public address is unique per site, and a constraint needs it here.
    site = models.ForeignKey("provisioner.Site", on_delete=models.PROTECT, related_name="+")
    private_address = models.GenericIPAddressField()
    public_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # when the server joined the network on the switch (network_tenant): None, it never did
    configured_at = models.DateTimeField(null=True, blank=True)
    released_at = models.DateTimeField(null=True, blank=True)

    objects = NetworkAttachmentQuerySet.as_manager()

    class Meta:
        ordering = ["network_id", "node__name"]
        constraints = [
            models.UniqueConstraint(
                fields=["network", "private_address"],
                condition=models.Q(released_at__isnull=True),
                name="uniq_live_private_address",
            ),
            models.UniqueConstraint(
                fields=["site", "public_address"],
                condition=models.Q(released_at__isnull=True, public_address__isnull=False),
                name="uniq_live_public_address",
            ),
            models.UniqueConstraint(
                fields=["node", "reservation"],
                condition=models.Q(released_at__isnull=True),
                name="uniq_live_attachment_per_node_reservation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.node} at {self.private_address} on {self.network.cidr}"
