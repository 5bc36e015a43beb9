"""Inventory from NetBox, over real HTTP against a real NetBox (the PyPI package, lab/netbox_server.py) with
pynetbox, populated through NetBox's own REST API: what a first sync creates, that a second changes nothing,
what is deferred on leased nodes, what happens to nodes whose device is gone or offline, that every bad device
is one sentence that changes nothing, and what real NetBox answers that an imitation did not (selection custom
fields, 403 for a bad token, v2 tokens, a 400 for an unknown role)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynetbox
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from provisioner.errors import InvalidRequest
from provisioner.lifecycle import Actor, process_event
from provisioner.models import AuditEvent, InventorySync, Node, Rack, ServerType, Site
from provisioner.services import netbox
from provisioner.services.inventory import enroll
from provisioner.services.periodics import queue_periodic_syncs
from provisioner.states import NodeEvent, NodeState

TOKEN = "0123456789abcdef-netbox-token-s3cret"  # for tests that never reach a NetBox
ACTOR = Actor.system("netbox-test")
H100 = "NVIDIA H100 80GB HBM3"


@pytest.fixture
def server_types(db) -> None:
    common = {
        "cpu_model": "x",
        "cpu_cores": 1,
        "ram_gib": 1,
        "gpu_memory_gib": 80,
        "pcie_gen": 5,
        "disk_gib": 1,
    }
    ServerType.objects.create(slug="h100-8x", name="8x H100", gpu_model=H100, gpu_count=8, **common)
    ServerType.objects.create(
        slug="a100-8x", name="8x A100", gpu_model="NVIDIA A100-SXM4-80GB", gpu_count=8, **common
    )


@pytest.fixture
def credentials(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "bmc-pw").write_text("bmc-default-pw\n")
    (tmp_path / "ams-pw").write_text("bmc-ams1-pw\n")
    path = tmp_path / "credentials.yaml"
    path.write_text(
        f"default: {{username: admin, password_file: {tmp_path / 'bmc-pw'}}}\n"
        f"sites:\n  ams1: {{username: root, password_file: {tmp_path / 'ams-pw'}}}\n"
    )
    return netbox.load_credentials(path)


class Lab:
    """A datacenter team's NetBox: two sites, two racks in ams1; GPU servers added and changed through
    NetBox's REST API between syncs."""

    def __init__(self, nb: Any) -> None:
        self.nb, self.client, self.url = nb, nb.client, nb.url
        self.token = nb.server.token_v1
        self.ams1 = self.client.site("ams1", "Amsterdam 1")
        self.fra1 = self.client.site("fra1", "Frankfurt 1")
        self.r01 = self.client.rack(self.ams1, "r01")
        self.r02 = self.client.rack(self.ams1, "r02")

    def gpu_server(self, name: str | None, n: int, *, gpus: int = 8, model: str = H100, **kw: Any) -> int:
        kw.setdefault("site_id", self.ams1)
        kw.setdefault("rack_id", self.r01 if kw["site_id"] == self.ams1 else None)
        kw.setdefault("serial", f"SN-{n:04d}")
        kw.setdefault("oob_ip", f"10.10.0.{n}/24")
        kw.setdefault("custom_fields", {"bmc_protocol": "ipmi"})
        oob_ip = kw.pop("oob_ip")
        pk = int(self.client.add_device(name, **kw))
        # both interfaces, their MAC address objects, the BMC's address: 6 requests with NetBox's bulk writes
        c = self.client
        bmc, eno1 = c.post(
            "dcim/interfaces",
            [
                {"device": pk, "name": "bmc", "type": "1000base-t", "mgmt_only": True},
                {"device": pk, "name": "eno1", "type": "1000base-t"},
            ],
        )
        macs = c.post(
            "dcim/mac-addresses",
            [
                {
                    "mac_address": mac,
                    "assigned_object_type": "dcim.interface",
                    "assigned_object_id": iface["id"],
                }
                for mac, iface in ((f"02:00:00:00:01:{n:02x}", bmc), (f"B8:3F:D2:00:00:{n:02X}", eno1))
            ],
        )
        c.request(
            "PATCH",
            "dcim/interfaces",
            json=[
                {"id": i["id"], "primary_mac_address": m["id"]}
                for i, m in zip((bmc, eno1), macs, strict=True)
            ],
        )
        if oob_ip is not None:
            c.set_oob_ip(pk, bmc["id"], oob_ip)
        if gpus:
            c.post(
                "dcim/inventory-items",
                [
                    {"device": pk, "name": f"GPU{i}", "role": c.item_role("gpu"), "part_id": model}
                    for i in range(gpus)
                ],
            )
        return pk

    # changes, as the team makes them in NetBox
    def update(self, pk: int, **data: Any) -> None:
        self.client.patch("dcim/devices", pk, data)

    def device(self, pk: int) -> dict[str, Any]:
        return dict(self.client.get(f"dcim/devices/{pk}"))

    def set_oob_ip(self, pk: int, address: str | None) -> None:
        oob = self.device(pk)["oob_ip"]
        if address is None:
            self.update(pk, oob_ip=None)
        elif oob:
            self.client.patch("ipam/ip-addresses", oob["id"], {"address": address})
        else:
            self.client.set_oob_ip(pk, self.interface(pk, "bmc")["id"], address)

    def interface(self, pk: int, name: str) -> dict[str, Any]:
        return dict(self.client.get("dcim/interfaces", device_id=pk, name=name)["results"][0])

    def set_mac(self, pk: int, name: str, mac: str) -> None:
        iface = self.interface(pk, name)
        self.client.patch("dcim/mac-addresses", iface["primary_mac_address"]["id"], {"mac_address": mac})

    def remove(self, pk: int) -> None:
        self.client.delete("dcim/devices", pk)

    def connect(self, token: str | None = None) -> Any:
        return netbox.connect(self.url, token or self.token)

    def sync(self, credentials: dict[str, Any] | None = None, **kw: Any) -> netbox.SyncReport:
        token = kw.pop("token", None)
        return netbox.sync(self.connect(token), actor=ACTOR, credentials=credentials, **kw)


