"""What we own: sites, racks, hardware profiles, nodes, their BMC credentials, and OS images."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.validators import RegexValidator
from django.db import models

from provisioner import crypto
from provisioner.drivers.base import BmcAccess
from provisioner.drivers.registry import BURNIN_DRIVERS, DEPLOY_DRIVERS
from provisioner.models.tenancy import OrgScopedQuerySet
from provisioner.states import NodeState, PowerStateChoice


class Site(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    netbox_id = models.PositiveIntegerField(null=True, blank=True, unique=True)
    # Servers fetch images from their site's mirror (images stay on the site's network, and a site whose
    # servers cannot reach the catalog's host still deploys): the catalog URL's file name under this base.
    image_mirror_url = models.URLField(
        max_length=300,
        blank=True,
        help_text="base URL of this site's image mirror (blank: servers fetch from the catalog URL)",
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name


class Rack(models.Model):
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="racks")
    name = models.CharField(max_length=50)
    netbox_id = models.PositiveIntegerField(null=True, blank=True, unique=True)

    class Meta:
        ordering = ["site__slug", "name"]
        constraints = [models.UniqueConstraint(fields=["site", "name"], name="uniq_rack_per_site")]

    def __str__(self) -> str:
        return f"{self.site.slug}/{self.name}"


# What describes a server type to customers and operators (catalog, API, admin, inventory files).
SERVER_TYPE_FIELDS = (
    "name",
    "description",
    "cpu_model",
    "cpu_cores",
    "ram_gib",
    "gpu_model",
    "gpu_count",
    "gpu_memory_gib",
    "pcie_gen",
    "pcie_width",
    "nvlink_links",
    "disk_gib",
    "hourly_price_cents",
)


class ServerType(models.Model):
    """A hardware profile customers reserve by, e.g. ``h100-8x``: 8x H100 80GB, NVLink, 2 TB RAM."""

    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    cpu_model = models.CharField(max_length=100)
    cpu_cores = models.PositiveIntegerField()
    ram_gib = models.PositiveIntegerField()
    gpu_model = models.CharField(max_length=100, help_text="as NVML names it, e.g. 'NVIDIA H100 80GB HBM3'")
    gpu_count = models.PositiveIntegerField()
    gpu_memory_gib = models.PositiveIntegerField()
    pcie_gen = models.PositiveSmallIntegerField()
    pcie_width = models.PositiveSmallIntegerField(default=16)
    nvlink_links = models.PositiveSmallIntegerField(default=0, help_text="active NVLinks per GPU; 0 = none")
    disk_gib = models.PositiveIntegerField()
    hourly_price_cents = models.PositiveIntegerField(default=0)
    # Operator overrides of the burn-in thresholds (keys as in provisioner.burnin.thresholds.DEFAULTS).
    burnin_thresholds = models.JSONField(default=dict, blank=True)
    # Which drivers deploy and burn in this type's servers; blank: the installation's default
    # (NEOCLOUD_DEPLOY_DRIVER, NEOCLOUD_BURNIN_DRIVER). One installation can then run real servers through
    # Ansible next to a type still simulated, or a type whose burn-in runs elsewhere.
    deploy_driver = models.CharField(
        max_length=20,
        blank=True,
        choices=[("", "installation default"), *((name, name) for name in DEPLOY_DRIVERS)],
        help_text="blank: the installation's default (NEOCLOUD_DEPLOY_DRIVER)",
    )
    burnin_driver = models.CharField(
        max_length=20,
        blank=True,
        choices=[("", "installation default"), *((name, name) for name in BURNIN_DRIVERS)],
        help_text="blank: the installation's default (NEOCLOUD_BURNIN_DRIVER)",
    )
    # The warm pool (services/warm_pool.py): this many servers of the type kept deployed, burned in and
    # powered on with an image, on the provisioning network and reachable by no customer, so that a
    # reservation of that image is handed over in about a minute instead of paying two firmware self-tests.
    warm_pool_size = models.PositiveIntegerField(
        default=0, help_text="servers kept deployed and burned in, ready to hand over (0: no warm pool)"
    )
    warm_pool_image = models.ForeignKey(
        "provisioner.Image",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="the image the warm servers run (blank: the type's most booked image)",
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.name

    def burnin_expectations(self) -> dict[str, Any]:
        """What burn-in checks this hardware against."""
        return {
            "gpu_count": self.gpu_count,
            "gpu_model": self.gpu_model,
            "gpu_memory_gib": self.gpu_memory_gib,
            "pcie_gen": self.pcie_gen,
            "pcie_width": self.pcie_width,
            "nvlink_links": self.nvlink_links,
            "persistence_mode": None,
            "mig_mode": False,
        }


class NodeQuerySet(OrgScopedQuerySet):
    """Staff see the fleet; a customer sees the nodes their organizations hold now."""

    org_field = "owner"


class Node(models.Model):
    class BmcProtocol(models.TextChoices):
        IPMI = "ipmi", "IPMI"
        REDFISH = "redfish", "Redfish"
        FAKE = "fake", "Fake (tests)"

    name = models.CharField(max_length=100, unique=True)
    serial = models.CharField(max_length=100, blank=True)
    server_type = models.ForeignKey(ServerType, on_delete=models.PROTECT, related_name="nodes")
    rack = models.ForeignKey(Rack, on_delete=models.PROTECT, related_name="nodes", null=True, blank=True)
    netbox_id = models.PositiveIntegerField(null=True, blank=True, unique=True)

    bmc_protocol = models.CharField(max_length=10, choices=BmcProtocol.choices)
    bmc_address = models.CharField(max_length=255)
    bmc_port = models.PositiveIntegerField()
    bmc_system_id = models.CharField(max_length=100, blank=True, help_text="Redfish ComputerSystem id")
    # The Redfish service's URL scheme (Ironic's redfish_address carries it): http or https, blank for IPMI.
    # Never guessed from the port by the driver; enrollment writes a default when the inventory names none.
    bmc_scheme = models.CharField(
        max_length=5,
        blank=True,
        choices=[("http", "HTTP"), ("https", "HTTPS")],
        help_text="Redfish URL scheme (blank for IPMI)",
    )
    # Stored as aa:bb:cc:dd:ee:ff (save() lower-cases and turns dashes into colons): the boot service looks
    # MACs up in that form, so a node edited as AA-BB-... would never network-boot.
    boot_mac = models.CharField(
        max_length=17,
        unique=True,
        validators=[
            RegexValidator(
                r"\A[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}\Z", "Enter a MAC address such as 52:54:00:12:34:56."
            )
        ],
    )

    # Where the boot NIC is cabled: the switch (its device name in the inventory) and its port, from the
    # inventory file or NetBox's cable on the boot interface; blank where nothing says. The network issue's
    # port moves and LLDP check read it.
    switch_name = models.CharField(max_length=100, blank=True)
    switch_port = models.CharField(max_length=100, blank=True)
    # The port as the switch last reported it (network-managed sites): its access VLAN (None: on none, or never
    # read), when it was read, and why it differs from what the node's state requires (blank: it does not).
    switch_vlan = models.PositiveSmallIntegerField(null=True, blank=True)
    switch_checked_at = models.DateTimeField(null=True, blank=True)
    network_drift = models.CharField(max_length=300, blank=True)

    # Written only by provisioner.lifecycle.process_event (see states.py).
    state = models.CharField(
        max_length=20, choices=NodeState.choices, default=NodeState.ENROLLING, db_index=True
    )
    state_changed_at = models.DateTimeField(auto_now_add=True)
    state_reason = models.TextField(blank=True)
    power_state = models.CharField(
        max_length=10, choices=PowerStateChoice.choices, default=PowerStateChoice.UNKNOWN
    )
    power_checked_at = models.DateTimeField(null=True, blank=True)
    bmc_last_contact_at = models.DateTimeField(null=True, blank=True)
    bmc_last_error = models.CharField(max_length=300, blank=True)
    # An operator hold asked for while the node was not free (a customer held it, or it was being prepared
    # or wiped): its reason. The node takes no new bookings; its wipe ends in maintenance, not the pool.
    hold_requested = models.CharField(max_length=300, blank=True)

    owner = models.ForeignKey(
        "provisioner.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="nodes"
    )
    reservation = models.ForeignKey(
        "provisioner.Reservation", null=True, blank=True, on_delete=models.SET_NULL, related_name="nodes"
    )

    # The node's address on the customer network (IPAM: NetBox, the lab); the deploy agent configures it.
    primary_address = models.GenericIPAddressField(null=True, blank=True)
    # Where the node's SSH server is reached from outside (the control plane, its customer) when that is not
    # primary_address:22: a port forward (DNAT) on the site's gateway, as on clouds that share one public
    # address among many servers. From the inventory; deploy copies it into ssh_address/ssh_port.
    ssh_endpoint_address = models.CharField(
        max_length=100, blank=True, help_text="SSH reached at this address (blank: the primary address)"
    )
    ssh_endpoint_port = models.PositiveIntegerField(default=22, help_text="SSH reached at this port")
    # What differs per node for its drivers (Ironic's driver_info): the deployed OS's Python, a simulated
    # burn-in and its timings. From the inventory, checked at enrollment (provisioner/drivers/ansible/driver_info.py).
    driver_info = models.JSONField(
        default=dict,
        blank=True,
        help_text="per-node driver settings from the inventory (empty: a real server)",
    )
    # What the customer connects to once handed over.
    ssh_address = models.CharField(max_length=100, blank=True)
    ssh_port = models.PositiveIntegerField(default=22)
    ssh_user = models.CharField(max_length=50, default="root")
    host_key_fingerprints = models.JSONField(default=dict, blank=True)
    known_hosts = models.TextField(blank=True)
    image = models.ForeignKey("provisioner.Image", null=True, blank=True, on_delete=models.SET_NULL)

    # Fast-track (Ironic's fast_track): after a wipe the deploy agent stays up in the ramdisk and heartbeats
    # with the wipe's ticket; while its heartbeats arrive (fast_track_until: the last one plus the missed
    # heartbeats allowed) a deploy hands it the next ticket instead of power cycling the server into the
    # ramdisk. Past that deadline the scheduler powers the server off and clears these (the cold path).
    fast_track_ticket = models.ForeignKey(
        "provisioner.DeployTicket", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    agent_heartbeat_at = models.DateTimeField(null=True, blank=True)
    fast_track_until = models.DateTimeField(null=True, blank=True)

    # The node's lease: at most one operation works on a node at a time (see engine/locks.py).
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_operation = models.ForeignKey(
        "provisioner.Operation", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    objects = NodeQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.boot_mac = self.boot_mac.strip().lower().replace("-", ":")
        super().save(*args, **kwargs)

    def bmc_access(self, *, timeout: float | None = None) -> BmcAccess:
        """The plain-Python handle drivers take. Raises BmcCredential.DoesNotExist if none is stored."""
        from django.conf import settings

        cred = self.bmc_credential
        return BmcAccess(
            protocol=self.bmc_protocol,
            address=self.bmc_address,
            port=self.bmc_port,
            username=cred.username,
            password=cred.password,
            system_id=self.bmc_system_id,
            scheme=self.bmc_scheme or "https",
            timeout=timeout if timeout is not None else settings.NEOCLOUD_BMC_TIMEOUT_SECONDS,
        )


class BmcCredential(models.Model):
    """A node's BMC login. The password is encrypted at rest and never shown (admin, API, logs, errors)."""

    node = models.OneToOneField(Node, on_delete=models.CASCADE, related_name="bmc_credential")
    username = models.CharField(max_length=100)
    password_encrypted = models.TextField()
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"BMC login {self.username}@{self.node.name}"

    def __repr__(self) -> str:
        return f"<BmcCredential node={self.node_id} username={self.username!r} password=***>"

    @property
    def password(self) -> str:
        return crypto.decrypt(self.password_encrypted)

    @password.setter
    def password(self, value: str) -> None:
        self.password_encrypted = crypto.encrypt(value)


