"""First boot of the lab OS image: configure the computer from the Neocloud config drive, as cloud-init would.

    python3.11 -m lab.os_firstboot --disk /dev/vda [--root /]

Runs inside the emulated computer booted from its disk (lab.osimage), before sshd starts. From
the config drive the deploy agent wrote at the end of the disk (provisioner.pxe.configdrive) it sets the
hostname, installs root's authorized keys and the SSH host keys the agent generated and reported, so the
fingerprints the customer was given are the ones sshd presents; once per instance, as cloud-init's
per-instance modules (the instance's id in /var/lib/neocloud/instance-id), so that a reboot keeps what the OS
holds since (the handover removed our provisioning key from root's keys). The address in the document is
for the lab's network namespaces; the emulated computer takes its address from DHCP. ``private_network`` (the tenant
network) is written, with ``--network-interface``, as the NIC's netplan file (/etc/netplan/``NETPLAN_FILE``)
at the instance's first boot and brought up from that file at every boot: the emulated computers are on
QEMU's user network, not on the lab switch, so their first-boot script does not pass it; the switched lab's
simulated servers do the same in their own OS directory (lab.sshd.start_node_os).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from provisioner.pxe.configdrive import ConfigDriveError, read_config_drive

# The config drive names host keys by public key type; sshd by file name.
HOST_KEY_FILES = {
    "ssh-ed25519": "ssh_host_ed25519_key",
    "ecdsa-sha2-nistp256": "ssh_host_ecdsa_key",
    "ssh-rsa": "ssh_host_rsa_key",
}


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


def apply_config(document: dict[str, Any], root: Path) -> list[Path]:
    """Write hostname, root's authorized keys and the host keys under ``root``; return the private host key
    paths (for sshd's HostKey lines). Idempotent.

    :raises ValueError: the document has no hostname or no host keys of a known type.
    """
    hostname = document.get("hostname")
    if not isinstance(hostname, str) or not hostname:
        raise ValueError("the config drive has no hostname")
    _write(root / "etc/hostname", f"{hostname}\n", 0o644)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    keys = [key for key in document.get("authorized_keys", []) if isinstance(key, str)]
    _write(ssh_dir / "authorized_keys", "".join(f"{key}\n" for key in keys), 0o600)
    written = []
    for kind, pair in sorted((document.get("host_keys") or {}).items()):
        name = HOST_KEY_FILES.get(kind)
        if name is None or not isinstance(pair, dict):
            continue
        private = root / "etc/ssh" / name
        _write(private, pair["private"], 0o600)
        _write(private.with_name(f"{name}.pub"), pair["public"].strip() + "\n", 0o644)
        written.append(private)
    if not written:
        raise ValueError("the config drive has no SSH host keys")
    return written


# Per-instance data (cloud-init's "once per instance"): the config drive's host keys, authorized keys and
# network configuration are applied at the first boot of an instance only, and that instance's id is written
# here; a later boot of the same instance (the customer's reboot) keeps what the OS holds since (the host keys
# a warm server's personalize made, the authorized keys its handover left: without our provisioning key).
INSTANCE_ID_FILE = "instance-id"
# Where the OS keeps its private network, as netplan does on a deployed Ubuntu (/etc/netplan): written at the
# instance's first boot from the config drive's private_network, or by the personalize step on a warm server
# (provisioner.drivers.ansible.drivers.PRIVATE_NETWORK_SCRIPT), and brought up at every boot. Netplan YAML in
# its JSON form (JSON is YAML), so this first-boot script, run without site packages, reads it with json.
NETPLAN_FILE = "60-neocloud-private.yaml"


def instance_id(document: dict[str, Any]) -> str:
    """The instance the config drive describes: its ``instance_id`` (a deploy's own), else a digest of the
    whole document (a deploy writes fresh host keys and its time, so each deploy's differs)."""
    given = document.get("instance_id")
    if isinstance(given, str) and given:
        return given
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:32]


def first_boot_of_instance(document: dict[str, Any], marker: Path) -> bool:
    """Whether this boot is the first of the document's instance (``marker`` holds another id, or none)."""
    try:
        return marker.read_text().strip() != instance_id(document)
    except OSError:
        return True


def mark_instance(document: dict[str, Any], marker: Path) -> None:
    """Record that the document's per-instance data is applied (written last, after that data)."""
    _write(marker, instance_id(document) + "\n", 0o644)


def _private_interface(network: Any, what: str) -> tuple[ipaddress.IPv4Interface, ipaddress.IPv4Address]:
    if not isinstance(network, dict):
        raise ValueError(f"{what} is not an object")
    try:
        address = ipaddress.IPv4Interface(f"{network['address']}/{int(network['prefix'])}")
        gateway = ipaddress.IPv4Address(network["gateway"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{what} needs an IPv4 address, a prefix and a gateway") from None
    if gateway not in address.network or gateway == address.ip or address.network.prefixlen > 30:
        raise ValueError(f"{what} gateway {gateway} is not another host of {address.network}")
    return address, gateway


def _commands(
    address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address, interface: str
) -> list[list[str]]:
    return [
        ["addr", "replace", address.with_prefixlen, "dev", interface],
        ["link", "set", interface, "up"],
        ["route", "replace", "default", "via", str(gateway), "dev", interface, "src", str(address.ip)],
    ]


def private_network_commands(document: dict[str, Any], interface: str) -> list[list[str]]:
    """The ``ip`` commands (argv lists without ``ip``) that put the config drive's ``private_network`` on
    ``interface``: the static address with its prefix, and the default route via the tenant gateway. The
    provisioning address keeps only its host route to the boot service (the default route moves off it).
    No ``private_network``: no commands.

    :raises ValueError: the key is not {address, prefix, gateway} with the gateway inside the network.
    """
    network = document.get("private_network")
    if network is None:
        return []
    address, gateway = _private_interface(network, "the config drive's private_network")
    return _commands(address, gateway, interface)


def render_private_network(document: dict[str, Any], interface: str) -> str | None:
    """The netplan file (``NETPLAN_FILE``) for the config drive's ``private_network`` on ``interface``: the
    static address and the default route via the tenant gateway. None: the document has no private network.

    :raises ValueError: as ``private_network_commands``.
    """
    network = document.get("private_network")
    if network is None:
        return None
    address, gateway = _private_interface(network, "the config drive's private_network")
    config = {
        "network": {
            "version": 2,
            "ethernets": {
                interface: {
                    "addresses": [address.with_prefixlen],
                    "routes": [{"to": "default", "via": str(gateway)}],
                }
            },
        }
    }
    return json.dumps(config) + "\n"


def network_config_commands(text: str) -> tuple[list[list[str]], str]:
    """The ``ip`` commands that bring up the netplan file ``text`` (as ``render_private_network`` and the
    personalize step write it: per interface, one address and a default route), and its private address.

    :raises ValueError: the file is not such a netplan document.
    """
    try:
        ethernets = json.loads(text)["network"]["ethernets"]
        items = list(ethernets.items())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError(f"{NETPLAN_FILE} is not a netplan document with network.ethernets") from None
    commands: list[list[str]] = []
    private = ""
    for interface, entry in items:
        try:
            address = ipaddress.IPv4Interface(entry["addresses"][0])
            via = next(r["via"] for r in entry["routes"] if r.get("to") == "default")
            network = {"address": str(address.ip), "prefix": address.network.prefixlen, "gateway": via}
        except (KeyError, IndexError, TypeError, ValueError, StopIteration, AttributeError):
            raise ValueError(
                f"{NETPLAN_FILE}: interface {interface!r} needs one address and a default route"
            ) from None
        ip, gateway = _private_interface(network, f"{NETPLAN_FILE}'s {interface}")
        commands += _commands(ip, gateway, str(interface))
        private = private or str(ip.ip)
    return commands, private


def _run_ip(commands: list[list[str]], namespace: str) -> None:
    for args in commands:
        argv = ["ip", *(["-n", namespace] if namespace else []), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        if proc.returncode != 0:
            raise ValueError(f"'{' '.join(argv)}' failed: {proc.stderr.strip()}")


def write_network_config(document: dict[str, Any], interface: str, directory: Path) -> None:
    """At an instance's first boot: the netplan file for its private network in ``directory`` (removed when
    the document has none: a new instance does not inherit the last one's network).

    :raises ValueError: as ``private_network_commands``.
    """
    text = render_private_network(document, interface)
    path = directory / NETPLAN_FILE
    if text is None:
        path.unlink(missing_ok=True)
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    _write(tmp, text, 0o600)
    os.replace(tmp, path)


def apply_network_config(directory: Path, namespace: str = "") -> str:
    """At every boot: bring up the netplan file in ``directory`` (in network namespace ``namespace`` when
    given); return the private address ("" without a file).

    :raises ValueError: the file is malformed, or ``ip`` refused a command.
    """
    try:
        text = (directory / NETPLAN_FILE).read_text()
    except FileNotFoundError:
        return ""
    commands, private = network_config_commands(text)
    _run_ip(commands, namespace)
    return private


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Configure this computer from its Neocloud config drive.")
    parser.add_argument("--disk", required=True)
    parser.add_argument("--root", type=Path, default=Path("/"))
    parser.add_argument("--set-hostname", action="store_true", help="also set the running kernel's hostname")
    parser.add_argument(
        "--network-interface",
        default="",
        help="apply the config drive's private_network to this NIC (the boot NIC cabled to the switch)",
    )
    args = parser.parse_args(argv)
    try:
        document = read_config_drive(args.disk)
    except (OSError, ConfigDriveError) as exc:
        print(f"neocloud-os: cannot read the config drive on {args.disk}: {exc}", file=sys.stderr)
        return 1
    if document is None:
        print(f"neocloud-os: no config drive on {args.disk}", file=sys.stderr)
        return 1
    marker = args.root / "var/lib/neocloud" / INSTANCE_ID_FILE
    netplan = args.root / "etc/netplan"
    first = first_boot_of_instance(document, marker)
    try:
        if first:
            apply_config(document, args.root)
            if args.network_interface:
                write_network_config(document, args.network_interface, netplan)
            mark_instance(document, marker)
    except (OSError, ValueError, KeyError) as exc:
        print(f"neocloud-os: the config drive could not be applied: {exc}", file=sys.stderr)
        return 1
    if args.set_hostname:
        socket.sethostname(document["hostname"])
    if args.network_interface:
        try:
            private = apply_network_config(netplan)
        except ValueError as exc:
            print(f"neocloud-os: the private network could not be configured: {exc}", file=sys.stderr)
            return 1
        if private:
            print(f"neocloud-os: private network {private} on {args.network_interface}")
    if first:
        keys = len(document.get("authorized_keys", []))
        print(f"neocloud-os: configured {document['hostname']}: {keys} authorized keys, new host keys")
    else:
        print(f"neocloud-os: {document['hostname']} booted again: keys and network as the OS keeps them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