@pytest.fixture
def lab(server_types, netbox_lab) -> Iterator[Lab]:
    netbox_lab.reset()
    yield Lab(netbox_lab)


class Requests:
    """The URLs a sync asks NetBox for (pynetbox's session, wrapped); ``after`` runs after each answer."""

    def __init__(self, api: Any, after: Any = None) -> None:
        self.paths: list[str] = []
        session = api.http_session
        inner = session.request

        def request(method: str, url: str, *args: Any, **kw: Any) -> Any:
            answer = inner(method, url, *args, **kw)
            from urllib.parse import urlencode, urlsplit

            parts = urlsplit(url)
            query = urlencode(kw.get("params") or {}, doseq=True)
            self.paths.append(
                parts.path + ("?" + query if query else "") + ("&" + parts.query if parts.query else "")
            )
            if after is not None:
                after(parts.path, kw.get("params") or {})
            return answer

        session.request = request

    def to(self, prefix: str) -> list[str]:
        return [p for p in self.paths if p.startswith(prefix)]


def outcomes(report: netbox.SyncReport) -> dict[str, tuple[str, str]]:
    return {r.device: (r.outcome, r.message) for r in report.results}


def test_first_sync_creates_sites_racks_and_nodes_with_bmc_mac_and_type(lab: Lab, credentials) -> None:
    lab.gpu_server("ams1-gpu-01", 1)
    redfish = lab.gpu_server(
        "fra1-gpu-02",
        2,
        site_id=lab.fra1,
        device_type="dell-xe9680",
        oob_ip="2001:db8::2/64",
        custom_fields={
            "bmc_protocol": "redfish",
            "bmc_port": 8443,
            "redfish_system_id": "System.Embedded.1",
            "neocloud_server_type": "a100-8x",
        },
        model="NVIDIA A100-SXM4-80GB",
    )
    # a pxe tag picks the boot interface among several
    lab.client.add_interface(redfish, "eno2", "b8:3f:d2:00:00:99", tags=("pxe",))

    report = lab.sync(credentials)

    assert report.ok and report.count("created") == 2, report.results
    assert set(Site.objects.values_list("slug", "name", "netbox_id")) == {
        ("ams1", "Amsterdam 1", lab.ams1),
        ("fra1", "Frankfurt 1", lab.fra1),
    }
    assert list(Rack.objects.values_list("site__slug", "name", "netbox_id")) == [("ams1", "r01", lab.r01)]
    a = Node.objects.get(name="ams1-gpu-01")
    assert (a.server_type.slug, a.rack.name, a.serial, a.state) == ("h100-8x", "r01", "SN-0001", "available")
    assert (a.bmc_protocol, a.bmc_address, a.bmc_port, a.bmc_system_id) == ("ipmi", "10.10.0.1", 623, "")
    assert a.boot_mac == "b8:3f:d2:00:00:01"
    assert (a.bmc_credential.username, a.bmc_credential.password) == ("root", "bmc-ams1-pw")
    b = Node.objects.get(name="fra1-gpu-02")
    assert (b.server_type.slug, b.rack, b.netbox_id) == ("a100-8x", None, redfish)
    assert (b.bmc_protocol, b.bmc_address, b.bmc_port) == ("redfish", "2001:db8::2", 8443)
    assert (a.bmc_scheme, b.bmc_scheme) == ("", "https")  # no bmc_scheme custom field: https on 8443
    assert (b.bmc_system_id, b.boot_mac) == ("System.Embedded.1", "b8:3f:d2:00:00:99")
    assert (b.bmc_credential.username, b.bmc_credential.password) == ("admin", "bmc-default-pw")
    assert AuditEvent.objects.filter(node=a, action="enroll", actor_label="netbox-test").exists()
    assert AuditEvent.objects.filter(node=a, to_state="available", actor_label="netbox-test").exists()
    assert AuditEvent.objects.filter(node=None, reason="site ams1 created from NetBox").exists()


def test_second_sync_changes_nothing_and_says_so(lab: Lab, credentials) -> None:
    for n in range(1, 4):
        lab.gpu_server(f"gpu-{n}", n)
    lab.sync(credentials)
    events = AuditEvent.objects.count()

    with CaptureQueriesContext(connection) as queries:
        report = lab.sync(credentials)

    # read once, not per device: what is here is loaded in a few queries, an unchanged device costs none
    assert len(queries) <= 8, [q["sql"][:120] for q in queries]
    assert not report.changed and report.places == []
    assert {o for o, _ in outcomes(report).values()} == {"unchanged"}
    assert AuditEvent.objects.count() == events


def test_a_changed_bmc_address_is_applied_to_an_available_node_and_audited(lab: Lab, credentials) -> None:
    pk = lab.gpu_server("gpu-1", 1)
    lab.sync(credentials)
    lab.set_oob_ip(pk, "10.10.9.1/24")
    lab.update(pk, rack=lab.r02)

    report = lab.sync()  # no credentials needed: the node keeps its own

    assert outcomes(report)["gpu-1"] == (
        "updated",
        "rack ams1/r01 -> ams1/r02; bmc_address 10.10.0.1 -> 10.10.9.1",
    )
    node = Node.objects.get(name="gpu-1")
    assert (node.bmc_address, node.rack.name, node.bmc_credential.password) == (
        "10.10.9.1",
        "r02",
        "bmc-ams1-pw",
    )
    event = AuditEvent.objects.get(node=node, action="netbox_sync")
    assert event.actor_label == "netbox-test"
    assert event.data["changes"]["bmc_address"] == ["10.10.0.1", "10.10.9.1"]


