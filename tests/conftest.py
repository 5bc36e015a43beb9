"""Shared fixtures: personas (owner, member, outsider, operator), inventory, real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Tests reach only loopback and the lab: the emulated computers' kernel and tools were downloaded by
# scripts/bootstrap.sh, and a missing one fails the build with a clear error instead of being fetched.
os.environ.setdefault("NEOCLOUD_LAB_OFFLINE", "1")


def pytest_report_header(config: pytest.Config) -> str:
    from django.conf import settings

    db = settings.DATABASES["default"]
    return (
        f"neocloud test database: {db['ENGINE'].rsplit('.', 1)[-1]} {db.get('HOST', '')} {db['TEST']['NAME']}"
    )


def ssh_keygen(
    tmp_path: Path, kind: str = "ed25519", bits: int | None = None, name: str = "key"
) -> tuple[str, str]:
    """A real key pair made by ssh-keygen: (private key text, public key line)."""
    path = tmp_path / name
    cmd = ["ssh-keygen", "-q", "-N", "", "-t", kind, "-f", str(path), "-C", f"{name}@test"]
    if bits:
        cmd += ["-b", str(bits)]
    subprocess.run(cmd, check=True)
    return path.read_text(), (tmp_path / f"{name}.pub").read_text().strip()


@pytest.fixture
def fake_hw_dir(settings, tmp_path: Path, monkeypatch) -> Path:
    path = tmp_path / "fake-hw"
    path.mkdir()
    settings.NEOCLOUD_FAKE_HW_DIR = path
    monkeypatch.setenv("NEOCLOUD_FAKE_HW_DIR", str(path))
    return path


@pytest.fixture
def inventory(db, tmp_path: Path):
    """A small fleet with fake BMCs: 4 h100-8x nodes and 2 a100-8x nodes, an image, two organizations."""
    from django.contrib.auth.models import User

    from lab.spec import H100_8X_TYPE
    from provisioner.lifecycle import Actor
    from provisioner.models import Image, Membership, Organization, SSHKey
    from provisioner.services.inventory import enroll
    from provisioner.sshkeys import parse_public_key

    def node(i: int, st: str) -> dict:
        return {
            "name": f"node-{st}-{i:02d}",
            "server_type": st,
            "site": "lab",
            "rack": "r1",
            "boot_mac": f"52:54:00:00:{0 if st == 'h100-8x' else 1:02x}:{i:02x}",
            "bmc": {
                "protocol": "fake",
                "address": f"fake-{st}-{i}",
                "port": 623,
                "username": "admin",
                "password": "secret-bmc-pw",
            },
        }

    enroll(
        {
            "sites": [{"slug": "lab", "name": "Lab", "racks": ["r1"]}],
            "server_types": [
                {"slug": "h100-8x", **H100_8X_TYPE},
                {
                    "slug": "a100-8x",
                    "name": "8x A100 SXM",
                    "cpu_model": "EPYC 7763",
                    "cpu_cores": 128,
                    "ram_gib": 1024,
                    "gpu_model": "NVIDIA A100-SXM4-80GB",
                    "gpu_count": 8,
                    "gpu_memory_gib": 80,
                    "pcie_gen": 4,
                    "pcie_width": 16,
                    "nvlink_links": 12,
                    "disk_gib": 3840,
                },
            ],
            "images": [
                {
                    "slug": "ubuntu-24.04",
                    "name": "Ubuntu 24.04",
                    "url": "http://127.0.0.1:9/ubuntu.raw",
                    "sha256": "0" * 64,
                    "size_bytes": 1024,
                    "format": "raw",
                    "os_name": "Ubuntu",
                }
            ],
            "nodes": [node(i, "h100-8x") for i in range(1, 5)] + [node(i, "a100-8x") for i in range(1, 3)],
        },
        actor=Actor.system("test"),
    )
    owner = User.objects.create_user("olivia", password="pw-olivia-123")
    member = User.objects.create_user("mike", password="pw-mike-12345")
    outsider = User.objects.create_user("oscar", password="pw-oscar-1234")
    operator = User.objects.create_user("opal", password="pw-opal-12345", is_staff=True)
    acme = Organization.objects.create(name="Acme AI", slug="acme", server_quota=16)
    other = Organization.objects.create(name="Other Labs", slug="other", server_quota=16)
    Membership.objects.create(organization=acme, user=owner, role=Membership.Role.OWNER)
    Membership.objects.create(organization=acme, user=member, role=Membership.Role.MEMBER)
    Membership.objects.create(organization=other, user=outsider, role=Membership.Role.OWNER)
    _, pub = ssh_keygen(tmp_path, name="acme")
    parsed = parse_public_key(pub)
    key = SSHKey.objects.create(
        organization=acme,
        created_by=owner,
        name="laptop",
        public_key=parsed.line,
        fingerprint=parsed.fingerprint,
    )
    _, pub2 = ssh_keygen(tmp_path, name="other")
    parsed2 = parse_public_key(pub2)
    other_key = SSHKey.objects.create(
        organization=other,
        created_by=outsider,
        name="ws",
        public_key=parsed2.line,
        fingerprint=parsed2.fingerprint,
    )

    class Inv:
        pass

    inv = Inv()
    inv.owner, inv.member, inv.outsider, inv.operator = owner, member, outsider, operator
    inv.acme, inv.other, inv.key, inv.other_key = acme, other, key, other_key
    inv.image = Image.objects.get(slug="ubuntu-24.04")
    from provisioner.models import ServerType

    inv.h100 = ServerType.objects.get(slug="h100-8x")
    inv.a100 = ServerType.objects.get(slug="a100-8x")
    return inv


class Clock:
    """A controllable "now" for the ``clock`` fixture: ``set`` and ``advance`` move it; it never moves alone."""

    def __init__(self, now) -> None:
        self.now = now

    def __call__(self):
        return self.now

    def set(self, moment) -> None:
        self.now = moment

    def advance(self, **delta) -> None:
        import datetime as dt

        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """Patch ``django.utils.timezone.now`` (which the services, ``auto_now`` fields and the scheduler read) with a
    Clock set to the real now; in-process only (a worker process keeps the real clock)."""
    from django.utils import timezone

    fake = Clock(timezone.now())
    monkeypatch.setattr(timezone, "now", fake)
    return fake


def worker_env(settings) -> dict[str, str]:
    """Environment for a real worker process that shares this test's database and fake hardware."""
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "webapp.settings_test"
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    env["NEOCLOUD_FAKE_HW_DIR"] = str(settings.NEOCLOUD_FAKE_HW_DIR)
    env["NEOCLOUD_LAB_DIR"] = str(settings.NEOCLOUD_LAB_DIR)
    env["NEOCLOUD_BOOT_URL"] = settings.NEOCLOUD_BOOT_URL
    env["NEOCLOUD_DEPLOY_DRIVER"] = settings.NEOCLOUD_DEPLOY_DRIVER
    env["NEOCLOUD_BURNIN_DRIVER"] = settings.NEOCLOUD_BURNIN_DRIVER
    env["NEOCLOUD_FAKE_AGENT_SECONDS"] = str(settings.NEOCLOUD_FAKE_AGENT_SECONDS)
    env["NEOCLOUD_FAST_TRACK"] = "1" if settings.NEOCLOUD_FAST_TRACK else "0"
    env["NEOCLOUD_FAST_TRACK_HEARTBEAT_SECONDS"] = str(settings.NEOCLOUD_FAST_TRACK_HEARTBEAT_SECONDS)
    env["NEOCLOUD_FAST_TRACK_MISSED_HEARTBEATS"] = str(settings.NEOCLOUD_FAST_TRACK_MISSED_HEARTBEATS)
    return env


