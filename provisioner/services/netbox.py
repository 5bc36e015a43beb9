"""Inventory from NetBox: sites, racks and GPU servers (devices of one role) into Site, Rack and Node.

What a device maps to:
- name, serial, site (by netbox_id, then slug), rack (by netbox_id, then site and name);
- server type: the device custom field ``neocloud_server_type``, else the device type's slug, matched to
  ServerType.slug (an unknown one: the device is reported and skipped);
- BMC: address from ``oob_ip`` (its prefix length dropped), protocol, port and Redfish system id from the
  custom fields ``bmc_protocol`` (ipmi|redfish), ``bmc_port``, ``redfish_system_id`` and ``bmc_scheme``
  (http|https, Redfish only; not set: http on ports 80 and 8000, https on any other). BMC logins never come
  from NetBox: a new node takes its username and password from the credentials file (an entry for its site,
  else ``default``); an existing node keeps its own;
- boot MAC: the interface tagged ``pxe``, else the only non-management interface with a MAC (NetBox < 4.2
  ``mac_address`` and >= 4.2 ``primary_mac_address`` both read);
- GPU facts: inventory items of role ``gpu`` (their number, and ``part_id`` as the model) must agree with the
  server type; a mismatch is reported and the device left as it is.

What an operator can rely on: the sync is idempotent (a second run changes nothing and says so); nodes are
matched by netbox_id, then by serial (adopting nodes enrolled from YAML, and a node whose device was deleted
from NetBox and created again with a new id); a node a customer holds or an
operation works on is not changed (its changes are reported as deferred and applied by a later sync once it
is idle); a device gone from NetBox or no longer ``active`` is never deleted: an available node is put on hold
(maintenance) through the node services, a leased one is left alone and reported. Each device is applied all
or nothing, each change audited with the actor; ``dry_run`` runs the same code in a transaction it rolls back.
The API token is never printed, logged or put in an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pynetbox
import requests
import yaml
from django.core.exceptions import ValidationError
from django.core.validators import validate_ipv46_address
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from provisioner.errors import IllegalTransition, InvalidRequest, NeocloudError
from provisioner.lifecycle import Actor, process_event, record
from provisioner.models import BmcCredential, InventorySync, Node, Rack, ServerType, Site
from provisioner.services import nodes as node_services
from provisioner.services.inventory import (
    checked_port,
    checked_scheme,
    normalize_mac,
    read_password,
    required_field,
)
from provisioner.states import NodeEvent, NodeState

log = logging.getLogger(__name__)

DEFAULT_ROLE = "gpu-server"
GPU_ITEM_ROLE = "gpu"
PXE_TAG = "pxe"
BMC_PROTOCOLS = ("ipmi", "redfish")
# Device ids per interfaces / inventory-items request (a repeated device_id filter): keeps URLs short.
_DEVICES_PER_REQUEST = 100
_SYNCED_FIELDS = (
    "name",
    "serial",
    "server_type",
    "rack",
    "bmc_protocol",
    "bmc_address",
    "bmc_port",
    "bmc_system_id",
    "bmc_scheme",
    "boot_mac",
    "switch_name",
    "switch_port",
)


class NetboxUnavailable(NeocloudError):
    """NetBox cannot be asked: bad URL, unreachable, token refused, not a NetBox 4.x API."""

    code = "netbox_unavailable"
    retryable = True


@dataclasses.dataclass(frozen=True)
class DeviceResult:
    device: str
    outcome: str  # one of SyncReport.OUTCOMES
    message: str


@dataclasses.dataclass
class SyncReport:
    """What a sync did (or, dry run, would do), device by device."""

    OUTCOMES = ("created", "updated", "unchanged", "deferred", "maintenance", "skipped", "ignored")

    dry_run: bool = False
    results: list[DeviceResult] = dataclasses.field(default_factory=list)
    places: list[str] = dataclasses.field(default_factory=list)  # sites and racks created or changed
    notes: list[str] = dataclasses.field(default_factory=list)  # what NetBox lacks that the sync tolerates

    def add(self, device: str, outcome: str, message: str) -> None:
        self.results.append(DeviceResult(device, outcome, message))

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def ok(self) -> bool:
        """No device was skipped for an error."""
        return self.count("skipped") == 0

    @property
    def changed(self) -> bool:
        return bool(self.places) or any(
            r.outcome in ("created", "updated", "maintenance") for r in self.results
        )

    def counts(self) -> dict[str, int]:
        return {o: self.count(o) for o in self.OUTCOMES}

    def summary(self) -> str:
        return ", ".join(
            f"{self.count(o)} {'to maintenance' if o == 'maintenance' else o}" for o in self.OUTCOMES
        )


# --- talking to NetBox ---------------------------------------------------------------------------


class _TimeoutSession(requests.Session):
    """requests has no session-wide timeout; a NetBox that hangs must not hang the sync."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


