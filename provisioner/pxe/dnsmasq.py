"""The dnsmasq configuration a site deploys on its provisioning network.

dnsmasq does three things for network boot:
1. DHCP for PXE: in ``proxy`` mode (the default) the site's own DHCP server keeps handing out
   addresses and dnsmasq only adds the boot information (proxy DHCP); in ``dhcp`` mode it is the DHCP
   server for a range.
2. TFTP for the first stage: a plain PXE ROM gets iPXE (``undionly.kpxe`` for BIOS, ``snponly.efi``
   for x86-64 UEFI, ``ipxe-arm64.efi`` for ARM64 UEFI), picked by the client architecture (option 93).
3. Chain-loading: once iPXE runs (user class ``iPXE``, or option 175 present) it is pointed at
   ``<boot_url>/boot/${mac:hexhyp}.ipxe``. iPXE expands ``${mac:hexhyp}`` to the boot NIC's MAC in
   hyphen form (``52-54-00-12-34-56``); the boot view accepts it through
   ``provisioner.pxe.ipxe.normalize_mac``.

Per-node ``dhcp-host`` lines pin a known MAC to a name (and, in ``dhcp`` mode, an address).
``check_dnsmasq_config`` runs ``dnsmasq --test`` on a written file without starting a server.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from provisioner.pxe.ipxe import IpxeScriptError, normalize_mac, validate_base_url

BIOS_LOADER = "undionly.kpxe"
UEFI_X64_LOADER = "snponly.efi"
UEFI_ARM64_LOADER = "ipxe-arm64.efi"
CHAIN_PATH = "/boot/${mac:hexhyp}.ipxe"

_INTERFACE = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
# What dnsmasq reads in a dhcp-host line as a lease time (digits, optionally s/m/h/d/w) or a keyword
# ("ignore": never answer that MAC), not as a name; ``dnsmasq --test`` accepts them all.
_DHCP_HOST_WORD = re.compile(r"^([0-9]+[smhdwSMHDW]?|infinite|ignore)$")
_PATH = re.compile(r"^/[A-Za-z0-9_./-]*$")


class DnsmasqConfigError(ValueError):
    """A site setting cannot go into a dnsmasq configuration, or dnsmasq rejected the file."""


@dataclasses.dataclass(frozen=True)
class DhcpHost:
    """A known node: its boot NIC's MAC, its name, and (``dhcp`` mode) a fixed address."""

    mac: str
    name: str
    address: str | None = None


@dataclasses.dataclass(frozen=True)
class DnsmasqSite:
    """One site's provisioning network.

    ``subnet`` is the network in CIDR form; ``boot_url`` is how nodes reach the boot service
    (``http://10.0.0.2:8000``); ``dhcp_range`` (``dhcp`` mode only) is the first and last address leased;
    ``router`` (``dhcp`` mode only) is the default gateway handed out (dnsmasq's default: its own address).
    """

    subnet: str
    boot_url: str
    tftp_root: str = "/srv/tftp"
    interface: str | None = None
    mode: str = "proxy"  # "proxy" | "dhcp"
    dhcp_range: tuple[str, str] | None = None
    lease_time: str = "1h"
    hosts: Sequence[DhcpHost] = ()
    router: str | None = None