def test_changes_to_a_leased_node_are_deferred_and_applied_once_it_is_available(
    lab: Lab, credentials
) -> None:
    pk = lab.gpu_server("gpu-1", 1)
    lab.sync(credentials)
    node = process_event(Node.objects.get(name="gpu-1"), NodeEvent.RESERVE, actor=ACTOR, reason="a customer")
    lab.set_oob_ip(pk, "10.10.9.1/24")
    lab.set_mac(pk, "eno1", "b8:3f:d2:00:00:77")

    report = lab.sync()

    outcome, message = outcomes(report)["gpu-1"]
    assert outcome == "deferred"
    assert "leased (reserved)" in message and "bmc_address 10.10.0.1 -> 10.10.9.1" in message
    assert "boot_mac b8:3f:d2:00:00:01 -> b8:3f:d2:00:00:77" in message
    node.refresh_from_db()
    assert (node.bmc_address, node.boot_mac, node.state) == ("10.10.0.1", "b8:3f:d2:00:00:01", "reserved")

    process_event(node, NodeEvent.UNRESERVE, actor=ACTOR, reason="customer gave it up")
    assert outcomes(lab.sync())["gpu-1"][0] == "updated"
    node.refresh_from_db()
    assert (node.bmc_address, node.boot_mac) == ("10.10.9.1", "b8:3f:d2:00:00:77")


@pytest.mark.parametrize("how", ["deleted", "offline", "decommissioning", "other role"])
def test_a_device_gone_or_not_active_sends_an_available_node_to_maintenance(
    lab: Lab, credentials, how
) -> None:
    pk = lab.gpu_server("gpu-1", 1)
    lab.gpu_server("gpu-2", 2)
    lab.sync(credentials)
    if how == "deleted":
        lab.remove(pk)
    elif how == "other role":
        lab.update(pk, role=lab.client.device_role("storage"))
    else:
        lab.update(pk, status=how)

    report = lab.sync()

    assert outcomes(report)["gpu-1"][0] == "maintenance"
    node = Node.objects.get(name="gpu-1")
    assert node.state == NodeState.MAINTENANCE
    event = AuditEvent.objects.get(node=node, to_state="maintenance")
    assert event.actor_label == "netbox-test" and event.reason.startswith("NetBox: device")
    assert Node.objects.get(name="gpu-2").state == NodeState.AVAILABLE
    # and again: nothing more happens, the node is never deleted
    assert outcomes(lab.sync())["gpu-1"] == ("unchanged", f"{event.reason}; already in maintenance")
    assert Node.objects.filter(name="gpu-1").exists()


@pytest.mark.parametrize("same_sync", [True, False], ids=["re-created at once", "re-created later"])
def test_a_device_deleted_and_created_again_is_the_same_node(lab: Lab, credentials, same_sync) -> None:
    """A bulk re-import deletes devices and creates them again with new ids: the server (same serial) is
    the node it was, not a stranger whose serial is taken, and nothing else about it changes."""
    old = lab.gpu_server("gpu-1", 1)
    lab.gpu_server("gpu-2", 2)
    lab.sync(credentials)
    node = Node.objects.get(name="gpu-1")
    lab.remove(old)
    if not same_sync:  # a sync in between finds the device gone: the node goes on hold
        lab.sync()
        assert Node.objects.get(pk=node.pk).state == NodeState.MAINTENANCE
    new = lab.gpu_server("gpu-1", 1)

    report = lab.sync()

    outcome, message = outcomes(report)["gpu-1"]
    assert outcome == "updated" and f"device #{old} was deleted and created again" in message
    again = Node.objects.get(pk=node.pk)
    assert again.netbox_id == new and Node.objects.filter(serial="SN-0001").count() == 1
    expected = NodeState.AVAILABLE if same_sync else NodeState.MAINTENANCE  # a hold is lifted by operators
    assert again.state == expected
    event = AuditEvent.objects.filter(node=node, reason__startswith="adopted by NetBox").get()
    assert event.data == {"netbox_id": new, "previous_netbox_id": old}
    assert outcomes(lab.sync())["gpu-1"][0] == "unchanged"


def test_a_role_without_devices_does_not_put_the_whole_fleet_on_hold(lab: Lab, credentials) -> None:
    lab.gpu_server("gpu-1", 1)
    lab.sync(credentials)
    lab.client.device_role("gpu-servers")  # a role that exists, with no devices
    with pytest.raises(
        InvalidRequest, match="NetBox has no devices of role gpu-servers, yet nodes here came from"
    ):
        lab.sync(role="gpu-servers")
    assert Node.objects.get(name="gpu-1").state == NodeState.AVAILABLE


def test_a_gone_device_of_a_leased_node_is_held_once_free_and_takes_no_new_bookings(
    lab: Lab, credentials
) -> None:
    pk = lab.gpu_server("gpu-1", 1)
    lab.sync(credentials)
    process_event(Node.objects.get(name="gpu-1"), NodeEvent.RESERVE, actor=ACTOR, reason="a customer")
    lab.update(pk, status="offline")

    outcome, message = outcomes(lab.sync())["gpu-1"]

    assert outcome == "maintenance" and "is offline" in message
    assert "reserved: on hold once it is free and wiped" in message
    node = Node.objects.get(name="gpu-1")
    assert node.state == NodeState.RESERVED  # the customer keeps it
    assert "is offline" in node.hold_requested
    assert outcomes(lab.sync())["gpu-1"] == (
        "unchanged",
        f"{message.split(';')[0]}; already to be put on hold once free",
    )


def _break_gpu_count(lab: Lab, pk: int) -> None:
    items = lab.client.get("dcim/inventory-items", device_id=pk)["results"]
    lab.client.delete("dcim/inventory-items", max(i["id"] for i in items))


def _break_gpu_model(lab: Lab, pk: int) -> None:
    for item in lab.client.get("dcim/inventory-items", device_id=pk)["results"]:
        lab.client.patch("dcim/inventory-items", item["id"], {"part_id": "NVIDIA A100-SXM4-80GB"})


def _set(field: str, value: Any):
    def change(lab: Lab, pk: int) -> None:
        if field == "device_type":
            lab.update(pk, device_type=lab.client.device_type(value))
        elif field == "oob_ip":
            lab.set_oob_ip(pk, value)
        else:
            lab.update(pk, **{field: value})

    return change


def _set_mac(mac: str):
    def change(lab: Lab, pk: int) -> None:
        lab.set_mac(pk, "eno1", mac)

    return change


