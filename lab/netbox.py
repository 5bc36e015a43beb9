"""A small NetBox for the lab and the tests: real HTTP on loopback, NetBox 4.x REST shapes, an in-memory
dataset the test mutates between syncs.

What it serves (what pynetbox and the inventory sync read; nothing more):
- ``/api/`` (the app roots) and ``/api/status/``, every answer with the ``API-Version`` header;
- ``/api/dcim/{sites,racks,devices,interfaces,inventory-items}/`` lists and ``.../<id>/`` details, with
  NetBox's limit/offset pagination (``count``, absolute ``next``/``previous`` URLs, ``results``; a default
  page size and a maximum page size the server caps ``limit`` at, as NetBox's PAGINATE_COUNT and
  MAX_PAGE_SIZE do) and the filters the sync uses (``id``, ``site``, ``site_id``, ``role``, ``device_id``,
  ``tag``, ``status``; a repeated parameter matches any of its values). An unknown filter is a 400, so a
  sync that asks for something this server does not model fails loudly instead of getting everything;
- related objects nested as NetBox's brief representations (``{"id", "url", "display", "name", "slug"}``),
  choices as ``{"value", "label"}``, a device's ``oob_ip`` as a brief IP address (``address`` with its prefix
  length), interfaces' MAC as NetBox < 4.2 (``mac_address``) or >= 4.2 (``primary_mac_address``) writes it.

Every request needs ``Authorization: Token <token>``; otherwise a 401 with ``{"detail": ...}`` as NetBox.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

API_VERSION = "4.2"
NETBOX_VERSION = "4.2.9"

# URL segment -> (NetboxData table, _Renderer method)
_ENDPOINTS = {
    "sites": ("sites", "site"),
    "racks": ("racks", "rack"),
    "devices": ("devices", "device"),
    "interfaces": ("interfaces", "interface"),
    "inventory-items": ("inventory_items", "inventory_item"),
}
_FILTERS = {"id", "site", "site_id", "role", "device_id", "tag", "status", "limit", "offset", "brief"}


@dataclasses.dataclass
class NetboxData:
    """The dataset, as plain dicts keyed by id. Tests add and change objects through the helpers (or the
    dicts themselves) between syncs; the server renders them on every request."""

    sites: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    racks: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    devices: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    interfaces: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    inventory_items: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    _next_id: int = 1

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def add_site(self, slug: str, name: str = "", status: str = "active") -> int:
        pk = self._id()
        self.sites[pk] = {"id": pk, "slug": slug, "name": name or slug, "status": status}
        return pk

    def add_rack(self, site_id: int, name: str) -> int:
        pk = self._id()
        self.racks[pk] = {"id": pk, "site_id": site_id, "name": name, "status": "active"}
        return pk

    def add_device(
        self,
        name: str | None,
        *,
        site_id: int,
        rack_id: int | None = None,
        device_type: str = "h100-8x",
        role: str = "gpu-server",
        serial: str = "",
        status: str = "active",
        oob_ip: str | None = None,
        custom_fields: dict[str, Any] | None = None,
    ) -> int:
        pk = self._id()
        self.devices[pk] = {
            "id": pk,
            "name": name,
            "site_id": site_id,
            "rack_id": rack_id,
            "device_type": device_type,
            "role": role,
            "serial": serial,
            "status": status,
            "oob_ip": oob_ip,
            "custom_fields": dict(custom_fields or {}),
            "tags": [],
        }
        return pk

    def add_interface(
        self,
        device_id: int,
        name: str,
        mac: str | None,
        *,
        mgmt_only: bool = False,
        tags: tuple[str, ...] = (),
        legacy_mac_field: bool = False,
    ) -> int:
        """``legacy_mac_field``: render the MAC as NetBox < 4.2 did (``mac_address`` only)."""
        pk = self._id()
        self.interfaces[pk] = {
            "id": pk,
            "device_id": device_id,
            "name": name,
            "mac": mac,
            "mgmt_only": mgmt_only,
            "tags": list(tags),
            "legacy": legacy_mac_field,
        }
        return pk

    def add_inventory_item(self, device_id: int, name: str, *, role: str = "gpu", part_id: str = "") -> int:
        pk = self._id()
        self.inventory_items[pk] = {
            "id": pk,
            "device_id": device_id,
            "name": name,
            "role": role,
            "part_id": part_id,
        }
        return pk

    def remove_device(self, device_id: int) -> None:
        self.devices.pop(device_id)
        for table in (self.interfaces, self.inventory_items):
            for pk in [pk for pk, row in table.items() if row["device_id"] == device_id]:
                del table[pk]


class _Renderer:
    """Turns dataset rows into the JSON NetBox 4.x returns, with absolute URLs under ``base``."""

    def __init__(self, data: NetboxData, base: str) -> None:
        self.data = data
        self.base = base

    def url(self, path: str, pk: int) -> str:
        return f"{self.base}/api/{path}/{pk}/"

    def brief_site(self, pk: int) -> dict[str, Any]:
        s = self.data.sites[pk]
        return {
            "id": pk,
            "url": self.url("dcim/sites", pk),
            "display": s["name"],
            "name": s["name"],
            "slug": s["slug"],
            "description": "",
        }

    def brief_rack(self, pk: int) -> dict[str, Any]:
        r = self.data.racks[pk]
        return {"id": pk, "url": self.url("dcim/racks", pk), "display": r["name"], "name": r["name"]}

    def brief_device(self, pk: int) -> dict[str, Any]:
        d = self.data.devices[pk]
        return {
            "id": pk,
            "url": self.url("dcim/devices", pk),
            "display": d["name"] or f"Unnamed device ({pk})",
            "name": d["name"],
            "description": "",
        }

    def brief_slugged(self, path: str, slug: str) -> dict[str, Any]:
        pk = sum(map(ord, slug))  # a stable id per slug: these objects are not modelled beyond their slug
        name = slug.replace("-", " ").title()
        return {"id": pk, "url": self.url(path, pk), "display": name, "name": name, "slug": slug}

    def tags(self, slugs: list[str]) -> list[dict[str, Any]]:
        return [{**self.brief_slugged("extras/tags", slug), "color": "9e9e9e"} for slug in slugs]

    @staticmethod
    def status(value: str) -> dict[str, str]:
        return {"value": value, "label": value.replace("_", " ").title()}

    def site(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.brief_site(row["id"]),
            "status": self.status(row["status"]),
            "tags": [],
            "custom_fields": {},
        }

    def rack(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            **self.brief_rack(row["id"]),
            "site": self.brief_site(row["site_id"]),
            "status": self.status(row["status"]),
            "tags": [],
            "custom_fields": {},
        }

    def device(self, row: dict[str, Any]) -> dict[str, Any]:
        device_type = self.brief_slugged("dcim/device-types", row["device_type"])
        manufacturer = self.brief_slugged("dcim/manufacturers", "nvidia")
        oob_ip = None
        if row["oob_ip"]:
            pk = sum(map(ord, row["oob_ip"]))
            family = 6 if ":" in row["oob_ip"] else 4
            oob_ip = {
                "id": pk,
                "url": self.url("ipam/ip-addresses", pk),
                "display": row["oob_ip"],
                "family": {"value": family, "label": f"IPv{family}"},
                "address": row["oob_ip"],
                "description": "",
            }
        return {
            **self.brief_device(row["id"]),
            "device_type": {
                "id": device_type["id"],
                "url": device_type["url"],
                "display": device_type["display"],
                "manufacturer": manufacturer,
                "model": device_type["name"],
                "slug": row["device_type"],
                "description": "",
            },
            "role": self.brief_slugged("dcim/device-roles", row["role"]),
            "serial": row["serial"],
            "site": self.brief_site(row["site_id"]),
            "rack": self.brief_rack(row["rack_id"]) if row["rack_id"] else None,
            "status": self.status(row["status"]),
            "primary_ip": None,
            "primary_ip4": None,
            "primary_ip6": None,
            "oob_ip": oob_ip,
            "tags": self.tags(row["tags"]),
            "custom_fields": dict(row["custom_fields"]),
        }

    def interface(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": row["id"],
            "url": self.url("dcim/interfaces", row["id"]),
            "display": row["name"],
            "device": self.brief_device(row["device_id"]),
            "name": row["name"],
            "type": {"value": "25gbase-x-sfp28", "label": "SFP28 (25GE)"},
            "enabled": True,
            "mgmt_only": row["mgmt_only"],
            "mac_address": row["mac"],
            "tags": self.tags(row["tags"]),
            "custom_fields": {},
        }
        if not row["legacy"]:
            pk = row["id"] + 100000
            out["primary_mac_address"] = (
                {
                    "id": pk,
                    "url": self.url("dcim/mac-addresses", pk),
                    "display": row["mac"],
                    "mac_address": row["mac"],
                    "description": "",
                }
                if row["mac"]
                else None
            )
            out["mac_addresses"] = [out["primary_mac_address"]] if row["mac"] else []
        return out

    def inventory_item(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "url": self.url("dcim/inventory-items", row["id"]),
            "display": row["name"],
            "device": self.brief_device(row["device_id"]),
            "name": row["name"],
            "role": self.brief_slugged("dcim/inventory-item-roles", row["role"]),
            "manufacturer": self.brief_slugged("dcim/manufacturers", "nvidia"),
            "part_id": row["part_id"],
            "serial": "",
            "tags": [],
            "custom_fields": {},
        }


def _matches(row: dict[str, Any], data: NetboxData, key: str, values: list[str]) -> bool:
    if key == "id":
        return str(row["id"]) in values
    if key == "site_id":
        return str(row.get("site_id")) in values
    if key == "site":
        return row.get("site_id") in data.sites and data.sites[row["site_id"]]["slug"] in values
    if key == "device_id":
        return str(row.get("device_id")) in values
    if key == "role":
        return row.get("role") in values
    if key == "tag":
        return any(tag in values for tag in row.get("tags", []))
    if key == "status":
        return row.get("status") in values
    raise KeyError(key)


class _Handler(BaseHTTPRequestHandler):
    server: NetboxServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read ``server.requests`` instead."""

    def _send(self, status: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("API-Version", API_VERSION)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        with self.server.lock:
            self.server.requests.append(self.path)
        if self.headers.get("Authorization", "") != f"Token {self.server.token}":
            self._send(401, {"detail": "Invalid token"})
            return
        base = f"http://{self.headers.get('Host') or self.server.url.split('//', 1)[1]}"
        with self.server.lock:
            status, body = self._answer(parts.path, query, _Renderer(self.server.data, base))
        self._send(status, body)

    def _answer(self, path: str, query: dict[str, list[str]], render: _Renderer) -> tuple[int, Any]:
        if path == "/api/":
            return 200, {
                app: f"{render.base}/api/{app}/"
                for app in (
                    "circuits",
                    "core",
                    "dcim",
                    "extras",
                    "ipam",
                    "tenancy",
                    "users",
                    "virtualization",
                )
            }
        if path == "/api/status/":
            return 200, {
                "django-version": "5.1.4",
                "installed-apps": {},
                "netbox-version": NETBOX_VERSION,
                "netbox-full-version": f"{NETBOX_VERSION}-Community",
                "plugins": {},
                "python-version": "3.12.3",
                "rq-workers-running": 1,
            }
        segments = [s for s in path.split("/") if s]
        if len(segments) not in (3, 4) or segments[:2] != ["api", "dcim"] or segments[2] not in _ENDPOINTS:
            return 404, {"detail": "Not found."}
        attr, method = _ENDPOINTS[segments[2]]
        table: dict[int, dict[str, Any]] = getattr(render.data, attr)
        rendering = getattr(render, method)
        if len(segments) == 4:
            try:
                return 200, rendering(table[int(segments[3])])
            except (KeyError, ValueError):
                return 404, {"detail": "No Device matches the given query."}
        unknown = sorted(set(query) - _FILTERS)
        if unknown:
            return 400, {unknown[0]: [f"Unknown filter: {unknown[0]}"]}
        rows = [row for _, row in sorted(table.items())]
        for key, values in query.items():
            if key not in ("limit", "offset", "brief"):
                rows = [row for row in rows if _matches(row, render.data, key, values)]
        return 200, self._page(path, query, rows, rendering, render.base)

    def _page(
        self, path: str, query: dict[str, list[str]], rows: list[Any], rendering: Any, base: str
    ) -> Any:
        try:
            limit = int(query.get("limit", [self.server.page_size])[0])
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            return {"detail": "limit and offset must be integers"}
        if limit <= 0 or limit > self.server.max_page_size:
            limit = self.server.max_page_size
        offset = max(offset, 0)
        filters = [(k, v) for k, vs in query.items() if k not in ("limit", "offset") for v in vs]

        def link(at: int) -> str:
            return f"{base}{path}?{urlencode([*filters, ('limit', limit), ('offset', at)])}"

        return {
            "count": len(rows),
            "next": link(offset + limit) if offset + limit < len(rows) else None,
            "previous": link(max(offset - limit, 0)) if offset > 0 else None,
            "results": [rendering(row) for row in rows[offset : offset + limit]],
        }


class NetboxServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, data: NetboxData, token: str, *, page_size: int = 50, max_page_size: int = 1000
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.data = data
        self.token = token
        self.page_size = page_size
        self.max_page_size = max_page_size
        self.lock = threading.Lock()
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        assert isinstance(host, str)  # an AF_INET server's address
        return f"http://{host}:{port}"


@contextmanager
def running_netbox(
    data: NetboxData | None = None, *, token: str, page_size: int = 50, max_page_size: int = 1000
) -> Iterator[NetboxServer]:
    """Serve ``data`` on a free loopback port for the duration of the block."""
    server = NetboxServer(data or NetboxData(), token, page_size=page_size, max_page_size=max_page_size)
    thread = threading.Thread(target=server.serve_forever, name="lab-netbox", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
