"""First boot of the lab OS image: configure the computer from the Neocloud config drive, as cloud-init would.

    python3.11 -m lab.os_firstboot --disk /dev/vda [--root /]

Runs inside the emulated computer booted from its disk (lab.osimage), before sshd starts. From
the config drive the deploy agent wrote at the end of the disk (provisioner.pxe.configdrive) it sets the
hostname, installs root's authorized keys and the SSH host keys the agent generated and reported, so the
fingerprints the customer was given are the ones sshd presents. The address in the document is for the
lab's network namespaces; the emulated computer takes its address from DHCP. ``private_network`` (the tenant
network) is applied with ``--network-interface`` to the NIC cabled to the switch: the emulated computers are on
QEMU's user network, not on the lab switch, so their first-boot script does not pass it; the switched lab's
simulated servers apply it through ``apply_private_network`` when their OS boots (lab.sshd).
"""

from __future__ import annotations

import argparse
import ipaddress
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
    if not isinstance(network, dict):
        raise ValueError("the config drive's private_network is not an object")
    try:
        address = ipaddress.IPv4Interface(f"{network['address']}/{int(network['prefix'])}")
        gateway = ipaddress.IPv4Address(network["gateway"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            "the config drive's private_network needs an IPv4 address, a prefix and a gateway"
        ) from None
    if gateway not in address.network or gateway == address.ip or address.network.prefixlen > 30:
        raise ValueError(
            f"the config drive's private_network gateway {gateway} is not another host of {address.network}"
        )
    return [
        ["addr", "replace", address.with_prefixlen, "dev", interface],
        ["link", "set", interface, "up"],
        ["route", "replace", "default", "via", str(gateway), "dev", interface, "src", str(address.ip)],
    ]


def apply_private_network(document: dict[str, Any], interface: str, namespace: str = "") -> str:
    """Run ``private_network_commands`` (in network namespace ``namespace`` when given); return the private
    address ("" when the document has none).

    :raises ValueError: the key is malformed, or ``ip`` refused a command (its complaint in the message).
    """
    for args in private_network_commands(document, interface):
        argv = ["ip", *(["-n", namespace] if namespace else []), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        if proc.returncode != 0:
            raise ValueError(f"'{' '.join(argv)}' failed: {proc.stderr.strip()}")
    network = document.get("private_network")
    return str(network["address"]) if isinstance(network, dict) else ""


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
    try:
        host_keys = apply_config(document, args.root)
    except (OSError, ValueError, KeyError) as exc:
        print(f"neocloud-os: the config drive could not be applied: {exc}", file=sys.stderr)
        return 1
    if args.set_hostname:
        socket.sethostname(document["hostname"])
    if args.network_interface:
        try:
            private = apply_private_network(document, args.network_interface)
        except ValueError as exc:
            print(f"neocloud-os: the private network could not be configured: {exc}", file=sys.stderr)
            return 1
        if private:
            print(f"neocloud-os: private network {private} on {args.network_interface}")
    keys = len(document.get("authorized_keys", []))
    print(
        f"neocloud-os: configured {document['hostname']}: {keys} authorized keys, {len(host_keys)} host keys"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