def _rename_rack(name: str):
    def change(lab: Lab, pk: int) -> None:
        lab.update(pk, rack=lab.client.rack(lab.ams1, name))

    return change


def _rename_site(slug: str):
    def change(lab: Lab, pk: int) -> None:
        lab.update(pk, site=lab.client.site(slug), rack=None)

    return change


# What NetBox itself refuses cannot reach the sync and is not listed: a MAC that is not one, a serial over
# 50 characters, a bmc_scheme or bmc_protocol outside its selection, a bmc_port that is not an integer.
BAD_DEVICES = [
    (_break_gpu_count, "device {name}: NetBox lists 7 GPU(s), server type h100-8x has 8"),
    (_break_gpu_model, "device {name}: NetBox GPU model NVIDIA A100-SXM4-80GB is not server type h100-8x's"),
    (_set("device_type", "mi300x-8x"), "device {name}: unknown server type 'mi300x-8x'"),
    (_set("oob_ip", None), "device {name}: oob_ip (the BMC's address) is not set"),
    (
        _set("custom_fields", {"bmc_protocol": None}),
        "device {name}: custom field bmc_protocol is 'not set'; it must be ipmi or redfish",
    ),
    (
        _set("custom_fields", {"bmc_protocol": "ipmi", "bmc_port": 70000}),
        "device {name}: custom field bmc_port: port '70000' is not a TCP port",
    ),
    (_set_mac("b8:3f:d2:00:00:02"), "device {name}: boot MAC b8:3f:d2:00:00:02 is already node gpu-2's"),
    (
        _set("custom_fields", {"bmc_protocol": "redfish", "redfish_system_id": "S" * 101}),
        "device {name}: custom field redfish_system_id 'SSS",
    ),
    (
        _rename_rack("r" * 51),
        f"device {{name}}: rack name '{'r' * 51}' is longer than the 50 characters kept here",
    ),
    (
        _rename_site("s" * 51),
        f"device {{name}}: site slug '{'s' * 51}' is longer than the 50 characters kept here",
    ),
]


def test_the_bmc_scheme_custom_field_sets_a_redfish_nodes_scheme_and_an_ipmi_node_ignores_it(
    lab: Lab, credentials
) -> None:
    redfish = lab.gpu_server(
        "gpu-1", 1, custom_fields={"bmc_protocol": "redfish", "bmc_port": 8443, "bmc_scheme": "http"}
    )
    lab.gpu_server("gpu-2", 2, custom_fields={"bmc_protocol": "ipmi", "bmc_scheme": "https"})

    assert lab.sync(credentials).ok

    node = Node.objects.get(name="gpu-1")
    assert (node.bmc_port, node.bmc_scheme, node.bmc_access().scheme) == (8443, "http", "http")
    assert Node.objects.get(name="gpu-2").bmc_scheme == ""

    lab.update(redfish, custom_fields={"bmc_scheme": "https"})
    outcome, message = outcomes(lab.sync())["gpu-1"]
    assert outcome == "updated", message
    node.refresh_from_db()
    assert node.bmc_scheme == "https"


def test_a_bad_device_is_one_sentence_and_creates_nothing(lab: Lab, credentials) -> None:
    """Each of BAD_DEVICES on a device of its own (NetBox lists devices by name: gpu-2 comes first)."""
    lab.gpu_server("gpu-2", 2)
    for i, (breakage, _) in enumerate(BAD_DEVICES):
        breakage(lab, lab.gpu_server(f"zz-bad-{i}", 10 + i))

    report = lab.sync(credentials)

    results = outcomes(report)
    for i, (_, message) in enumerate(BAD_DEVICES):
        outcome, text = results[f"zz-bad-{i}"]
        assert outcome == "skipped" and message.format(name=f"zz-bad-{i}") in text, text
    assert not report.ok
    assert list(Node.objects.values_list("name", flat=True)) == ["gpu-2"]


def test_a_bad_change_to_an_enrolled_node_changes_nothing(lab: Lab, credentials) -> None:
    lab.gpu_server("gpu-2", 2)
    pks = [lab.gpu_server(f"zz-bad-{i}", 10 + i) for i in range(len(BAD_DEVICES))]
    assert lab.sync(credentials).ok
    before = {n["name"]: n for n in Node.objects.values()}
    for pk, (breakage, _) in zip(pks, BAD_DEVICES, strict=True):
        lab.update(pk, rack=lab.r02)  # a good change that must not be applied alongside the bad one
        breakage(lab, pk)

    results = outcomes(lab.sync())

    for i, (_, message) in enumerate(BAD_DEVICES):
        outcome, text = results[f"zz-bad-{i}"]
        assert outcome == "skipped" and message.format(name=f"zz-bad-{i}") in text, text
    assert {n["name"]: n for n in Node.objects.values()} == before
    assert not Rack.objects.filter(name="r02").exists()


def test_a_boot_mac_or_serial_of_a_yaml_enrolled_node_is_refused(lab: Lab, credentials) -> None:
    bmc = {"protocol": "ipmi", "address": "10.9.9.9", "username": "u", "password": "p"}
    yaml_node = {"server_type": "h100-8x", "bmc": bmc}
    enroll({"nodes": [{**yaml_node, "name": "old-1", "boot_mac": "b8:3f:d2:00:00:01"}]}, actor=ACTOR)
    lab.gpu_server("gpu-1", 1, serial="")

    assert outcomes(lab.sync(credentials))["gpu-1"] == (
        "skipped",
        "device gpu-1: boot MAC b8:3f:d2:00:00:01 is already node old-1's",
    )
    assert Node.objects.get(name="old-1").netbox_id is None