def _address(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise DnsmasqConfigError(f"{what} {text!r} is not an IPv4 address") from None


def _checked(site: DnsmasqSite) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(site.subnet, strict=True)
    except ValueError as exc:
        raise DnsmasqConfigError(f"subnet {site.subnet!r} is not an IPv4 network in CIDR form: {exc}")
    try:
        validate_base_url(site.boot_url)
    except IpxeScriptError as exc:
        raise DnsmasqConfigError(str(exc))
    if site.interface is not None and not _INTERFACE.match(site.interface):
        raise DnsmasqConfigError(f"interface name {site.interface!r} is not valid")
    if not _PATH.match(site.tftp_root):
        raise DnsmasqConfigError(f"tftp root {site.tftp_root!r} must be an absolute path without spaces")
    if site.mode not in ("proxy", "dhcp"):
        raise DnsmasqConfigError(f"mode {site.mode!r} must be 'proxy' or 'dhcp'")
    if site.mode == "dhcp":
        if site.dhcp_range is None:
            raise DnsmasqConfigError("dhcp mode needs dhcp_range=(first, last)")
        for address in site.dhcp_range:
            if _address(address, "dhcp range address") not in network:
                raise DnsmasqConfigError(f"dhcp range address {address} is outside {network}")
        if site.router is not None and _address(site.router, "router") not in network:
            raise DnsmasqConfigError(f"router {site.router} is outside {network}")
        if not re.match(r"^(\d+[smhdw]?|infinite)$", site.lease_time):
            raise DnsmasqConfigError(f"lease time {site.lease_time!r} is not valid (e.g. 1h, 30m, 3600)")
    # dnsmasq refuses a whole file with one address twice ("duplicate dhcp-host IP address"); a MAC twice
    # it takes, answering with whichever line it likes: both are caught here, naming the hosts.
    seen_macs: dict[str, str] = {}
    seen_addresses: dict[ipaddress.IPv4Address, str] = {}
    for host in site.hosts:
        mac = host.mac.lower().replace("-", ":")
        if mac in seen_macs:
            raise DnsmasqConfigError(f"MAC {host.mac} is given to both {seen_macs[mac]} and {host.name}")
        seen_macs[mac] = host.name
        if host.address is not None:
            fixed = _address(host.address, f"address of {host.name}")
            if fixed in seen_addresses:
                raise DnsmasqConfigError(
                    f"address {fixed} is given to both {seen_addresses[fixed]} and {host.name}"
                )
            seen_addresses[fixed] = host.name
        if not _HOSTNAME.fullmatch(host.name):
            raise DnsmasqConfigError(f"host name {host.name!r} must be a DNS label")
        if _DHCP_HOST_WORD.fullmatch(host.name):
            raise DnsmasqConfigError(
                f"host name {host.name!r} would be read by dnsmasq as a lease time or keyword, not a name"
            )
        if host.address is not None and _address(host.address, f"address of {host.name}") not in network:
            raise DnsmasqConfigError(f"address {host.address} of {host.name} is outside {network}")
    return network


def render_dnsmasq_config(site: DnsmasqSite) -> str:
    """The dnsmasq configuration file for a site. Pure.

    :raises DnsmasqConfigError: a setting is invalid (bad subnet, URL, name, MAC, range).
    """
    network = _checked(site)
    boot = validate_base_url(site.boot_url)
    lines = [
        "# Neocloud network boot: generated by provisioner.pxe.dnsmasq; edit the site, not this file.",
        "# No DNS service: dnsmasq only does DHCP/PXE and TFTP here.",
        "port=0",
        "bind-dynamic",
        "log-dhcp",
    ]
    if site.interface:
        lines.append(f"interface={site.interface}")
    if site.mode == "proxy":
        lines += [
            "# Proxy DHCP: the site's DHCP server assigns addresses; we only add boot information.",
            f"dhcp-range={network.network_address},proxy,{network.netmask}",
        ]
    else:
        first, last = site.dhcp_range or ("", "")
        lines += [f"dhcp-range={first},{last},{network.netmask},{site.lease_time}"]
        if site.router is not None:
            lines += [f"dhcp-option=option:router,{site.router}"]
    lines += [
        "",
        "# Which clients are already running iPXE (user class 'iPXE' or iPXE's option 175).",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:ipxe,175",
        "# The client architecture, DHCP option 93.",
        "dhcp-match=set:bios,option:client-arch,0",
        "dhcp-match=set:efi-x86_64,option:client-arch,7",
        "dhcp-match=set:efi-x86_64,option:client-arch,9",
        "dhcp-match=set:efi-arm64,option:client-arch,11",
        "",
        "# First stage: plain PXE ROMs get iPXE over TFTP.",
        "enable-tftp",
        f"tftp-root={site.tftp_root}",
        "tftp-secure",
    ]
    if site.mode == "proxy":
        lines += [
            "pxe-prompt=Neocloud,0",
            f'pxe-service=tag:!ipxe,x86PC,"Neocloud: chain-load iPXE",{BIOS_LOADER}',
            f'pxe-service=tag:!ipxe,x86-64_EFI,"Neocloud: chain-load iPXE",{UEFI_X64_LOADER}',
            f'pxe-service=tag:!ipxe,BC_EFI,"Neocloud: chain-load iPXE",{UEFI_X64_LOADER}',
            f'pxe-service=tag:!ipxe,ARM64_EFI,"Neocloud: chain-load iPXE",{UEFI_ARM64_LOADER}',
        ]
    lines += [
        f"dhcp-boot=tag:!ipxe,tag:bios,{BIOS_LOADER}",
        f"dhcp-boot=tag:!ipxe,tag:efi-x86_64,{UEFI_X64_LOADER}",
        f"dhcp-boot=tag:!ipxe,tag:efi-arm64,{UEFI_ARM64_LOADER}",
        "",
        "# Second stage: iPXE fetches this node's script from the boot service (MAC in hyphen form).",
        f"dhcp-boot=tag:ipxe,{boot}{CHAIN_PATH}",
    ]
    if site.hosts:
        lines += ["", "# Known nodes, by boot NIC MAC."]
    for host in site.hosts:
        try:
            mac = normalize_mac(host.mac)
        except IpxeScriptError as exc:
            raise DnsmasqConfigError(f"host {host.name}: {exc}")
        if host.address and site.mode == "dhcp":
            lines.append(f"dhcp-host={mac},{host.address},{host.name}")
        else:
            lines.append(f"dhcp-host={mac},{host.name}")
    return "\n".join(lines) + "\n"


def write_dnsmasq_config(site: DnsmasqSite, path: str | Path) -> Path:
    """Render and write the configuration (atomically). Idempotent.

    :raises DnsmasqConfigError: as ``render_dnsmasq_config``.
    """
    target = Path(path)
    text = render_dnsmasq_config(site)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return target


def check_dnsmasq_config(path: str | Path) -> None:
    """Run ``dnsmasq --test`` on a configuration file (starts no server). Idempotent.

    :raises DnsmasqConfigError: dnsmasq is not installed or rejected the file (with its message).
    """
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    if not Path(binary).exists():
        raise DnsmasqConfigError("dnsmasq is not installed")
    proc = subprocess.run(
        [binary, "--test", "--conf-file=" + str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or "syntax check OK" not in output:
        raise DnsmasqConfigError(f"dnsmasq rejected {path}: {output[:500]}")
