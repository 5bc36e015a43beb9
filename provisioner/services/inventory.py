"""Enrolling inventory from YAML files (inventory/*.yaml) into the database. Idempotent upserts.

File shape (see inventory/example.yaml):
  sites: [{slug, name, racks: [name, ...],
           network: {provisioning_vlan, cleaning_vlan, quarantine_vlan, tenant_vlans: "first-last",
                     tenant_supernet, tenant_prefix, public_range}}]
  (network: optional; a site with one is network-managed: the lifecycle moves its servers' switch ports
   between VLANs and gives each reservation a tenant network; cleaning_vlan defaults to provisioning_vlan,
   tenant_prefix to 24. See docs/network.md)
  server_types: [{slug, name, cpu_model, cpu_cores, ram_gib, gpu_model, gpu_count, gpu_memory_gib,
                  pcie_gen, pcie_width, nvlink_links, disk_gib, deploy_driver, burnin_driver}]
  (deploy_driver, burnin_driver: optional, a driver name; blank or left out: the installation's default)
  images: [{slug, name, url, sha256, size_bytes, format, os_name}]
  nodes: [{name, serial, server_type, site, rack, boot_mac, address,
           switch: {name, port},   (optional: where the boot NIC is cabled, as NetBox's cable says it)
           bmc: {protocol, address, port, scheme, username, password | password_env | password_file,
                 system_id},
           driver_info: {python, burnin_backend, ...}}]   (optional; see provisioner/drivers/ansible/driver_info.py)
A Redfish BMC's scheme (http or https) is ``scheme`` or the address written as a URL, as Ironic's
redfish_address (``address: https://10.0.0.5:8443``); with neither, http on ports 80 and 8000, https on any
other (what the driver once guessed on every call), written into the node's record.
BMC passwords never live in committed files: use password_env or password_file (the lab's generated
inventory under var/ holds its throwaway lab passwords inline).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from django.core.exceptions import ValidationError
from django.core.validators import validate_ipv46_address
from django.db import transaction

from provisioner.drivers.ansible.driver_info import checked_driver_info
from provisioner.drivers.base import REDFISH_SCHEMES, default_redfish_scheme
from provisioner.drivers.registry import BURNIN_DRIVERS, DEPLOY_DRIVERS
from provisioner.errors import InvalidRequest
from provisioner.lifecycle import Actor, process_event, record
from provisioner.models import BmcCredential, Image, Node, Rack, ServerType, Site, SiteNetwork
from provisioner.models.inventory import SERVER_TYPE_FIELDS
from provisioner.services.nodes import why_not_idle
from provisioner.states import NodeEvent, NodeState

_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def read_password(bmc: dict[str, Any], node_name: str) -> str:
    if "password" in bmc:
        return str(bmc["password"])
    if "password_env" in bmc:
        value = os.environ.get(bmc["password_env"])
        if value is None:
            raise InvalidRequest(f"node {node_name}: environment variable {bmc['password_env']} is not set")
        return value
    if "password_file" in bmc:
        try:
            return Path(bmc["password_file"]).read_text().strip()
        except OSError as exc:
            raise InvalidRequest(
                f"node {node_name}: cannot read bmc password_file {bmc['password_file']}: {exc.strerror}"
            )
    raise InvalidRequest(f"node {node_name}: bmc needs password, password_env or password_file")


def required_field(entry: dict[str, Any], key: str, where: str) -> Any:
    value = entry.get(key)
    if value is None or value == "":
        raise InvalidRequest(f"{where}: {key} is missing")
    return value


def checked_port(value: Any, where: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = 0
    if not 0 < port < 65536:
        raise InvalidRequest(f"{where}: port {value!r} is not a TCP port (1-65535)")
    return port


def checked_scheme(protocol: str, scheme: Any, port: int, where: str) -> str:
    """The BMC record's URL scheme: for Redfish ``scheme`` (http or https) or, when not given, the default
    for ``port``; for the other protocols blank (they have none, so naming one is refused).

    :raises InvalidRequest: a scheme that is not http or https, or one given to a protocol without any.
    """
    given = str(scheme or "").strip().lower()
    if protocol != "redfish":
        if given:
            raise InvalidRequest(f"{where}: scheme {scheme!r} is for Redfish; {protocol} has no URL scheme")
        return ""
    if not given:
        return default_redfish_scheme(port)
    if given not in REDFISH_SCHEMES:
        raise InvalidRequest(f"{where}: scheme {scheme!r} is not http or https")
    return given


def bmc_endpoint(bmc: dict[str, Any], where: str) -> tuple[str, int, str]:
    """Address, port and scheme of an inventory ``bmc`` mapping. A Redfish address may be a URL
    (``https://10.0.0.5:8443``, ``http://[2001:db8::5]:8000``), which gives the scheme and, when it has one,
    the port; a ``scheme`` or ``port`` given beside it must agree with it.

    :raises InvalidRequest: in words, naming what is wrong.
    """
    protocol = str(bmc["protocol"])
    address = str(bmc["address"]).strip()
    if "://" not in address:
        port = checked_port(bmc.get("port", 623 if protocol == "ipmi" else 443), where)
        return address, port, checked_scheme(protocol, bmc.get("scheme"), port, where)
    if protocol != "redfish":
        raise InvalidRequest(
            f"{where}: address {address!r} is a URL; only a Redfish BMC's address may be one "
            f"({protocol} takes a host name or IP address)"
        )
    url = urlsplit(address)
    if "@" in url.netloc:  # never quoted: the part before the @ may hold the BMC's password
        raise InvalidRequest(
            f"{where}: the address URL holds a user name or password; give them as username and password"
        )
    try:
        url_port = url.port
    except ValueError:
        raise InvalidRequest(f"{where}: address {address!r} has no valid port (1-65535)") from None
    if url.scheme.lower() not in REDFISH_SCHEMES:
        raise InvalidRequest(f"{where}: address {address!r}: scheme {url.scheme!r} is not http or https")
    if not url.hostname or url.path not in ("", "/") or url.query or url.fragment:
        raise InvalidRequest(
            f"{where}: address {address!r} is not scheme://host[:port] (no path or query: the driver "
            "finds the Redfish service under /redfish/v1 itself)"
        )
    scheme = url.scheme.lower()
    if bmc.get("scheme") and str(bmc["scheme"]).strip().lower() != scheme:
        raise InvalidRequest(f"{where}: scheme {bmc['scheme']!r} disagrees with address {address!r}")
    if url_port is not None and "port" in bmc and checked_port(bmc["port"], where) != url_port:
        raise InvalidRequest(f"{where}: port {bmc['port']!r} disagrees with address {address!r}")
    port = url_port or checked_port(bmc.get("port", 443 if scheme == "https" else 80), where)
    host = url.hostname
    return (f"[{host}]" if ":" in host else host), port, scheme


def _checked_node(nd: Any, index: int) -> tuple[str, dict[str, Any]]:
    """The node entry's name and bmc mapping, once the fields every node needs are there."""
    if not isinstance(nd, dict) or not nd.get("name"):
        raise InvalidRequest(
            f"nodes entry {index + 1}: a node is a mapping with name, server_type, boot_mac, bmc"
        )
    name = str(nd["name"])
    required_field(nd, "server_type", f"node {name}")
    required_field(nd, "boot_mac", f"node {name}")
    bmc = nd.get("bmc")
    if not isinstance(bmc, dict):
        raise InvalidRequest(f"node {name}: bmc is missing (protocol, address, username and a password)")
    for key in ("protocol", "address", "username"):
        required_field(bmc, key, f"node {name}: bmc")
    if nd.get("address"):
        try:
            validate_ipv46_address(str(nd["address"]))
        except ValidationError:
            raise InvalidRequest(f"node {name}: address {nd['address']!r} is not an IP address")
    return name, bmc


def _checked_drivers(st: dict[str, Any]) -> dict[str, str]:
    """The server type's driver choices present in its entry, each a known driver name or blank.

    :raises InvalidRequest: an unknown driver name (the message names it and the known ones).
    """
    chosen = {}
    for key, names in (("deploy_driver", DEPLOY_DRIVERS), ("burnin_driver", BURNIN_DRIVERS)):
        if key not in st:
            continue
        value = st[key] or ""
        if value not in ("", *names):
            raise InvalidRequest(
                f"server type {st.get('slug')}: unknown {key} {value!r} (expected one of {', '.join(names)}; "
                "leave it out for the installation's default)"
            )
        chosen[key] = value
    return chosen


def _cabling(switch: Any, where: str) -> dict[str, str]:
    """``switch: {name, port}``: the switch and port the boot NIC is cabled to (both or neither)."""
    if switch is None:
        return {"switch_name": "", "switch_port": ""}
    if not isinstance(switch, dict) or set(switch) - {"name", "port"}:
        raise InvalidRequest(f"{where}: must be a mapping with name and port")
    name, port = str(switch.get("name") or "").strip(), str(switch.get("port") or "").strip()
    if not name or not port:
        raise InvalidRequest(f"{where}: give both the switch's name and its port")
    for what, value in (("name", name), ("port", port)):
        if len(value) > 100:
            raise InvalidRequest(f"{where}: {what} {value[:20]!r}... is longer than 100 characters")
    return {"switch_name": name, "switch_port": port}


def _refuse_duplicates(name: str, boot_mac: str, serial: str) -> None:
    """A boot MAC or serial number belongs to one server: a second node with it is an inventory mistake."""
    other = Node.objects.filter(boot_mac=boot_mac).exclude(name=name).first()
    if other is not None:
        raise InvalidRequest(f"node {name}: boot_mac {boot_mac} is already node {other.name}'s")
    other = Node.objects.filter(serial=serial).exclude(name=name).first() if serial else None
    if other is not None:
        raise InvalidRequest(f"node {name}: serial {serial} is already node {other.name}'s")


# What a customer's server is booked as and reached at: changed under a lease, a server would move into
# another server type's pool, or network-boot and be reached at addresses its deploy did not configure.
HELD_FIELDS = ("server_type", "boot_mac", "primary_address", "ssh_endpoint_address", "ssh_endpoint_port")


def _why_held(node: Node) -> str:
    """Why ``node``'s held fields must not change now ('' when they may): the rule of the NetBox sync."""
    why = why_not_idle(node, enrolling=True)
    return f"{node.state} ({why})" if why else ""


def _refuse_changes_while_held(name: str, fields: dict[str, Any]) -> None:
    """A node a customer holds, or an operation works on, keeps its server type, boot MAC and addresses:
    re-enrolling it with other ones is refused (the whole file, as for any mistake in it), naming the node
    and the fields; enrolled again once the node is back in the pool, the file applies."""
    node = Node.objects.select_for_update().select_related("server_type").filter(name=name).first()
    if node is None:
        return
    changed = []
    for field in HELD_FIELDS:
        old, new = getattr(node, field), fields[field]
        if field == "server_type":
            old, new = old.slug, new.slug
        if (old or None) != (new or None) and str(old) != str(new):
            changed.append((field, old, new))
    why = _why_held(node) if changed else ""
    if why:
        text = "; ".join(f"{f} {old or '(none)'} -> {new or '(none)'}" for f, old, new in changed)
        raise InvalidRequest(
            f"node {name} is {why}: {', '.join(f for f, _, _ in changed)} not changed ({text}); "
            "enroll the change once the node is back in the pool"
        )


def normalize_mac(mac: str) -> str:
    value = mac.strip().lower().replace("-", ":")
    if not _MAC.match(value):
        raise InvalidRequest(f"{mac!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return value


_SITE_NETWORK_KEYS = {
    "provisioning_vlan",
    "cleaning_vlan",
    "quarantine_vlan",
    "tenant_vlans",
    "tenant_supernet",
    "tenant_prefix",
    "public_range",
}


def _enroll_site_network(site: Site, block: Any) -> SiteNetwork:
    """A site's ``network:`` block: create or update its SiteNetwork, refusing a bad one with one sentence."""
    where = f"site {site.slug}: network"
    if not isinstance(block, dict):
        raise InvalidRequest(f"{where} must be a mapping of {', '.join(sorted(_SITE_NETWORK_KEYS))}")
    unknown = set(block) - _SITE_NETWORK_KEYS
    if unknown:
        raise InvalidRequest(f"{where}: unknown key {', '.join(sorted(unknown))}")
    missing = {
        "provisioning_vlan",
        "quarantine_vlan",
        "tenant_vlans",
        "tenant_supernet",
        "public_range",
    } - set(block)
    if missing:
        raise InvalidRequest(f"{where}: {', '.join(sorted(missing))} missing")
    pool = re.fullmatch(r"\s*([0-9]{1,4})\s*-\s*([0-9]{1,4})\s*", str(block["tenant_vlans"]))
    if pool is None:
        raise InvalidRequest(
            f"{where}: tenant_vlans {block['tenant_vlans']!r} is not a range such as 100-199"
        )

    def vlan(key: str, default: Any = None) -> int:
        value = block.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidRequest(f"{where}: {key} {value!r} is not a VLAN id (1-4094)")
        return value

    prefix = block.get("tenant_prefix", 24)
    if isinstance(prefix, bool) or not isinstance(prefix, int):
        raise InvalidRequest(f"{where}: tenant_prefix {prefix!r} is not a prefix length such as 24")
    fields = {
        "provisioning_vlan": vlan("provisioning_vlan"),
        "cleaning_vlan": vlan("cleaning_vlan", block["provisioning_vlan"]),
        "quarantine_vlan": vlan("quarantine_vlan"),
        "tenant_vlan_first": int(pool.group(1)),
        "tenant_vlan_last": int(pool.group(2)),
        "tenant_supernet": str(block["tenant_supernet"]).strip(),
        "tenant_prefix": prefix,
        "public_range": str(block["public_range"]).strip(),
    }
    record = SiteNetwork.objects.filter(site=site).first() or SiteNetwork(site=site)
    for key, value in fields.items():
        setattr(record, key, value)
    found = record.problems()
    if found:
        raise InvalidRequest(f"{where}: {next(iter(found.values()))}")
    record.save()
    return record


@transaction.atomic
def enroll(data: dict[str, Any], *, actor: Actor) -> dict[str, int]:
    """Create or update everything in ``data``; new nodes go enrolling -> available. Returns counts."""
    counts = {"sites": 0, "server_types": 0, "images": 0, "nodes_created": 0, "nodes_updated": 0}
    for site_data in data.get("sites", []):
        site, _ = Site.objects.update_or_create(
            slug=site_data["slug"],
            defaults={
                "name": site_data.get("name", site_data["slug"]),
                "image_mirror_url": site_data.get("image_mirror_url", ""),
            },
        )
        for rack_name in site_data.get("racks", []):
            Rack.objects.get_or_create(site=site, name=rack_name)
        if site_data.get("network") is not None:
            _enroll_site_network(site, site_data["network"])
        counts["sites"] += 1
    for st in data.get("server_types", []):
        ServerType.objects.update_or_create(
            slug=st["slug"],
            defaults={**{k: st[k] for k in SERVER_TYPE_FIELDS if k in st}, **_checked_drivers(st)},
        )
        counts["server_types"] += 1
    for img in data.get("images", []):
        Image.objects.update_or_create(
            slug=img["slug"],
            defaults={
                k: img[k] for k in ("name", "url", "sha256", "size_bytes", "format", "os_name") if k in img
            },
        )
        counts["images"] += 1
    for index, nd in enumerate(data.get("nodes") or []):
        name, bmc = _checked_node(nd, index)
        try:
            server_type = ServerType.objects.get(slug=nd["server_type"])
        except ServerType.DoesNotExist:
            raise InvalidRequest(f"node {name}: unknown server type {nd['server_type']!r}")
        rack = None
        if nd.get("site") and nd.get("rack"):
            rack, _ = Rack.objects.get_or_create(
                site=Site.objects.get_or_create(slug=nd["site"], defaults={"name": nd["site"]})[0],
                name=nd["rack"],
            )
        boot_mac = normalize_mac(str(nd["boot_mac"]))
        serial = str(nd.get("serial") or "")
        _refuse_duplicates(name, boot_mac, serial)
        if bmc["protocol"] not in Node.BmcProtocol.values:
            raise InvalidRequest(f"node {name}: bmc protocol must be one of {Node.BmcProtocol.values}")
        bmc_address, bmc_port, bmc_scheme = bmc_endpoint(bmc, f"node {name}: bmc")
        fields = {
            "serial": serial,
            "server_type": server_type,
            "rack": rack,
            "bmc_protocol": bmc["protocol"],
            "bmc_address": bmc_address,
            "bmc_port": bmc_port,
            "bmc_scheme": bmc_scheme,
            "bmc_system_id": bmc.get("system_id", ""),
            "boot_mac": boot_mac,
            "primary_address": nd.get("address") or None,
            **_cabling(nd.get("switch"), f"node {name}: switch"),
            # where SSH is reached when it is not primary address:22 (a port forward on the site's gateway)
            "ssh_endpoint_address": (nd.get("ssh_endpoint") or {}).get("address", ""),
            "ssh_endpoint_port": checked_port(
                (nd.get("ssh_endpoint") or {}).get("port", 22), f"node {name}: ssh_endpoint"
            ),
            # the whole mapping, as any field of the entry: keys left out of the file fall back to defaults
            "driver_info": checked_driver_info(nd.get("driver_info"), f"node {name}"),
        }
        _refuse_changes_while_held(name, fields)
        node, created = Node.objects.update_or_create(name=name, defaults=fields)
        cred, _ = BmcCredential.objects.get_or_create(
            node=node, defaults={"username": bmc["username"], "password_encrypted": ""}
        )
        cred.username = bmc["username"]
        cred.password = read_password(bmc, name)
        cred.save()
        if created:
            record(
                actor,
                "enroll",
                node=node,
                reason=f"enrolled from inventory ({bmc['protocol']} {bmc['address']})",
            )
            counts["nodes_created"] += 1
        else:
            counts["nodes_updated"] += 1
        if node.state == NodeState.ENROLLING:
            process_event(node, NodeEvent.ENROLLED, actor=actor, reason="inventory enrolled")
    return counts


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What is wrong and where, without PyYAML's quote of the line: that line may hold a BMC password."""
    if isinstance(exc, yaml.MarkedYAMLError):
        what = " ".join(p for p in (exc.context, exc.problem) if p) or "syntax error"
        mark = exc.problem_mark or exc.context_mark
        return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what
    return type(exc).__name__


def enroll_file(path: str | Path, *, actor: Actor) -> dict[str, int]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise InvalidRequest(f"cannot read inventory {path}: {exc}")
    except yaml.YAMLError as exc:
        raise InvalidRequest(f"inventory {path} is not valid YAML: {_yaml_problem(exc)}")
    if not isinstance(data, dict):
        raise InvalidRequest(f"inventory {path} must be a mapping with sites, server_types, images, nodes")
    return enroll(data, actor=actor)