def test_a_yaml_enrolled_node_is_adopted_by_serial_and_keeps_its_credentials(lab: Lab, credentials) -> None:
    bmc = {"protocol": "ipmi", "address": "10.10.0.1", "username": "yaml-user", "password": "yaml-pw"}
    node = {"name": "gpu-1", "serial": "SN-0001", "server_type": "h100-8x", "site": "ams1", "rack": "r01"}
    enroll({"nodes": [{**node, "boot_mac": "b8:3f:d2:00:00:01", "bmc": bmc}]}, actor=ACTOR)
    pk = lab.gpu_server("gpu-1", 1)

    report = lab.sync(credentials)

    assert outcomes(report)["gpu-1"][0] == "updated", report.results
    adopted = Node.objects.get(name="gpu-1")
    assert adopted.netbox_id == pk
    assert (adopted.bmc_credential.username, adopted.bmc_credential.password) == ("yaml-user", "yaml-pw")
    assert (Site.objects.get().netbox_id, Rack.objects.get().netbox_id) == (lab.ams1, lab.r01)
    assert outcomes(lab.sync())["gpu-1"][0] == "unchanged"


def test_dry_run_reports_the_plan_and_writes_nothing(lab: Lab, credentials) -> None:
    pk = lab.gpu_server("gpu-1", 1)
    pk2 = lab.gpu_server("gpu-2", 2)
    lab.sync(credentials)
    lab.remove(pk)
    lab.gpu_server("gpu-3", 3, site_id=lab.fra1)
    lab.set_oob_ip(pk2, "10.10.5.5/24")
    tables = (Node, Site, Rack, AuditEvent)
    before = [list(model.objects.values()) for model in tables]

    plan = lab.sync(credentials, dry_run=True)

    assert [list(model.objects.values()) for model in tables] == before
    assert plan.dry_run
    assert {d: o for d, (o, _) in outcomes(plan).items()} == {
        "gpu-1": "maintenance",
        "gpu-2": "updated",
        "gpu-3": "created",
    }
    done = lab.sync(credentials)
    assert outcomes(done) == outcomes(plan) and done.places == plan.places == ["site fra1 created"]


def test_pagination_reads_every_page(lab: Lab, credentials) -> None:
    for n in range(1, 9):
        lab.gpu_server(f"gpu-{n}", n)
    api = lab.connect()
    seen = Requests(api)

    report = netbox.sync(api, actor=ACTOR, credentials=credentials, page_size=3)

    assert report.count("created") == 8 and report.ok
    assert Node.objects.count() == 8
    device_pages = seen.to("/api/dcim/devices/")
    assert len(device_pages) == 3, device_pages  # 3 + 3 + 2, the last two through NetBox's next links
    assert any("offset=6" in p for p in device_pages)
    assert len(seen.to("/api/dcim/inventory-items/")) == 22  # 64 GPUs, 3 a page
    assert len(seen.to("/api/dcim/interfaces/")) == 6  # 16 interfaces


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_a_wrong_token_is_one_clear_sentence(lab: Lab, kind: str) -> None:
    """Real NetBox answers 403 (not 401) for a token it does not know, of either kind."""
    wrong = "0" * 40 if kind == "v1" else "nbt_" + "x" * 12 + "." + "y" * 40
    with pytest.raises(netbox.NetboxUnavailable) as err:
        lab.sync(token=wrong)
    assert str(err.value) == f"NetBox at {lab.url} refused the API token (HTTP 403); check the token file"
    assert wrong not in str(err.value)
    run = InventorySync.objects.get()
    assert (run.outcome, run.error, run.source) == ("failed", str(err.value), lab.url)


def test_both_token_kinds_sync(lab: Lab, credentials) -> None:
    lab.gpu_server("gpu-1", 1)
    assert lab.nb.server.token_v2.startswith("nbt_")

    assert lab.sync(credentials, token=lab.nb.server.token_v2).count("created") == 1
    assert lab.sync(credentials, token=lab.nb.server.token_v1).count("unchanged") == 1


def test_an_unreachable_netbox_is_one_clear_sentence(db) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(
        netbox.NetboxUnavailable,
        match=rf"^cannot reach NetBox at http://127.0.0.1:{port}: connection refused$",
    ):
        netbox.sync(netbox.connect(f"http://127.0.0.1:{port}", TOKEN), actor=ACTOR)
    with pytest.raises(
        netbox.NetboxUnavailable, match=r"^NetBox URL 'netbox.example' is not an http\(s\) URL$"
    ):
        netbox.connect("netbox.example", TOKEN)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "netbox-token"
    path.write_text(TOKEN + "\n")
    return path