class Image(models.Model):
    class Format(models.TextChoices):
        RAW = "raw", "raw"

    slug = models.SlugField(max_length=100, unique=True)
    name = models.CharField(max_length=100)
    url = models.CharField(max_length=500, help_text="where the deploy agent streams it from")
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField()
    format = models.CharField(max_length=10, choices=Format.choices, default=Format.RAW)
    os_name = models.CharField(max_length=100, blank=True)
    public = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def url_for_site(self, site: Site | None) -> str:
        """The URL a server at ``site`` fetches this image from: the same file name under the site's image
        mirror, or the catalog URL when the site has no mirror. Pure."""
        if site is None or not site.image_mirror_url:
            return self.url
        name = urlsplit(self.url).path.rsplit("/", 1)[-1]
        return f"{site.image_mirror_url.rstrip('/')}/{name}"


class InventorySync(models.Model):
    """One run of the NetBox sync that changed something or could have (dry runs are not kept): when, from
    where, what it changed, deferred and skipped and why, or why it could not run. The fleet page shows the
    last one; the rows are a history, never read by the sync itself."""

    class Outcome(models.TextChoices):
        OK = "ok", "OK"
        SKIPPED = "skipped", "devices skipped"
        FAILED = "failed", "failed"

    started_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField()
    source = models.CharField(max_length=300, help_text="NetBox's address (never a token)")
    role = models.CharField(max_length=100)
    actor = models.CharField(max_length=150)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    counts = models.JSONField(default=dict, blank=True)
    # [{"device", "outcome", "message"}] of every device not unchanged; sites and racks created or changed.
    results = models.JSONField(default=list, blank=True)
    places = models.JSONField(default=list, blank=True)
    notes = models.JSONField(default=list, blank=True)  # what NetBox lacked that the sync tolerated
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"NetBox sync {self.started_at:%Y-%m-%d %H:%M:%S} {self.outcome}"
