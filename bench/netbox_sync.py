"""NetBox sync benchmark against a real NetBox (lab/netbox_server.py: the PyPI package on PostgreSQL).

    .venv/bin/python bench/netbox_sync.py [--devices 2000] [--database-url URL]

Populates NetBox through its REST API (bulk requests) with ``--devices`` GPU servers, each with 8 GPU inventory
items and 2 interfaces (a BMC interface holding the out-of-band IP, the boot NIC with a MAC address object),
then measures, in the same run:

- the sync, cold (every node created here) and again (idempotent: nothing to change), with the requests it
  made to NetBox and its wall time;
- the pattern the sync replaced and most pynetbox scripts use: the device list, then one interfaces request
  and one inventory-items request per device (``api.dcim.interfaces.filter(device_id=...)``), requests and
  wall time of reading alone.

Last line: ``netbox sync: N devices, cold X s, idempotent Y s (Q requests), per-device reads R requests in
Z s: R/Q x fewer requests``. Targets: >= 10x fewer requests, idempotent run < 30 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GPU_MODEL = "NVIDIA H100 80GB HBM3"


def populate(client: Any, devices: int, chunk: int = 100) -> None:
    stages: dict[str, float] = {}
    real_request = client.request

    def timed(method: str, path: str, **kw: Any) -> Any:
        t0 = time.monotonic()
        try:
            return real_request(method, path, **kw)
        finally:
            key = f"{method} {path}"
            stages[key] = stages.get(key, 0.0) + time.monotonic() - t0

    client.request = timed
    """``devices`` GPU servers in two sites, through NetBox's bulk REST (lists POSTed and PATCHed)."""
    sites = [client.add_site(f"site{i}", f"Site {i}") for i in range(2)]
    racks = [client.add_rack(sites[i % 2], f"r{i:02d}") for i in range(20)]
    dtype, role, item_role = (
        client.device_type("h100-8x"),
        client.device_role("gpu-server"),
        client.item_role("gpu"),
    )
    for start in range(0, devices, chunk):
        ns = range(start, min(devices, start + chunk))
        made = client.post(
            "dcim/devices",
            [
                {
                    "name": f"gpu-{n:05d}",
                    "serial": f"SN-{n:06d}",
                    "site": sites[(n // 10) % 2],
                    "rack": racks[(n // 10) % 20],
                    "device_type": dtype,
                    "role": role,
                    "status": "active",
                    "custom_fields": {"bmc_protocol": "ipmi"},
                }
                for n in ns
            ],
        )
        ids = [d["id"] for d in made]
        ifaces = client.post(
            "dcim/interfaces",
            [
                {"device": pk, "name": name, "type": "1000base-t", "mgmt_only": name == "bmc"}
                for pk in ids
                for name in ("bmc", "eno1")
            ],
        )
        macs = client.post(
            "dcim/mac-addresses",
            [
                {
                    "mac_address": f"{'02' if i % 2 == 0 else 'b8'}:00:00:{(n >> 8) & 0xFF:02x}:{n & 0xFF:02x}:"
                    f"{(n >> 16) & 0xFF:02x}",
                    "assigned_object_type": "dcim.interface",
                    "assigned_object_id": iface["id"],
                }
                for i, (n, iface) in enumerate(zip([n for n in ns for _ in (0, 1)], ifaces, strict=True))
            ],
        )
        client.request(
            "PATCH",
            "dcim/interfaces",
            json=[{"id": i["id"], "primary_mac_address": m["id"]} for i, m in zip(ifaces, macs, strict=True)],
        )
        ips = client.post(
            "ipam/ip-addresses",
            [
                {
                    "address": f"10.{(n + 1) >> 16 & 0xFF}.{(n + 1) >> 8 & 0xFF}.{(n + 1) & 0xFF}/8",
                    "assigned_object_type": "dcim.interface",
                    "assigned_object_id": iface["id"],
                }
                for n, iface in zip(ns, ifaces[0::2], strict=True)
            ],
        )
        client.request(
            "PATCH",
            "dcim/devices",
            json=[{"id": pk, "oob_ip": ip["id"]} for pk, ip in zip(ids, ips, strict=True)],
        )
        client.post(
            "dcim/inventory-items",
            [
                {"device": pk, "name": f"GPU{g}", "role": item_role, "part_id": GPU_MODEL}
                for pk in ids
                for g in range(8)
            ],
        )
        slowest = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])[:4])
        print(f"  populated {min(devices, start + chunk)}/{devices} ({slowest})", flush=True)


class Counter:
    def __init__(self, api: Any) -> None:
        self.n = 0
        inner = api.http_session.request

        def request(*args: Any, **kw: Any) -> Any:
            self.n += 1
            return inner(*args, **kw)

        api.http_session.request = request


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--database-url", default="", help="Neocloud's database (default: a new SQLite file)")
    parser.add_argument(
        "--repopulate", action="store_true", help="populate NetBox again, not from the saved copy"
    )
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="bench-netbox-", dir=ROOT / "var"))
    os.environ.update(
        {
            "NEOCLOUD_VAR_DIR": str(var),
            "DJANGO_SETTINGS_MODULE": "webapp.settings",
            "NEOCLOUD_LOG_LEVEL": "WARNING",
        }
    )
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    import django

    django.setup()
    from django.core.management import call_command

    from lab.netbox_server import NETBOX_VERSION, NetboxClient, NetboxServer, database_exists
    from provisioner.lifecycle import Actor
    from provisioner.models import Node, ServerType
    from provisioner.services import netbox

    call_command("migrate", verbosity=0)
    ServerType.objects.get_or_create(
        slug="h100-8x",
        defaults={
            "name": "8x H100",
            "gpu_model": GPU_MODEL,
            "gpu_count": 8,
            "cpu_model": "x",
            "cpu_cores": 1,
            "ram_gib": 1,
            "gpu_memory_gib": 80,
            "pcie_gen": 5,
            "disk_gib": 1,
        },
    )
    pw = var / "bmc-pw"
    pw.write_text("pw\n")
    creds = {"default": {"username": "admin", "password_file": str(pw)}, "sites": {}}

    # Populating takes half an hour on 2 cores: the populated NetBox is kept as a database of its own on the
    # PostgreSQL server and copied by later runs (--repopulate makes it again).
    saved = f"neocloud_netbox_bench_{args.devices}_{NETBOX_VERSION.replace('.', '_')}"
    reuse = not args.repopulate and database_exists(saved)
    with NetboxServer(workers=2, template=saved if reuse else "") as server:
        client = NetboxClient(server.url, server.token_v1, timeout=600)
        if reuse:
            print(
                f"NetBox {NETBOX_VERSION}: {args.devices} devices from the database {saved} (populated before)"
            )
        else:
            protocols = client.choice_set("bmc-protocols", [("ipmi", "IPMI"), ("redfish", "Redfish")])
            client.custom_field("bmc_protocol", "select", choice_set=protocols)
            t0 = time.monotonic()
            populate(client, args.devices)
            print(
                f"NetBox {NETBOX_VERSION}: {args.devices} devices populated in {time.monotonic() - t0:.1f} s"
            )
            server.save_as_template(saved)
            server.start_serving()

        actor = Actor.system("bench")
        runs = []
        for label in ("cold", "idempotent"):
            api = netbox.connect(server.url, server.token_v1, timeout=300)
            counter = Counter(api)
            t0 = time.monotonic()
            report = netbox.sync(api, actor=actor, credentials=creds)
            took = time.monotonic() - t0
            runs.append((took, counter.n))
            print(f"sync {label}: {took:.1f} s, {counter.n} requests; {report.summary()}", flush=True)
        assert Node.objects.count() == args.devices, Node.objects.count()

        # the one-request-per-device pattern, reading alone (no writes here)
        api = netbox.connect(server.url, server.token_v1, timeout=300)
        counter = Counter(api)
        t0 = time.monotonic()
        devices = list(api.dcim.devices.filter(role="gpu-server"))
        for dev in devices:
            list(api.dcim.interfaces.filter(device_id=dev.id))
            list(api.dcim.inventory_items.filter(device_id=dev.id, role="gpu"))
        naive_s, naive_n = time.monotonic() - t0, counter.n
        print(f"per-device reads: {naive_s:.1f} s, {naive_n} requests", flush=True)

    (cold_s, _), (idem_s, idem_n) = runs
    print(
        f"netbox sync: {args.devices} devices, cold {cold_s:.1f} s, idempotent {idem_s:.1f} s ({idem_n} requests), "
        f"per-device reads {naive_n} requests in {naive_s:.1f} s: {naive_n / idem_n:.0f}x fewer requests"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