def _command(*args: str) -> tuple[str, str]:
    import io

    out, err = io.StringIO(), io.StringIO()
    call_command("nodes", "sync-netbox", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_the_command_prints_a_summary_and_fails_when_a_device_is_skipped(
    lab: Lab, tmp_path: Path, caplog, credentials
) -> None:
    caplog.set_level(logging.DEBUG)
    token_file = tmp_path / "lab-token"
    token_file.write_text(lab.token + "\n")
    (tmp_path / "c.yaml").write_text(f"default: {{username: admin, password_file: {tmp_path / 'bmc-pw'}}}\n")
    lab.gpu_server("gpu-1", 1)
    pk2 = lab.gpu_server("gpu-2", 2, oob_ip=None)
    args = [
        "--url",
        lab.url,
        "--token-file",
        str(token_file),
        "--credentials",
        str(tmp_path / "c.yaml"),
    ]

    with pytest.raises(CommandError, match=r"^1 device\(s\) skipped; see the reasons above$") as err:
        _command(*args, "--dry-run")
    assert err.value.returncode == 1
    assert Node.objects.count() == 0

    with pytest.raises(CommandError):
        out, _ = _command(*args)
    lab.set_oob_ip(pk2, "10.10.0.2/24")  # fixed in NetBox
    out, _ = _command(*args)
    assert (
        "  created     gpu-2: h100-8x, ipmi 10.10.0.2:623, boot MAC b8:3f:d2:00:00:02, rack ams1/r01" in out
    )
    assert out.endswith(
        "1 created, 0 updated, 1 unchanged, 0 deferred, 0 to maintenance, 0 skipped, 0 ignored\n"
    )
    out, _ = _command(*args)
    assert out.endswith(
        "0 created, 0 updated, 2 unchanged, 0 deferred, 0 to maintenance, 0 skipped, 0 ignored; nothing to change\n"
    )
    assert lab.token not in out + caplog.text


def test_the_command_says_one_sentence_for_a_wrong_token_and_never_shows_it(
    lab: Lab, tmp_path: Path, caplog, settings
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-token-do-not-print-me"
    settings.NEOCLOUD_NETBOX_URL = lab.url  # NEOCLOUD_NETBOX_URL, NEOCLOUD_NETBOX_TOKEN(_FILE)
    settings.NEOCLOUD_NETBOX_TOKEN = wrong
    with pytest.raises(CommandError) as err:
        _command()
    assert str(err.value) == f"NetBox at {lab.url} refused the API token (HTTP 403); check the token file"
    assert wrong not in str(err.value) + caplog.text
    with pytest.raises(CommandError, match="cannot read token file /nonexistent/token"):
        _command("--token-file", "/nonexistent/token")


def test_the_scheduler_queues_a_sync_as_settings_configure_it(
    lab: Lab, credentials, settings, caplog, tmp_path: Path
) -> None:
    """NEOCLOUD_NETBOX_SYNC_SECONDS > 0: a scheduler pass queues the inventory task, which a worker runs
    with the settings' URL, token, credentials file and role, and logs what changed, never the token."""
    from django_tasks_db.models import DBTaskResult

    from provisioner.services.tasks import sync_netbox_inventory

    caplog.set_level(logging.DEBUG)
    lab.gpu_server("gpu-1", 1)
    settings.NEOCLOUD_NETBOX_URL, settings.NEOCLOUD_NETBOX_TOKEN = lab.url, lab.token
    settings.NEOCLOUD_NETBOX_CREDENTIALS = str(tmp_path / "credentials.yaml")
    settings.NEOCLOUD_NETBOX_SYNC_SECONDS = 600.0

    last_queued: dict[str, float] = {}
    assert queue_periodic_syncs(last_queued, power=False) == ["sync_netbox_inventory"]
    assert queue_periodic_syncs(last_queued, power=False) == []  # not due again for 600 s

    queued = DBTaskResult.objects.get(task_path=sync_netbox_inventory.module_path)
    assert queued.queue_name == "inventory"
    counts = sync_netbox_inventory.call()
    assert counts["created"] == 1 and counts["skipped"] == 0
    assert Node.objects.get(name="gpu-1").state == NodeState.AVAILABLE
    assert "NetBox sync: gpu-1 created" in caplog.text and lab.token not in caplog.text

    settings.NEOCLOUD_NETBOX_SYNC_SECONDS = 0.0  # the default: the scheduler never syncs
    assert queue_periodic_syncs({}, power=False) == []


def test_periodic_syncs_do_not_pile_up_while_workers_are_down(db, settings) -> None:
    """Due every period, but one waiting (or running) task of a kind is enough: a scheduler whose workers
    are down for an hour must not leave them hundreds of syncs to run back to back."""
    from django_tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    from provisioner.services.tasks import sync_fleet_power, sync_netbox_inventory

    settings.NEOCLOUD_NETBOX_URL, settings.NEOCLOUD_NETBOX_TOKEN = "http://127.0.0.1:9", TOKEN
    settings.NEOCLOUD_NETBOX_SYNC_SECONDS = settings.NEOCLOUD_POWER_SYNC_SECONDS = 0.001
    both = ["sync_fleet_power", "sync_netbox_inventory"]
    assert queue_periodic_syncs({}) == both
    for _ in range(5):
        time.sleep(0.002)
        assert queue_periodic_syncs({}) == []
    for task in (sync_fleet_power, sync_netbox_inventory):
        assert DBTaskResult.objects.filter(task_path=task.module_path).count() == 1
    DBTaskResult.objects.filter(task_path=sync_fleet_power.module_path).update(
        status=TaskResultStatus.RUNNING
    )
    assert queue_periodic_syncs({}) == []  # a running one counts too
    DBTaskResult.objects.update(status=TaskResultStatus.SUCCESSFUL)
    assert queue_periodic_syncs({}) == both  # once they are done, the next period queues again


def test_a_netbox_url_with_a_bad_port_is_one_clear_sentence(db, token_file: Path) -> None:
    with pytest.raises(
        netbox.NetboxUnavailable, match=r"^NetBox URL 'http://netbox.example:abc' has no valid port$"
    ):
        netbox.connect("http://netbox.example:abc", TOKEN)
    with pytest.raises(CommandError, match="has no valid port"):
        _command("--url", "http://netbox.example:99999", "--token-file", str(token_file))


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "x"])
def test_the_command_refuses_a_timeout_that_is_not_a_positive_number(db, timeout: str) -> None:
    with pytest.raises(CommandError, match=f"--timeout: must be a positive number of seconds, not {timeout}"):
        _command("--url", "http://127.0.0.1:1", "--timeout", timeout)


def test_the_command_and_the_scheduled_sync_resolve_url_token_credentials_and_role_alike(
    db, settings, tmp_path: Path, token_file: Path
) -> None:
    """One resolver (netbox.source): an option given to the command, else its setting; the scheduled sync
    (sync_from_settings) reads the settings through it, so both refuse a missing URL or token alike."""
    settings.NEOCLOUD_NETBOX_URL, settings.NEOCLOUD_NETBOX_TOKEN = "", ""
    for run in (netbox.sync_from_settings, lambda: _command()):
        with pytest.raises((InvalidRequest, CommandError), match=r"^no NetBox URL: give --url or set"):
            run()
    settings.NEOCLOUD_NETBOX_URL = "http://netbox.example"
    for run in (netbox.sync_from_settings, lambda: _command()):
        with pytest.raises((InvalidRequest, CommandError), match=r"^no NetBox API token: give --token-file"):
            run()

    settings.NEOCLOUD_NETBOX_TOKEN = "settings-token"
    settings.NEOCLOUD_NETBOX_ROLE = "gpu-nodes"
    (tmp_path / "pw").write_text("pw\n")
    settings.NEOCLOUD_NETBOX_CREDENTIALS = str(tmp_path / "settings-credentials.yaml")
    (tmp_path / "settings-credentials.yaml").write_text(
        f"default: {{username: s, password_file: {tmp_path / 'pw'}}}\n"
    )
    src = netbox.source()
    assert (src.url, src.token, src.role) == ("http://netbox.example", "settings-token", "gpu-nodes")
    assert src.credentials is not None and src.credentials["default"]["username"] == "s"
    assert "settings-token" not in repr(src)

    (tmp_path / "cli-credentials.yaml").write_text(
        f"default: {{username: c, password_file: {tmp_path / 'pw'}}}\n"
    )
    src = netbox.source(
        url="https://other.example",
        token_file=str(token_file),
        credentials_file=str(tmp_path / "cli-credentials.yaml"),
        role="gpu-server",
    )
    assert (src.url, src.token, src.role) == ("https://other.example", TOKEN, "gpu-server")
    assert src.credentials is not None and src.credentials["default"]["username"] == "c"
    with pytest.raises(InvalidRequest, match=r"^cannot read token file /nonexistent/token: "):
        netbox.source(token_file="/nonexistent/token")