def where(url: str) -> str:
    """The URL without credentials, path or query: what an error may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}"


def connect(url: str, token: str, *, timeout: float = 30.0) -> pynetbox.api:
    """A pynetbox API for ``url`` (NetBox's web root) with ``token``. Makes no request.

    :raises NetboxUnavailable: the URL is not an http(s) URL, or there is no token.
    """
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NetboxUnavailable(f"NetBox URL {where(url) if parts.hostname else url!r} is not an http(s) URL")
    try:
        _ = parts.port  # raises ValueError for a port that is not a number or out of range
    except ValueError:
        raise NetboxUnavailable(
            f"NetBox URL '{parts.scheme}://{parts.netloc.rpartition('@')[2]}' has no valid port"
        )
    if not token:
        raise NetboxUnavailable("no NetBox API token (give --token-file or NEOCLOUD_NETBOX_TOKEN_FILE)")
    api = pynetbox.api(url.rstrip("/"), token=token)
    api.http_session = _TimeoutSession(timeout)
    return api


def _unavailable(api: Any, exc: Exception) -> NetboxUnavailable:
    """One sentence for a failed request: no token, no traceback, no response dump."""
    at = where(str(getattr(api, "base_url", "")).removesuffix("/api"))
    if isinstance(exc, pynetbox.RequestError):
        code = exc.req.status_code
        if code in (401, 403):
            return NetboxUnavailable(
                f"NetBox at {at} refused the API token (HTTP {code}); check the token file"
            )
        if code == 404:
            return NetboxUnavailable(
                f"{at} does not answer like a NetBox 4.x API (HTTP 404 for {exc.req.url})"
            )
        said = _netbox_said(exc)
        return NetboxUnavailable(
            f"NetBox at {at} answered HTTP {code} for {urlsplit(exc.req.url).path}{f': {said}' if said else ''}"
        )
    if isinstance(exc, pynetbox.ContentError):
        return NetboxUnavailable(f"{at} answered something that is not JSON: is it NetBox's web root?")
    if isinstance(exc, requests.Timeout):
        return NetboxUnavailable(f"NetBox at {at} did not answer in time")
    if isinstance(exc, requests.ConnectionError):
        text = str(exc)
        if "refused" in text.lower():
            why = "connection refused"
        elif "resolve" in text.lower() or "name or service" in text.lower():
            why = "host name not found"
        else:
            why = "connection failed"
        return NetboxUnavailable(f"cannot reach NetBox at {at}: {why}")
    return NetboxUnavailable(f"NetBox at {at} cannot be read: {type(exc).__name__}")


def _netbox_said(exc: Any) -> str:
    """NetBox's own words from an error answer (``{"detail": ...}`` or ``{field: [messages]}``), one line."""
    error = getattr(exc, "error", "")
    try:
        body = json.loads(error) if isinstance(error, str) else error
    except ValueError:
        body = error
    if isinstance(body, dict):
        parts = [
            f"{k}: {' '.join(map(str, v)) if isinstance(v, list) else v}" if k != "detail" else str(v)
            for k, v in body.items()
        ]
        text = "; ".join(parts)
    else:
        text = str(body or "")
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")


def _chunks(ids: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


@dataclasses.dataclass
class _Fetched:
    devices: list[dict[str, Any]]
    interfaces: dict[int, list[dict[str, Any]]]
    gpus: dict[int, list[dict[str, Any]]]
    notes: list[str] = dataclasses.field(default_factory=list)

    @functools.cached_property
    def ids(self) -> set[int]:
        return {d["id"] for d in self.devices}


def _slug_exists(endpoint: Any, slug: str) -> bool:
    return any(True for _ in endpoint.filter(slug=slug, limit=1))


def _fetch(api: Any, role: str, known: set[int], page_size: int) -> _Fetched:
    """Every device of ``role`` with its interfaces and GPU inventory items, ``page_size`` rows a request
    (NetBox caps it at its MAX_PAGE_SIZE and pynetbox follows the ``next`` links). ``known``: the NetBox ids of
    nodes here; one the listing lacks is asked for by id before the sync takes its device for gone, as NetBox
    pages by offset and a device deleted, renamed or moved out of the role while the pages are read shifts
    the next page, so that another device falls between two pages.

    NetBox answers HTTP 400 for a filter naming a role it does not have: the device role is checked first (a
    clear error), the inventory-item role ``gpu`` is optional (without it no GPU items are read or checked).
    """
    notes: list[str] = []
    try:
        status = api.status()
        version = str(status.get("netbox-version", "")) if isinstance(status, dict) else ""
        try:
            major = int(version.split(".")[0])
        except ValueError:
            major = 0
        if major < 4:
            raise NetboxUnavailable(
                f"NetBox {version or '(unknown version)'} is not supported: the sync reads NetBox 4.x"
            )
        if not _slug_exists(api.dcim.device_roles, role):
            raise InvalidRequest(
                f"NetBox has no device role {role!r}: give the slug of the role your GPU servers have (--role)"
            )
        read_gpus = _slug_exists(api.dcim.inventory_item_roles, GPU_ITEM_ROLE)
        if not read_gpus:
            notes.append(
                f"NetBox has no inventory-item role {GPU_ITEM_ROLE!r}: GPU counts and models are not checked"
            )
        listed = {d["id"]: d for d in (dict(d) for d in api.dcim.devices.filter(role=role, limit=page_size))}
        for chunk in _chunks(sorted(known - set(listed)), _DEVICES_PER_REQUEST):
            listed.update(
                (d["id"], d)
                for d in (dict(d) for d in api.dcim.devices.filter(id=chunk, role=role, limit=page_size))
            )
        devices = list(listed.values())  # once each: a shifted page may also list a device twice
        interfaces: dict[int, list[dict[str, Any]]] = defaultdict(list)
        gpus: dict[int, list[dict[str, Any]]] = defaultdict(list)
        ids = [d["id"] for d in devices]
        for chunk in _chunks(ids, _DEVICES_PER_REQUEST):
            for iface in api.dcim.interfaces.filter(device_id=chunk, limit=page_size):
                row = dict(iface)
                interfaces[row["device"]["id"]].append(row)
            if not read_gpus:
                continue
            for item in api.dcim.inventory_items.filter(device_id=chunk, role=GPU_ITEM_ROLE, limit=page_size):
                row = dict(item)
                gpus[row["device"]["id"]].append(row)
    except (NetboxUnavailable, InvalidRequest):
        raise
    except (pynetbox.RequestError, pynetbox.ContentError, requests.RequestException) as exc:
        raise _unavailable(api, exc) from None
    return _Fetched(devices, interfaces, gpus, notes)


# --- credentials for new nodes -------------------------------------------------------------------


def load_credentials(path: str | Path) -> dict[str, Any]:
    """Read a BMC credentials file: ``default`` and/or ``sites: {slug: ...}``, each entry a ``username`` and
    ``password_file`` (or ``password_env``), as the YAML enrollment's ``bmc`` takes them.

    :raises InvalidRequest: unreadable, not YAML, or not that shape.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise InvalidRequest(f"cannot read credentials file {path}: {exc.strerror}")
    except yaml.YAMLError:
        raise InvalidRequest(f"credentials file {path} is not valid YAML")
    sites = data.get("sites") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(sites or {}, dict) or not (data.get("default") or sites):
        raise InvalidRequest(
            f"credentials file {path} must be a mapping with default and/or sites: {{<site slug>: ...}}"
        )
    entries = {"default": data.get("default")} if data.get("default") else {}
    entries.update({f"sites.{slug}": entry for slug, entry in (sites or {}).items()})
    for where, entry in entries.items():
        if not isinstance(entry, dict):
            raise InvalidRequest(
                f"credentials file {path}: {where} must be a mapping with username and a password"
            )
        required_field(entry, "username", f"credentials file {path}: {where}")
    return {"default": data.get("default"), "sites": dict(sites or {})}


def _login_for(credentials: dict[str, Any] | None, site_slug: str, name: str) -> tuple[str, str]:
    if credentials is None:
        raise InvalidRequest(f"device {name}: a new node needs BMC credentials; give a credentials file")
    entry = (credentials.get("sites") or {}).get(site_slug) or credentials.get("default")
    if not entry:
        raise InvalidRequest(
            f"device {name}: the credentials file has no entry for site {site_slug} and no default"
        )
    return str(entry["username"]), read_password(entry, name)


# --- one device ----------------------------------------------------------------------------------


def _label(dev: dict[str, Any]) -> str:
    return str(dev.get("name") or f"#{dev['id']}")


def _value(choice: Any) -> str:
    return str(choice.get("value") if isinstance(choice, dict) else choice or "")


def _one_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):  # a selection {"value", "label"}, or an object's brief form
        for key in ("value", "slug", "name", "display"):
            if value.get(key) not in (None, ""):
                return str(value[key])
        return ""
    return str(value)


def _custom(name: str, fields: dict[str, Any], field: str) -> str:
    """Custom field ``field`` of device ``name`` as text, whatever its type in NetBox: text, integer and URL
    as they are; a selection by its value (NetBox answers ``{"value", "label"}``); an object by its slug, else
    its name; a multiple selection or multiple objects must hold exactly one.

    :raises InvalidRequest: several values where one is meant.
    """
    value = fields.get(field)
    if isinstance(value, list):
        values = [v for v in (_one_value(v) for v in value) if v]
        if len(values) > 1:
            raise InvalidRequest(
                f"device {name}: custom field {field} has {len(values)} values ({', '.join(values)}); "
                "it must have one"
            )
        return values[0] if values else ""
    return _one_value(value)


def _mac_of(iface: dict[str, Any]) -> str:
    primary = iface.get("primary_mac_address")
    if isinstance(primary, dict) and primary.get("mac_address"):
        return str(primary["mac_address"])
    return str(iface.get("mac_address") or "")


def _boot_interface(name: str, interfaces: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The boot interface and its MAC (normalized)."""
    tagged = [i for i in interfaces if any(t.get("slug") == PXE_TAG for t in i.get("tags") or [])]
    if len(tagged) > 1:
        names = ", ".join(sorted(i["name"] for i in tagged))
        raise InvalidRequest(f"device {name}: several interfaces are tagged {PXE_TAG} ({names}); tag one")
    if tagged:
        iface = tagged[0]
        if not _mac_of(iface):
            raise InvalidRequest(
                f"device {name}: interface {iface['name']} (tagged {PXE_TAG}) has no MAC address"
            )
    else:
        candidates = [i for i in interfaces if not i.get("mgmt_only") and _mac_of(i)]
        if len(candidates) != 1:
            raise InvalidRequest(
                f"device {name}: no interface is tagged {PXE_TAG} and {len(candidates)} non-management "
                f"interfaces have a MAC address; tag the boot interface {PXE_TAG}"
            )
        iface = candidates[0]
    try:
        return iface, normalize_mac(_mac_of(iface))
    except InvalidRequest as exc:
        raise InvalidRequest(f"device {name}: interface {iface['name']}: {exc}")


def _cabled_to(iface: dict[str, Any]) -> tuple[str, str]:
    """The switch and port an interface's cable ends at: the far end of its path where NetBox traced one
    (through patch panels), else the cable's other end, when that is a device's interface; else blanks."""
    for peers_key, type_key in (
        ("connected_endpoints", "connected_endpoints_type"),
        ("link_peers", "link_peers_type"),
    ):
        peers = iface.get(peers_key) or []
        if peers and iface.get(type_key) == "dcim.interface":
            peer = peers[0]
            device = peer.get("device") or {}
            return str(device.get("name") or device.get("display") or ""), str(peer.get("name") or "")
    return "", ""


def _check_gpus(name: str, server_type: ServerType, items: list[dict[str, Any]]) -> None:
    """NetBox's GPU inventory items against the server type. No GPU items: nothing recorded, nothing checked."""
    if not items:
        return
    if len(items) != server_type.gpu_count:
        raise InvalidRequest(
            f"device {name}: NetBox lists {len(items)} GPU(s), server type {server_type.slug} has "
            f"{server_type.gpu_count}"
        )
    models = sorted({str(i.get("part_id") or "") for i in items} - {""})
    wrong = [m for m in models if m.casefold() != server_type.gpu_model.casefold()]
    if wrong:
        raise InvalidRequest(
            f"device {name}: NetBox GPU model {', '.join(wrong)} is not server type {server_type.slug}'s "
            f"{server_type.gpu_model}"
        )


def _wanted(
    dev: dict[str, Any],
    interfaces: list[dict[str, Any]],
    gpus: list[dict[str, Any]],
    server_types: dict[str, ServerType] | None = None,
) -> dict[str, Any]:
    """The node fields ``dev`` asks for (site and rack as NetBox's brief objects).

    :raises InvalidRequest: a sentence naming the device.
    """
    if not dev.get("name"):
        raise InvalidRequest(f"device #{dev['id']} has no name in NetBox")
    name = str(dev["name"])
    cf = dev.get("custom_fields") or {}
    slug = _custom(name, cf, "neocloud_server_type") or str((dev.get("device_type") or {}).get("slug") or "")
    server_type = (
        server_types.get(slug) if server_types is not None else ServerType.objects.filter(slug=slug).first()
    )
    if server_type is None:
        raise InvalidRequest(
            f"device {name}: unknown server type {slug!r} (the device type's slug or custom field "
            "neocloud_server_type must be a server type's slug)"
        )
    oob = dev.get("oob_ip") or {}
    if not oob.get("address"):
        raise InvalidRequest(f"device {name}: oob_ip (the BMC's address) is not set")
    address = str(oob["address"]).split("/", 1)[0]
    try:
        validate_ipv46_address(address)
    except ValidationError:
        raise InvalidRequest(f"device {name}: oob_ip {oob['address']!r} is not an IP address")
    protocol = _custom(name, cf, "bmc_protocol")
    if protocol not in BMC_PROTOCOLS:
        raise InvalidRequest(
            f"device {name}: custom field bmc_protocol is {protocol or 'not set'!r}; it must be ipmi or redfish"
        )
    port = checked_port(
        _custom(name, cf, "bmc_port") or (623 if protocol == "ipmi" else 443),
        f"device {name}: custom field bmc_port",
    )
    # an IPMI device's bmc_scheme is ignored, as its redfish_system_id is (a custom field's default may set it)
    given = (_custom(name, cf, "bmc_scheme") or None) if protocol == "redfish" else None
    scheme = checked_scheme(protocol, given, port, f"device {name}: custom field bmc_scheme")
    boot, mac = _boot_interface(name, interfaces)
    switch_name, switch_port = _cabled_to(boot)
    _check_gpus(name, server_type, gpus)
    wanted = {
        "name": name,
        "serial": str(dev.get("serial") or ""),
        "server_type": server_type,
        "site": dev["site"],
        "rack": dev.get("rack"),
        "bmc_protocol": protocol,
        "bmc_address": address,
        "bmc_port": port,
        "bmc_scheme": scheme,
        "bmc_system_id": _custom(name, cf, "redfish_system_id") if protocol == "redfish" else "",
        "boot_mac": mac,
        "switch_name": switch_name,
        "switch_port": switch_port,
    }
    # NetBox allows longer values than these columns hold (a site slug or rack name of up to 100 characters,
    # a custom field of any length): PostgreSQL would refuse the row with a DataError that ends the whole sync.
    for what, model, field, value in (
        ("name", Node, "name", name),
        ("serial", Node, "serial", wanted["serial"]),
        ("custom field redfish_system_id", Node, "bmc_system_id", wanted["bmc_system_id"]),
        ("site slug", Site, "slug", str(dev["site"].get("slug") or "")),
        ("site name", Site, "name", str(dev["site"].get("name") or "")),
        ("rack name", Rack, "name", str((dev.get("rack") or {}).get("name") or "")),
        ("cabled switch name", Node, "switch_name", switch_name),
        ("cabled switch port", Node, "switch_port", switch_port),
    ):
        limit = getattr(model._meta.get_field(field), "max_length", None)
        if limit is not None and len(value) > limit:
            raise InvalidRequest(
                f"device {name}: {what} {value!r} is longer than the {limit} characters kept here"
            )
    return wanted


def _why_not_idle(node: Node) -> str:
    """Why the sync must not change ``node`` now ('' when it may)."""
    why = node_services.why_not_idle(node)
    return f"{why} ({node.state})" if why else ""


def _show(value: Any) -> str:
    if isinstance(value, ServerType):
        return value.slug
    if isinstance(value, Rack):
        return f"{value.site.slug}/{value.name}"
    return str(value) if value not in (None, "") else "(none)"


class _Sync:
    def __init__(self, actor: Actor, credentials: dict[str, Any] | None, report: SyncReport) -> None:
        self.actor = actor
        self.credentials = credentials
        self.report = report
        # What is here now, read once: a device whose node already matches it in every synced field is
        # reported unchanged without a query or a transaction of its own (a fleet's second sync is mostly
        # that); anything else takes the checked path below, which reads and locks the rows again.
        self.server_types = {t.slug: t for t in ServerType.objects.all()}
        self.known = {
            n.netbox_id: n for n in Node.objects.filter(netbox_id__isnull=False).select_related("rack")
        }
        self.sites = {s.netbox_id: s for s in Site.objects.filter(netbox_id__isnull=False)}
        self.racks = {r.netbox_id: r for r in Rack.objects.filter(netbox_id__isnull=False)}

    def unchanged(self, dev: dict[str, Any], fetched: _Fetched) -> bool:
        """Whether ``dev``'s node matches it already in every synced field, site and rack included (no query)."""
        node = self.known.get(dev["id"])
        if node is None or _value(dev.get("status")) != "active":
            return False
        try:
            wanted = _wanted(
                dev,
                fetched.interfaces.get(dev["id"], []),
                fetched.gpus.get(dev["id"], []),
                self.server_types,
            )
        except InvalidRequest:
            return False  # the checked path reports it
        brief = wanted["site"]
        site = self.sites.get(brief["id"])
        if site is None or (site.slug, site.name) != (brief["slug"], brief.get("name") or brief["slug"]):
            return False
        rack_brief = wanted["rack"]
        if rack_brief:
            rack = self.racks.get(rack_brief["id"])
            if rack is None or (rack.name, rack.site_id) != (rack_brief["name"], site.pk):
                return False
            wanted["rack"] = rack
        ids = {"server_type": wanted["server_type"].pk, "rack": wanted["rack"].pk if wanted["rack"] else None}
        if any(
            (getattr(node, f"{f}_id") != ids[f]) if f in ids else (getattr(node, f) != wanted[f])
            for f in _SYNCED_FIELDS
        ):
            return False
        self.report.add(_label(dev), "unchanged", "")
        return True

    # sites and racks: created or renamed as the devices reference them
    def site(self, brief: dict[str, Any], notes: list[str]) -> Site:
        site = Site.objects.filter(netbox_id=brief["id"]).first()
        if site is None:
            site = Site.objects.filter(slug=brief["slug"]).first()
            if site is not None and site.netbox_id is not None:
                raise InvalidRequest(
                    f"site {brief['slug']} is NetBox site #{site.netbox_id} here, not #{brief['id']}"
                )
        wanted = {"netbox_id": brief["id"], "slug": brief["slug"], "name": brief.get("name") or brief["slug"]}
        if site is None:
            site = Site.objects.create(**wanted)
            self._place(notes, f"site {site.slug} created", wanted)
            return site
        changes = {k: v for k, v in wanted.items() if getattr(site, k) != v}
        if changes:
            if "slug" in changes and Site.objects.filter(slug=brief["slug"]).exclude(pk=site.pk).exists():
                raise InvalidRequest(
                    f"site {site.slug} is renamed {brief['slug']} in NetBox, which is another site"
                )
            Site.objects.filter(pk=site.pk).update(**changes)
            site.refresh_from_db()
            self._place(notes, f"site {site.slug} updated ({', '.join(sorted(changes))})", changes)
        return site

    def rack(self, brief: dict[str, Any] | None, site: Site, notes: list[str]) -> Rack | None:
        if not brief:
            return None
        rack = Rack.objects.filter(netbox_id=brief["id"]).first()
        if rack is None:
            rack = Rack.objects.filter(site=site, name=brief["name"]).first()
            if rack is not None and rack.netbox_id is not None:
                raise InvalidRequest(f"rack {rack} is NetBox rack #{rack.netbox_id} here, not #{brief['id']}")
        wanted = {"netbox_id": brief["id"], "site": site, "name": brief["name"]}
        if rack is None:
            rack = Rack.objects.create(**wanted)
            self._place(notes, f"rack {rack} created", {"netbox_id": brief["id"]})
            return rack
        changes = {k: v for k, v in wanted.items() if getattr(rack, k) != v}
        if changes:
            if Rack.objects.filter(site=site, name=brief["name"]).exclude(pk=rack.pk).exists():
                raise InvalidRequest(f"rack {site.slug}/{brief['name']} from NetBox is another rack here")
            Rack.objects.filter(pk=rack.pk).update(**changes)
            rack.refresh_from_db()
            self._place(
                notes, f"rack {rack} updated ({', '.join(sorted(changes))})", {"netbox_id": brief["id"]}
            )
        return rack

    def _place(self, notes: list[str], message: str, data: dict[str, Any]) -> None:
        record(self.actor, "netbox_sync", reason=f"{message} from NetBox", data={"netbox": data})
        notes.append(message)

    # nodes
    def match(self, dev: dict[str, Any], listed: set[int]) -> Node | None:
        """The node of a device: by netbox_id, else by serial a node enrolled without NetBox or one whose
        own device is gone from NetBox (``listed``: the ids NetBox has now, unlisted ones asked for by id):
        a device deleted and created again, as a bulk re-import does, gets a new id but is the same server."""
        node = Node.objects.filter(netbox_id=dev["id"]).first()
        if node is None and dev.get("serial"):
            node = (
                Node.objects.filter(serial=str(dev["serial"]))
                .filter(Q(netbox_id__isnull=True) | ~Q(netbox_id__in=listed))
                .first()
            )
        return node

    def refuse_duplicates(self, name: str, wanted: dict[str, Any], node: Node | None) -> None:
        others = Node.objects.exclude(pk=node.pk) if node is not None else Node.objects.all()
        other = others.filter(name=name).first()
        if other is not None:
            how = f"NetBox device #{other.netbox_id}" if other.netbox_id else "enrolled without NetBox"
            raise InvalidRequest(
                f"device {name}: a node named {name} already exists ({how}, serial {other.serial or 'none'}); "
                "give the NetBox device that node's serial to adopt it"
            )
        other = others.filter(boot_mac=wanted["boot_mac"]).first()
        if other is not None:
            raise InvalidRequest(
                f"device {name}: boot MAC {wanted['boot_mac']} is already node {other.name}'s"
            )
        other = others.filter(serial=wanted["serial"]).first() if wanted["serial"] else None
        if other is not None:
            raise InvalidRequest(f"device {name}: serial {wanted['serial']} is already node {other.name}'s")

    def device(self, dev: dict[str, Any], fetched: _Fetched) -> None:
        """Apply one device. A unique column written meanwhile by another sync (the scheduled one and an
        operator's command at once: both found the device new) rolls the device back; it is applied once
        more, now seeing what the other sync wrote."""
        try:
            self._device(dev, fetched)
            return
        except IntegrityError:
            pass
        try:
            self._device(dev, fetched)
        except IntegrityError:
            self.report.add(
                _label(dev),
                "skipped",
                "changed here while this sync applied it (another sync?); run it again",
            )

    def _device(self, dev: dict[str, Any], fetched: _Fetched) -> None:
        if self.unchanged(dev, fetched):
            return
        label = _label(dev)
        status = _value(dev.get("status"))
        node = self.match(dev, fetched.ids)
        if status != "active":
            if node is None:
                self.report.add(label, "ignored", f"status is {status}; only active devices are enrolled")
            else:
                self.retire(node, f"NetBox: device {label} is {status}")
            return
        notes: list[str] = []
        try:
            with transaction.atomic():
                wanted = _wanted(dev, fetched.interfaces.get(dev["id"], []), fetched.gpus.get(dev["id"], []))
                self.refuse_duplicates(wanted["name"], wanted, node)
                site = self.site(wanted.pop("site"), notes)
                wanted["rack"] = self.rack(wanted["rack"], site, notes)
                if node is None:
                    outcome, message = self.create(dev, wanted, site)
                else:
                    outcome, message = self.update(dev, node, wanted)
        except (InvalidRequest, IllegalTransition) as exc:
            self.report.add(label, "skipped", str(exc))
            return
        self.report.places.extend(n for n in notes if n not in self.report.places)
        self.report.add(label, outcome, message)

    def create(self, dev: dict[str, Any], wanted: dict[str, Any], site: Site) -> tuple[str, str]:
        name = wanted["name"]
        username, password = _login_for(self.credentials, site.slug, name)
        node = Node.objects.create(netbox_id=dev["id"], **wanted)
        cred = BmcCredential(node=node, username=username)
        cred.password = password
        cred.save()
        where = f"{wanted['bmc_protocol']} {wanted['bmc_address']}:{wanted['bmc_port']}"
        record(self.actor, "enroll", node=node, reason=f"enrolled from NetBox device #{dev['id']} ({where})")
        process_event(node, NodeEvent.ENROLLED, actor=self.actor, reason="enrolled from NetBox")
        rack = f", rack {_show(wanted['rack'])}" if wanted["rack"] else ""
        return "created", f"{wanted['server_type'].slug}, {where}, boot MAC {wanted['boot_mac']}{rack}"

    def update(self, dev: dict[str, Any], node: Node, wanted: dict[str, Any]) -> tuple[str, str]:
        node = Node.objects.select_for_update().get(pk=node.pk)
        changes = {f: (getattr(node, f), wanted[f]) for f in _SYNCED_FIELDS if getattr(node, f) != wanted[f]}
        text = "; ".join(f"{f} {_show(old)} -> {_show(new)}" for f, (old, new) in changes.items())
        adopted, before = node.netbox_id != dev["id"], node.netbox_id
        if adopted:
            Node.objects.filter(pk=node.pk).update(netbox_id=dev["id"])
            was = f"; its device #{before} is gone from NetBox" if before else ""
            record(
                self.actor,
                "netbox_sync",
                node=node,
                reason=f"adopted by NetBox device #{dev['id']} (matched by serial {node.serial}{was})",
                data={"netbox_id": dev["id"], "previous_netbox_id": before},
            )
        if not adopted:
            adoption = ""
        elif before is None:
            adoption = f"adopted (serial {node.serial}, enrolled before)"
        else:
            adoption = f"adopted (serial {node.serial}; device #{before} was deleted and created again)"
        if not changes:
            return ("updated", adoption) if adopted else ("unchanged", "")
        busy = _why_not_idle(node)
        if busy:
            deferred = f"{busy}: {text} not applied; a later sync applies it once the node is idle"
            return "deferred", "; ".join(p for p in (adoption, deferred) if p)
        Node.objects.filter(pk=node.pk).update(**{f: new for f, (_, new) in changes.items()})
        record(
            self.actor,
            "netbox_sync",
            node=node,
            reason=f"updated from NetBox: {text}",
            data={
                "netbox_id": dev["id"],
                "changes": {f: [_show(o), _show(n)] for f, (o, n) in changes.items()},
            },
        )
        return "updated", "; ".join(p for p in (adoption, text) if p)

    def retire(self, node: Node, reason: str) -> None:
        """A device gone from NetBox, or not active there: never deleted; an available node is put on hold,
        one a customer holds (or being prepared or wiped) once it is free and wiped, taking no new bookings."""
        if node.state == NodeState.MAINTENANCE:
            self.report.add(node.name, "unchanged", f"{reason}; already in maintenance")
            return
        if node.hold_requested:
            self.report.add(node.name, "unchanged", f"{reason}; already to be put on hold once free")
            return
        if node.state not in (NodeState.AVAILABLE, *node_services.HOLD_WHEN_FREE_STATES):
            self.report.add(node.name, "unchanged", f"{reason}; {node.state}, already out of the pool")
            return
        try:
            with transaction.atomic():
                node = node_services.set_maintenance(
                    node, True, actor=self.actor, reason=reason, when_free=True
                )
        except IllegalTransition as exc:
            self.report.add(node.name, "deferred", f"{reason}; not put on hold now: {exc}")
            return
        if node.state == NodeState.MAINTENANCE:
            self.report.add(node.name, "maintenance", reason)
        else:
            self.report.add(
                node.name,
                "maintenance",
                f"{reason}; {node.state}: on hold once it is free and wiped, no new bookings meanwhile",
            )


DEFAULT_PAGE_SIZE = 1000  # NetBox's default MAX_PAGE_SIZE; a smaller one on the server still works


def sync(
    api: Any,
    *,
    actor: Actor,
    credentials: dict[str, Any] | None = None,
    dry_run: bool = False,
    role: str = DEFAULT_ROLE,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> SyncReport:
    """Bring sites, racks and nodes in line with NetBox's devices of ``role`` (see the module docstring).

    ``api`` is a pynetbox API (see :func:`connect`); ``credentials`` as :func:`load_credentials` returns it
    (needed only for new nodes). Each device is applied in its own transaction; ``dry_run`` runs everything
    in one transaction and rolls it back, so the report is the plan and nothing is written. A real run, done
    or failed, is kept as an :class:`InventorySync` (the fleet page shows the last one).

    :raises NetboxUnavailable: NetBox cannot be read (nothing is changed then).
    :raises InvalidRequest: NetBox has no such role, or lists no device of ``role`` while nodes came from
        NetBox (nothing changed).
    """
    started = timezone.now()
    try:
        report = _sync(
            api, actor=actor, credentials=credentials, dry_run=dry_run, role=role, page_size=page_size
        )
    except (NetboxUnavailable, InvalidRequest) as exc:
        if not dry_run:
            _keep(api, actor, role, started, outcome=InventorySync.Outcome.FAILED, error=str(exc))
        raise
    if not dry_run:
        _keep(api, actor, role, started, report=report)
    return report


def _keep(
    api: Any,
    actor: Actor,
    role: str,
    started: Any,
    *,
    report: SyncReport | None = None,
    outcome: str = "",
    error: str = "",
) -> None:
    results = [dataclasses.asdict(r) for r in (report.results if report else []) if r.outcome != "unchanged"]
    InventorySync.objects.create(
        started_at=started,
        finished_at=timezone.now(),
        source=where(str(getattr(api, "base_url", "")).removesuffix("/api")),
        role=role[:100],
        actor=str(actor.label)[:150],
        outcome=outcome
        or (InventorySync.Outcome.OK if report is not None and report.ok else InventorySync.Outcome.SKIPPED),
        counts=report.counts() if report else {},
        results=results,
        places=list(report.places) if report else [],
        notes=list(report.notes) if report else [],
        error=error,
    )


def _sync(
    api: Any,
    *,
    actor: Actor,
    credentials: dict[str, Any] | None,
    dry_run: bool,
    role: str,
    page_size: int,
) -> SyncReport:
    fetched = _fetch(
        api,
        role,
        set(Node.objects.filter(netbox_id__isnull=False).values_list("netbox_id", flat=True)),
        page_size,
    )
    if not fetched.devices and Node.objects.filter(netbox_id__isnull=False).exists():
        # Most likely a wrong --role or a NetBox being restored, not a fleet that vanished: putting every node
        # on hold would empty the pool.
        raise InvalidRequest(
            f"NetBox has no devices of role {role}, yet nodes here came from NetBox; nothing done "
            "(check the role; retire nodes one by one with nodes maintain)"
        )
    report = SyncReport(dry_run=dry_run, notes=list(fetched.notes))
    work = _Sync(actor, credentials, report)
    # A real run commits device by device (one bad device does not hold back the others, and no lock is held
    # for the whole sync); a dry run does the same work inside one transaction that it rolls back.
    with transaction.atomic() if dry_run else contextlib.nullcontext():
        for dev in fetched.devices:
            work.device(dev, fetched)
        seen = {dev["id"] for dev in fetched.devices}
        for node in Node.objects.filter(netbox_id__isnull=False).order_by("name"):
            if node.netbox_id not in seen:
                work.retire(
                    node, f"NetBox: device #{node.netbox_id} is gone (deleted, or no longer role {role})"
                )
        if dry_run:
            transaction.set_rollback(True)
    return report


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a sync reads and with what (see :func:`source`); its repr never shows the token."""

    url: str
    token: str = dataclasses.field(repr=False)
    role: str
    credentials: dict[str, Any] | None = dataclasses.field(repr=False)


def source(
    *,
    url: str | None = None,
    token_file: str | None = None,
    credentials_file: str | None = None,
    role: str | None = None,
) -> Source:
    """Each value given (``nodes sync-netbox``'s options), else its setting: NEOCLOUD_NETBOX_URL, the token
    in ``token_file`` else NEOCLOUD_NETBOX_TOKEN(_FILE), the BMC credentials file (loaded) else
    NEOCLOUD_NETBOX_CREDENTIALS, the device role else NEOCLOUD_NETBOX_ROLE.

    :raises InvalidRequest: no URL or no token, an unreadable token file, or a bad credentials file.
    """
    from django.conf import settings

    url = url or settings.NEOCLOUD_NETBOX_URL
    if not url:
        raise InvalidRequest("no NetBox URL: give --url or set NEOCLOUD_NETBOX_URL")
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise InvalidRequest(f"cannot read token file {token_file}: {exc.strerror}")
    else:
        token = settings.NEOCLOUD_NETBOX_TOKEN
    if not token:
        raise InvalidRequest(
            "no NetBox API token: give --token-file or set NEOCLOUD_NETBOX_TOKEN_FILE (or NEOCLOUD_NETBOX_TOKEN)"
        )
    credentials_file = credentials_file or settings.NEOCLOUD_NETBOX_CREDENTIALS
    return Source(
        url=url,
        token=token,
        role=role or settings.NEOCLOUD_NETBOX_ROLE,
        credentials=load_credentials(credentials_file) if credentials_file else None,
    )


def sync_from_settings(actor: Actor | None = None) -> SyncReport:
    """One sync as settings configure it (NEOCLOUD_NETBOX_URL, _TOKEN, _CREDENTIALS, _ROLE): what the
    scheduler queues every NEOCLOUD_NETBOX_SYNC_SECONDS. Logs a one-line summary and every device that
    changed or was skipped; never the token.

    :raises NetboxUnavailable: NetBox cannot be read. :raises InvalidRequest: as :func:`source` and
        :func:`sync`.
    """
    src = source()
    report = sync(
        connect(src.url, src.token),
        actor=actor or Actor.system("netbox-sync"),
        credentials=src.credentials,
        role=src.role,
    )
    for r in report.results:
        if r.outcome == "skipped":
            log.warning("NetBox sync: %s skipped: %s", r.device, r.message)
        elif r.outcome in ("created", "updated", "maintenance", "deferred"):
            log.info("NetBox sync: %s %s: %s", r.device, r.outcome, r.message)
    log.info("NetBox sync of %s: %s", where(src.url), report.summary())
    return report