class WorkerPool:
    """Real ``manage.py worker`` processes (and a scheduler) for a test."""

    def __init__(self, settings, log_dir: Path) -> None:
        self.env = worker_env(settings)
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}-{len(self.procs)}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def worker(self) -> subprocess.Popen:
        return self._spawn(
            ["worker", "--threads", "2", "--interval", "0.1"],
            "worker",
        )

    def scheduler(self) -> subprocess.Popen:
        return self._spawn(["scheduler", "--interval", "0.3", "--no-power-sync"], "scheduler")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture
def workers(settings, transactional_db, tmp_path: Path) -> Iterator[WorkerPool]:
    pool = WorkerPool(settings, tmp_path)
    try:
        yield pool
    finally:
        pool.stop()


def reserve(
    inv, count: int = 1, *, org=None, server_type=None, user=None, key=None, label="olivia", **window
):
    """Book ``count`` servers through the reservation service for the ``inventory`` fixture's customer (Acme,
    its owner olivia, her key, the image; ``org``/``server_type``/``user``/``key`` override), for ``window``
    (starts_at, ends_at, name, ...: book_servers' keywords). Returns the Reservation."""
    from provisioner.lifecycle import Actor
    from provisioner.services.reservations import book_servers

    return book_servers(
        org or inv.acme,
        server_type or inv.h100,
        count,
        image=inv.image,
        ssh_keys=[key or inv.key],
        actor=Actor(user=user or inv.owner, label=label),
        **window,
    ).reservation