def test_a_device_leaving_the_listing_between_two_pages_does_not_put_another_node_on_hold(
    lab: Lab, credentials
) -> None:
    """NetBox pages by offset: a device deleted (or moved out of the role) while the sync reads page 1 shifts
    page 2 by one, so the listing misses a device that is still there. Its node must not be taken for gone
    (put on hold): the sync asks NetBox again for the devices of nodes the listing lacks."""
    pks = [lab.gpu_server(f"gpu-{n}", n) for n in range(1, 6)]
    lab.sync(credentials)
    pages: list[str] = []

    def move_after_page_one(path: str, params: dict[str, Any]) -> None:
        if path == "/api/dcim/devices/" and "id" not in params:
            pages.append(path)
            if len(pages) == 1:  # gpu-1 leaves the role after page 1, in NetBox itself
                lab.update(pks[0], role=lab.client.device_role("storage"))

    api = lab.connect()
    Requests(api, after=move_after_page_one)
    report = netbox.sync(api, actor=ACTOR, page_size=3)
    assert len(pages) == 2
    assert outcomes(report)["gpu-4"] == ("unchanged", "")  # fell between the pages, still in NetBox
    assert set(Node.objects.values_list("state", flat=True)) == {"available"}

    assert outcomes(lab.sync())["gpu-1"][0] == "maintenance"  # the next sync sees it gone


def test_a_node_written_by_a_concurrent_sync_meanwhile_is_retried_not_a_traceback(
    lab: Lab, credentials, monkeypatch
) -> None:
    """Two syncs at once (the scheduled one and an operator's command) both find device gpu-1 new; the one
    that creates it second hits the unique netbox_id. That device is applied again (it is there now), the
    others go on, and the sync ends with its report, not an IntegrityError."""
    pk = lab.gpu_server("gpu-1", 1)
    lab.gpu_server("gpu-2", 2)
    login_for = netbox._login_for
    raced: list[str] = []

    def login_while_another_sync_creates_the_node(credentials, site_slug, name):  # type: ignore[no-untyped-def]
        if name == "gpu-1" and not raced:
            raced.append(name)
            Node.objects.create(
                name="gpu-1-by-the-other-sync",
                netbox_id=pk,
                server_type=ServerType.objects.get(slug="h100-8x"),
                bmc_protocol="ipmi",
                bmc_address="10.10.0.1",
                bmc_port=623,
                boot_mac="b8:3f:d2:00:00:01",
            )
        return login_for(credentials, site_slug, name)

    monkeypatch.setattr(netbox, "_login_for", login_while_another_sync_creates_the_node)

    report = lab.sync(credentials)

    assert raced == ["gpu-1"]
    assert {d: o for d, (o, _) in outcomes(report).items()} == {"gpu-1": "created", "gpu-2": "created"}
    assert sorted(Node.objects.values_list("name", flat=True)) == ["gpu-1", "gpu-2"]


# --- what the real NetBox answers that an imitation did not ------------------------------------------


def test_selection_custom_fields_are_read_by_value(lab: Lab, credentials) -> None:
    """bmc_protocol and bmc_scheme are selections: NetBox 4.7 answers {"value", "label"}, the sync reads the
    value (it skipped every device when it took the whole object for the protocol)."""
    pk = lab.gpu_server(
        "gpu-1", 1, custom_fields={"bmc_protocol": "redfish", "bmc_scheme": "http", "bmc_port": 8000}
    )
    fields = lab.device(pk)["custom_fields"]
    assert fields["bmc_protocol"] == {"value": "redfish", "label": "Redfish"}  # the real server's shape

    assert lab.sync(credentials).count("created") == 1
    node = Node.objects.get(name="gpu-1")
    assert (node.bmc_protocol, node.bmc_scheme, node.bmc_port) == ("redfish", "http", 8000)


@pytest.fixture
def restore_custom_fields(netbox_lab) -> Iterator[None]:
    yield
    netbox_lab.define_schema()


def test_a_multiple_selection_custom_field_must_hold_one_value(
    lab: Lab, credentials, restore_custom_fields
) -> None:
    types = lab.client.choice_set("server-types", [("h100-8x", "8x H100"), ("a100-8x", "8x A100")])
    lab.client.custom_field("neocloud_server_type", "multiselect", choice_set=types)
    one = lab.gpu_server(
        "gpu-1",
        1,
        model="NVIDIA A100-SXM4-80GB",
        custom_fields={"bmc_protocol": "ipmi", "neocloud_server_type": ["a100-8x"]},
    )
    lab.gpu_server(
        "gpu-2", 2, custom_fields={"bmc_protocol": "ipmi", "neocloud_server_type": ["h100-8x", "a100-8x"]}
    )
    assert lab.device(one)["custom_fields"]["neocloud_server_type"] is not None

    results = outcomes(lab.sync(credentials))

    assert results["gpu-1"][0] == "created"
    assert Node.objects.get(name="gpu-1").server_type.slug == "a100-8x"
    assert results["gpu-2"] == (
        "skipped",
        "device gpu-2: custom field neocloud_server_type has 2 values (h100-8x, a100-8x); it must have one",
    )