def wait_for(predicate, timeout: float = 30, interval: float = 0.1, message="condition", details=None):
    """Poll ``predicate`` until it returns something truthy; fail with ``message`` (and ``details()``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    extra = f"\n{details()}" if details else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {message}{extra}")


# --- a real NetBox (lab/netbox_server.py): one per test session, started on first use -------------------


class NetboxLab:
    """The session's real NetBox, its superuser's tokens and a REST client that populates it."""

    def __init__(self) -> None:
        from lab.netbox_server import NetboxClient, NetboxServer

        self.server = NetboxServer().start()
        self.url = self.server.url
        self.client = NetboxClient(self.url, self.server.token_v1)
        self.define_schema()

    def define_schema(self) -> None:
        """What a datacenter team defines once for GPU servers: the roles, the pxe tag and the custom fields,
        bmc_protocol and bmc_scheme as selections (NetBox answers them as {"value", "label"})."""
        c = self.client
        c.device_role("gpu-server")
        c.item_role("gpu")
        c.tag("pxe")
        protocols = c.choice_set("bmc-protocols", [("ipmi", "IPMI"), ("redfish", "Redfish")])
        schemes = c.choice_set("bmc-schemes", [("http", "HTTP"), ("https", "HTTPS")])
        c.custom_field("bmc_protocol", "select", choice_set=protocols)
        c.custom_field("bmc_scheme", "select", choice_set=schemes)
        c.custom_field("bmc_port", "integer")
        c.custom_field("redfish_system_id", "text")
        c.custom_field("neocloud_server_type", "text")

    def reset(self) -> None:
        """Back to the schema and the base sites and racks the NetBox tests share (ams1 with r01 and r02,
        fra1): kept between tests, as NetBox takes about 0.1 s a write on these machines."""
        self.server.reset(keep_sites=("ams1", "fra1"), keep_racks=("r01", "r02"))
        self.client.forget()


@pytest.fixture(scope="session")
def netbox_lab() -> Iterator[NetboxLab]:
    """Fails (never skips) when NetBox cannot be prepared or started: the error says which part and why."""
    nb = NetboxLab()
    try:
        yield nb
    finally:
        nb.server.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that uses the real NetBox is marked ``peer`` (scripts/test.sh runs those once)."""
    for item in items:
        if "netbox_lab" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.peer)


def assert_one_event_per_transition(nodes) -> None:
    """Every transition of ``nodes`` (audited in its transaction) has exactly one node.transition event,
    in the same order: a worker killed with SIGKILL between a change and its event cannot separate them,
    as both are one transaction."""
    from provisioner.models import AuditEvent, Event

    for node in nodes:
        audits = [
            (a.from_state, a.to_state)
            for a in AuditEvent.objects.filter(node=node, action="transition").order_by("id")
        ]
        events = [
            (e.payload["from_state"], e.payload["to_state"])
            for e in Event.objects.filter(type=Event.Type.NODE_TRANSITION).order_by("id")
            if e.payload["node"]["id"] == node.pk
        ]
        assert audits and events == audits, node.name


@pytest.fixture
def network_site(inventory, fake_hw_dir):
    """The inventory's site made network-managed: VLAN 10 provisioning (and cleaning), 99 quarantine, tenant
    VLANs 100-103 with /29s of 198.19.0.0/27, public addresses from 203.0.113.0/29; a fake switch ``leaf1``
    (driver ``fake``) whose ports swp1..swp6 are cabled to the six nodes, all on the provisioning VLAN."""
    from provisioner.drivers.fake_switch import write_fake_switch
    from provisioner.models import Node, Site, SiteNetwork, Switch

    site = Site.objects.get(slug="lab")
    net = SiteNetwork.objects.create(
        site=site,
        provisioning_vlan=10,
        cleaning_vlan=10,
        quarantine_vlan=99,
        tenant_vlan_first=100,
        tenant_vlan_last=103,
        tenant_supernet="198.19.0.0/27",
        tenant_prefix=29,
        public_range="203.0.113.0/29",
    )
    switch = Switch(name="leaf1", site=site, driver="fake", address="127.0.0.1", port=22, username="admin")
    switch.password = "switch-pw"
    switch.save()
    ports = {}
    for i, node in enumerate(Node.objects.order_by("name"), start=1):
        Node.objects.filter(pk=node.pk).update(switch_name="leaf1", switch_port=f"swp{i}")
        ports[f"swp{i}"] = 10
    write_fake_switch("leaf1", fake_hw_dir, ports=ports)
    inventory.site_network = net
    inventory.switch = switch
    return inventory