def test_an_object_custom_field_is_read_by_its_slug(lab: Lab, credentials, restore_custom_fields) -> None:
    """A team that models server types as NetBox platforms points an object custom field at one."""
    lab.client.custom_field("neocloud_server_type", "object", related_object_type="dcim.platform")
    platform = lab.client._slugged("dcim/platforms", "a100-8x", {"name": "8x A100"})
    lab.gpu_server(
        "gpu-1",
        1,
        model="NVIDIA A100-SXM4-80GB",
        custom_fields={"bmc_protocol": "ipmi", "neocloud_server_type": platform},
    )

    assert lab.sync(credentials).count("created") == 1
    assert Node.objects.get(name="gpu-1").server_type.slug == "a100-8x"


def test_without_a_gpu_inventory_item_role_the_sync_goes_on_and_says_so(lab: Lab, credentials) -> None:
    """GPU items and the pxe tag are optional: a NetBox without the role `gpu` answers 400 for a filter
    naming it, which failed the whole sync; now the sync reads no items, checks no GPUs, and notes why."""
    lab.gpu_server("gpu-1", 1, gpus=0)
    lab.client.delete("dcim/inventory-item-roles", lab.client._ids.pop(("dcim/inventory-item-roles", "gpu")))
    lab.client.delete(
        "extras/tags", lab.client.tag("pxe")
    )  # no pxe tag either: the only NIC with a MAC boots
    lab.client.forget()
    try:
        report = lab.sync(credentials)
    finally:
        lab.nb.define_schema()

    assert report.ok and report.count("created") == 1
    assert report.notes == ["NetBox has no inventory-item role 'gpu': GPU counts and models are not checked"]
    assert InventorySync.objects.get().notes == report.notes


def test_an_unknown_device_role_is_one_sentence(lab: Lab) -> None:
    with pytest.raises(InvalidRequest, match=r"^NetBox has no device role 'gpu-nodes': give the slug"):
        lab.sync(role="gpu-nodes")


def test_netbox_s_own_words_are_in_an_error(lab: Lab) -> None:
    """What NetBox says in a 400 (here for a role it does not have) reaches the operator."""
    api = lab.connect()
    with pytest.raises(pynetbox.RequestError) as err:
        list(api.dcim.devices.filter(role="no-such-role"))
    message = str(netbox._unavailable(api, err.value))
    assert message.startswith(f"NetBox at {lab.url} answered HTTP 400 for /api/dcim/devices/: role: ")
    assert "no-such-role" in message


def test_the_cable_from_the_boot_nic_names_the_switch_port(lab: Lab, credentials) -> None:
    """Where the boot NIC is cabled (what the tenant-network work moves between VLANs) comes from NetBox's
    cable to a switch interface; a re-cabled server is an update like any other."""
    pk = lab.gpu_server("gpu-1", 1)
    lab.gpu_server("gpu-2", 2)
    switch = lab.client.add_device("leaf-ams1-01", site_id=lab.ams1, role="switch", device_type="sn4600")
    swp1 = lab.client.add_interface(switch, "swp1", None, type_="100gbase-x-qsfp28")
    swp2 = lab.client.add_interface(switch, "swp2", None, type_="100gbase-x-qsfp28")
    cable = lab.client.add_cable(lab.interface(pk, "eno1")["id"], swp1)

    assert lab.sync(credentials).ok
    node = Node.objects.get(name="gpu-1")
    assert (node.switch_name, node.switch_port) == ("leaf-ams1-01", "swp1")
    assert Node.objects.get(name="gpu-2").switch_port == ""  # no cable: nothing said

    lab.client.delete("dcim/cables", cable)
    lab.client.add_cable(lab.interface(pk, "eno1")["id"], swp2)
    assert outcomes(lab.sync())["gpu-1"] == ("updated", "switch_port swp1 -> swp2")


def test_each_sync_is_kept_with_what_it_changed_and_skipped(lab: Lab, credentials) -> None:
    lab.gpu_server("gpu-1", 1)
    lab.gpu_server("gpu-2", 2, oob_ip=None)

    lab.sync(credentials, dry_run=True)
    assert not InventorySync.objects.exists()  # a dry run writes nothing
    lab.sync(credentials)
    lab.sync(credentials)

    last, first = InventorySync.objects.all()[:2]
    assert (first.outcome, first.counts["created"], first.counts["skipped"]) == ("skipped", 1, 1)
    assert {r["device"]: r["outcome"] for r in first.results} == {"gpu-1": "created", "gpu-2": "skipped"}
    assert first.places == ["site ams1 created", "rack ams1/r01 created"]
    assert last.results == [
        {
            "device": "gpu-2",
            "outcome": "skipped",
            "message": "device gpu-2: oob_ip (the BMC's address) is not set",
        }
    ]
    assert (last.source, last.role, last.actor) == (lab.url, "gpu-server", "netbox-test")
    assert last.started_at <= last.finished_at


def test_the_fleet_page_shows_the_last_sync_what_changed_and_what_was_skipped(
    lab: Lab, credentials, client, django_user_model
) -> None:
    from django.urls import reverse

    lab.gpu_server("gpu-1", 1)
    lab.gpu_server("gpu-2", 2, oob_ip=None)
    lab.sync(credentials)
    client.force_login(django_user_model.objects.create_user("ops", password="x", is_staff=True))

    page = client.get(reverse("portal:ops_fleet")).content.decode()

    assert "Last NetBox sync" in page and lab.url in page
    assert "1 created" in page and "1 skipped" in page
    assert "gpu-2</strong> skipped: device gpu-2: oob_ip (the BMC&#x27;s address) is not set" in page
    assert lab.token not in page

    with pytest.raises(netbox.NetboxUnavailable):
        lab.sync(token="0" * 40)
    page = client.get(reverse("portal:ops_fleet")).content.decode()
    assert "Failed: NetBox at" in page and "refused the API token (HTTP 403)" in page
