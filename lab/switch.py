"""The lab switch: a Linux switch in a network namespace of its own, driven over SSH like a real one.

The kernel of these machines has no VLAN-aware bridge (``vlan_filtering 1`` answers "Operation not
supported") and no 802.1Q devices, so the switch runs in *traditional bridge mode*, as Cumulus Linux's
traditional bridges do: every VLAN is a Linux bridge of its own (``br<vid>``) and a switch port is a veth
end (``swp<N>``) whose access VLAN is the bridge it belongs to. A port that belongs to no bridge forwards
nothing. Frames never cross from one bridge to another, which is the isolation a VLAN gives; trunks (several
tagged VLANs on one port) cannot be modelled without 802.1Q devices, so the lab has none.

Inside the namespace ``ncsw-<name>``:

* ``eth0``, the management interface: the switch's management address (in 198.18.0.0/15) reached from the
  host over its own veth pair, exactly as a lab node is (lab.netns.create_namespace);
* a real OpenSSH sshd on that address, under a UTS namespace whose host name is the switch's name, letting
  ``root`` in with a key made for this switch (``LabSwitch.private_key``, stored in the switch's directory);
  the driver's shell commands (``ip link set swp3 master br100``, ``bridge link``) run there and see only
  the switch's interfaces. ``SetEnv NEOCLOUD_SWITCH_CONFIG`` names the file ``save()`` writes;
* ``lldpd`` (Debian's), when installed, announcing the switch's name as its system name and each port's
  name as its port id (subtype ifname) every second on every ``swp*`` port;
* ``swp<N>`` ports, each one end of a veth pair whose other end sits in a lab server's namespace.

Everything the switch is lives in that namespace and in its directory: ``stop_switch`` kills what runs in
the namespace and deletes it, which deletes every port's veth pair with it (the servers' ends included).
Every command is ``ip`` from iproute2 and needs root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

from lab import netns, sshd
from provisioner.errors import DriverError

NETNS_PREFIX = "ncsw-"
MANAGEMENT_INTERFACE = "eth0"
SSH_USER = "root"
SSH_PORT = 22
CONFIG_ENV = "NEOCLOUD_SWITCH_CONFIG"
LLDPD = "/usr/sbin/lldpd"
LLDPCLI = "/usr/sbin/lldpcli"
_PORT = re.compile(r"\Aswp[0-9]{1,4}\Z")
_NAME = re.compile(r"\A[a-z0-9][a-z0-9-]{0,9}\Z")  # ncsw-<name> must stay a short namespace name
_IP_TIMEOUT = 20.0
# The switch's routed side (a leaf that routes): the public uplink towards the host (published addresses
# arrive there and are DNAT'ed to tenant servers) and the host's uplink into the provisioning VLAN's bridge.
PUBLIC_UPLINK = "pub0"
HOST_UPLINK = "host0"
NFT = "/usr/sbin/nft"
# The base ruleset, applied when the switch starts (the driver only fills the map ``publish``):
# - forward: nothing is routed between VLANs, to the provisioning or management networks or to the host;
#   only connections DNAT'ed from the public uplink, and their replies, cross the switch;
# - input: the management interface reaches the switch (its sshd listens only there); from a VLAN's bridge
#   or the public uplink only a ping of the address on that very interface (the VLAN's own gateway) is
#   answered: fib ``daddr . iif type local`` holds only for an address configured on the arriving interface.
BASE_RULESET = f"""table inet neocloud
delete table inet neocloud
table inet neocloud {{
  map publish {{
    type ipv4_addr : ipv4_addr
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{PUBLIC_UPLINK}" dnat ip to ip daddr map @publish
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iif "lo" accept
    ct state established,related accept
    iifname "{MANAGEMENT_INTERFACE}" accept
    iifname {{ "{PUBLIC_UPLINK}", "br*" }} fib daddr . iif type local icmp type echo-request accept
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "{PUBLIC_UPLINK}" ct status dnat accept
  }}
}}
"""
# Routing on, ARP answered only for an address of the asking interface, and bridged frames kept away from
# the IP hooks (br_netfilter, when loaded, would pass frames within a VLAN through the forward chain).
_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.bridge.bridge-nf-call-iptables": "0",
    "net.bridge.bridge-nf-call-arptables": "0",
}
# lldpcli is set-uid _lldpd: its control socket and the configuration lldpd hands it must sit where that
# user can reach them (a test's temporary directory is not), so they live here, one pair per namespace.
LLDP_RUN_DIR = Path("/run/neocloud-lab-lldp")


class LabSwitchError(DriverError):
    """The lab switch could not be built, started or torn down."""

    code = "lab_switch_error"
    retryable = False


@dataclasses.dataclass(frozen=True)
class LabSwitch:
    """A running lab switch: where the driver reaches it and with which key."""

    name: str
    address: str
    directory: Path
    private_key: str = dataclasses.field(repr=False)
    lldp: bool = False

    @property
    def netns(self) -> str:
        return NETNS_PREFIX + self.name

    @property
    def sshd_log(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def saved_config(self) -> Path:
        return self.directory / "saved.conf"

    @property
    def lldp_socket(self) -> Path:
        return LLDP_RUN_DIR / f"{self.netns}.socket"

    def ssh_sessions(self) -> int:
        """How many SSH logins the switch's sshd has accepted so far (read from its log)."""
        try:
            return self.sshd_log.read_text(errors="replace").count("Accepted publickey for ")
        except OSError:
            return 0


def _run(
    cmd: list[str], *, check: bool = True, timeout: float = _IP_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LabSwitchError(f"'{' '.join(cmd)}' did not finish within {timeout:.0f} s")
    if check and proc.returncode != 0:
        raise LabSwitchError(f"'{' '.join(cmd)}' failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def _ip(namespace: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", "-n", namespace, *args], check=check)


def _host_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check=check)


def _check_port(port: str) -> None:
    if not _PORT.match(port):
        raise LabSwitchError(f"lab switch port {port!r} is not a port name such as swp1")


def _check_vlan(vlan: int) -> None:
    if not 1 <= vlan <= 4094:
        raise LabSwitchError(f"VLAN {vlan} is outside 1-4094")


def _render_sshd_config(switch: LabSwitch, host_key: Path) -> str:
    d = switch.directory
    lines = [
        f"ListenAddress {switch.address}:{SSH_PORT}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        f"PidFile {d / 'sshd.pid'}",
        f"SetEnv {CONFIG_ENV}={switch.saved_config}",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "UseDNS no",
        # The benchmark logs in once per port: let many handshakes wait rather than be dropped.
        "MaxStartups 100:30:200",
        "LoginGraceTime 30",
        "LogLevel INFO",
    ]
    return "\n".join(lines) + "\n"


def _keygen(path: Path, comment: str) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".pub").unlink(missing_ok=True)
    _run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(path), "-C", comment])


def _in_switch(switch_name: str, argv: list[str]) -> list[str]:
    # Enter the switch's network namespace, then a UTS namespace named after the switch, then exec argv.
    return [
        "ip", "netns", "exec", NETNS_PREFIX + switch_name,
        "unshare", "--uts", "sh", "-c", 'hostname "$1" || exit 1; shift; exec "$@"', "sh", switch_name,
        *argv,
    ]  # fmt: skip


def lldpd_available() -> bool:
    return Path(LLDPD).exists() and Path(LLDPCLI).exists()


def start_switch(
    name: str, address: str, directory: Path, *, lldp: bool = True, timeout: float = 15.0
) -> LabSwitch:
    """Build the switch ``name`` (namespace ``ncsw-<name>``, management address ``address`` in 198.18.0.0/15,
    state in ``directory``) and start its sshd and, when ``lldp`` and lldpd is installed, its lldpd.

    A switch of that name already present is torn down first (its ports go with it). Raises LabSwitchError
    when a piece cannot be made or sshd does not answer within ``timeout`` seconds, and
    lab.netns.LabNetworkError for a bad address.
    """
    if not _NAME.match(name):
        raise LabSwitchError(f"lab switch name {name!r}: use 1-10 lower-case letters, digits or '-'")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    stop_switch_named(name)
    netns.create_namespace(NETNS_PREFIX + name, address)
    _write_name_files(name, address)
    login_key = directory / "login_key"
    host_key = directory / "ssh_host_ed25519_key"
    _keygen(login_key, f"neocloud-lab-switch-{name}")
    _keygen(host_key, f"{name}-host")
    (directory / "authorized_keys").write_text((directory / "login_key.pub").read_text())
    switch = LabSwitch(
        name=name,
        address=address,
        directory=directory,
        private_key=login_key.read_text(),
        lldp=lldp and lldpd_available(),
    )
    config = directory / "sshd_config"
    config.write_text(_render_sshd_config(switch, host_key))
    sshd.check_config(config)
    _route_in_namespace(switch)
    switch.sshd_log.write_text("")
    proc = subprocess.Popen(
        _in_switch(name, [sshd.SSHD, "-D", "-f", str(config), "-E", str(switch.sshd_log)]),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    _launched.append(proc)
    if not sshd.wait_for_port(address, SSH_PORT, timeout):
        tail = switch.sshd_log.read_text(errors="replace").strip()[-500:]
        stop_switch(switch)
        raise LabSwitchError(f"sshd of lab switch {name} did not answer on {address}:{SSH_PORT}: {tail}")
    if switch.lldp:
        try:
            _start_lldpd(switch, timeout)
        except LabSwitchError:
            stop_switch(switch)
            raise
    return switch


def _name_files(name: str) -> Path:
    return Path("/etc/netns") / (NETNS_PREFIX + name)


def _write_name_files(name: str, address: str) -> None:
    # `ip netns exec` bind-mounts /etc/netns/<namespace>/* over /etc: the switch's own hosts file names it and
    # an empty resolv.conf asks no name server, so lldpd's look-up of its host name answers at once (with the
    # host's files it waited for a name server out of the namespace's reach: 20 s before the first frame).
    directory = _name_files(name)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(f"127.0.0.1 localhost\n{address} {name}\n")
    (directory / "resolv.conf").write_text("")


def _route_in_namespace(switch: LabSwitch) -> None:
    for key, value in _SYSCTLS.items():
        path = Path("/proc/sys") / key.replace(".", "/")
        if key.startswith("net.bridge.") and not path.exists():
            continue  # no br_netfilter: bridged frames never meet the IP hooks anyway
        _run(["ip", "netns", "exec", switch.netns, "sysctl", "-qw", f"{key}={value}"])
    rules = switch.directory / "base.nft"
    rules.write_text(BASE_RULESET)
    _run(["ip", "netns", "exec", switch.netns, NFT, "-f", str(rules)])


def nft_ruleset(switch: LabSwitch) -> str:
    """The switch's own ``nft list ruleset``."""
    return _run(["ip", "netns", "exec", switch.netns, NFT, "list", "ruleset"]).stdout


def published_on_switch(switch: LabSwitch) -> dict[str, str]:
    """Public -> private address as the switch's nftables map holds it (read from the host, not the driver)."""
    argv = [NFT, "-j", "list", "map", "inet", "neocloud", "publish"]
    shown = _run(["ip", "netns", "exec", switch.netns, *argv])
    for item in json.loads(shown.stdout).get("nftables", []):
        if "map" in item:
            return {str(k): str(v) for k, v in item["map"].get("elem", [])}
    return {}


def gateways_on_switch(switch: LabSwitch) -> dict[int, str]:
    """VLAN -> gateway address with prefix, as ``ip -4 addr`` shows the switch's bridges."""
    shown = _ip(switch.netns, "-4", "-j", "addr", "show")
    gateways = {}
    for link in json.loads(shown.stdout or "[]"):
        name = link.get("ifname", "")
        for info in link.get("addr_info", []):
            if re.fullmatch(r"br[0-9]{1,4}", name) and info.get("family") == "inet":
                gateways[int(name[2:])] = f"{info['local']}/{info['prefixlen']}"
    return gateways


def host_link_name(switch: LabSwitch, role: str) -> str:
    """The host end of one of the switch's uplinks (``role``: "prov" or "pub"), at most 15 bytes."""
    return netns.host_interface_name(f"{switch.netns}-{role}")


def add_host_uplink(switch: LabSwitch, vlan: int, host_address: str = netns.GATEWAY_ADDRESS) -> str:
    """Cable the host into VLAN ``vlan`` (the provisioning network): a veth pair, ``host0`` on the VLAN's
    bridge in the switch, the host end carrying ``host_address``/32 (the boot service and image server
    listen there). The host reaches each server through ``route_host_to(switch, address)``. Idempotent;
    returns the host end's name."""
    host_if = host_link_name(switch, "prov")
    if _run(["ip", "link", "show", "dev", host_if], check=False).returncode != 0:
        _host_ip("link", "add", host_if, "type", "veth", "peer", "name", HOST_UPLINK, "netns", switch.netns)
    _ip(switch.netns, "link", "set", HOST_UPLINK, "master", ensure_vlan(switch, vlan))
    _ip(switch.netns, "link", "set", HOST_UPLINK, "up")
    _run(["ip", "addr", "replace", f"{host_address}/32", "dev", host_if])
    _run(["ip", "link", "set", host_if, "up"])
    return host_if


def route_host_to(switch: LabSwitch, address: str, host_address: str = netns.GATEWAY_ADDRESS) -> None:
    """The host reaches ``address`` (a server on the provisioning VLAN) over the host uplink. Idempotent."""
    _host_ip("route", "replace", f"{address}/32", "dev", host_link_name(switch, "prov"), "src", host_address)


def add_public_uplink(
    switch: LabSwitch, host_address: str, switch_address: str, prefix: int, public_network: str
) -> str:
    """Cable the switch's public uplink ``pub0`` to the host: ``switch_address``/``prefix`` in the switch,
    ``host_address`` on the host end, the switch's default route via the host (so replies to published
    connections go back out there) and the host's route to ``public_network`` via the switch. Idempotent;
    returns the host end's name."""
    host_if = host_link_name(switch, "pub")
    if _run(["ip", "link", "show", "dev", host_if], check=False).returncode != 0:
        _host_ip("link", "add", host_if, "type", "veth", "peer", "name", PUBLIC_UPLINK, "netns", switch.netns)
    _ip(switch.netns, "addr", "replace", f"{switch_address}/{prefix}", "dev", PUBLIC_UPLINK)
    _ip(switch.netns, "link", "set", PUBLIC_UPLINK, "up")
    _run(["ip", "addr", "replace", f"{host_address}/{prefix}", "dev", host_if])
    _run(["ip", "link", "set", host_if, "up"])
    _ip(switch.netns, "route", "replace", "default", "via", host_address, "dev", PUBLIC_UPLINK)
    _run(["ip", "route", "replace", public_network, "via", switch_address, "dev", host_if])
    return host_if


# Processes started here, kept so they are reaped when they end.
_launched: list[subprocess.Popen[bytes]] = []


def _start_lldpd(switch: LabSwitch, timeout: float) -> None:
    # The configuration lldpd's own lldpcli applies at start (-O): the switch's name as system name, port id
    # = the port's name (what a server reads as "port" and compares with its recorded cabling), announced
    # every second so that a port made a moment ago is seen at once. lldpcli is set-uid _lldpd: the file and
    # its directory must be readable by it.
    LLDP_RUN_DIR.mkdir(mode=0o755, exist_ok=True)
    config = LLDP_RUN_DIR / f"{switch.netns}.conf"
    config.write_text(
        f"configure system hostname {switch.name}\n"
        "configure lldp portidsubtype ifname\n"
        "configure lldp tx-interval 1\n"
    )
    os.chmod(config, 0o644)
    log = (switch.directory / "lldpd.log").open("w")
    with log:
        proc = subprocess.Popen(
            # -d: stay in the foreground; -I: only the switch ports; -u: a control socket of this switch's own
            _in_switch(
                switch.name,
                [LLDPD, "-d", "-I", "swp*", "-u", str(switch.lldp_socket), "-O", str(config)],
            ),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    _launched.append(proc)
    deadline = time.monotonic() + timeout
    while not switch.lldp_socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise LabSwitchError(f"lldpd of lab switch {switch.name} did not start (see {log.name})")
        time.sleep(0.05)


def read_lldp(server_netns: str, interface: str = "eth1", timeout: float = 20.0) -> tuple[str, str] | None:
    """What a server sees on ``interface`` by LLDP: (the switch's system name, the port id), or None when no
    announcement arrived within ``timeout`` seconds. Runs a receive-only lldpd in ``server_netns`` for the
    time it takes and stops it."""
    LLDP_RUN_DIR.mkdir(mode=0o755, exist_ok=True)
    sock = LLDP_RUN_DIR / f"{server_netns}.socket"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", server_netns, LLDPD, "-d", "-r", "-I", interface, "-u", str(sock)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.3)
            shown = _run([LLDPCLI, "-u", str(sock), "show", "neighbors", "-f", "json"], check=False)
            try:
                interfaces = json.loads(shown.stdout or "{}").get("lldp", {}).get("interface") or {}
            except json.JSONDecodeError:
                continue
            neighbour = interfaces.get(interface) if isinstance(interfaces, dict) else None
            if neighbour:
                return next(iter(neighbour["chassis"])), str(neighbour["port"]["id"]["value"])
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for path in (sock, sock.with_name(sock.name + ".lock")):
            path.unlink(missing_ok=True)


def create_server_namespace(name: str) -> None:
    """A bare namespace standing for a lab server's NIC side (loopback up). Idempotent."""
    if not netns.namespace_exists(name):
        _run(["ip", "netns", "add", name])
    _ip(name, "link", "set", "lo", "up")


def ensure_vlan(switch: LabSwitch, vlan: int) -> str:
    """Create the VLAN's bridge ``br<vlan>`` (up) when missing; return its name. Idempotent."""
    _check_vlan(vlan)
    bridge = f"br{vlan}"
    if _ip(switch.netns, "link", "show", "dev", bridge, check=False).returncode != 0:
        _ip(switch.netns, "link", "add", bridge, "type", "bridge")
    _ip(switch.netns, "link", "set", bridge, "up")
    return bridge


def add_port(
    switch: LabSwitch,
    port: str,
    peer_netns: str,
    *,
    peer_interface: str = "eth1",
    peer_address: str = "",
    vlan: int | None = None,
) -> None:
    """Cable a server: a veth pair with ``port`` in the switch and ``peer_interface`` in ``peer_netns``
    (both up, ``peer_address`` such as ``198.19.200.1/24`` on the server's end when given), the port on
    ``vlan``'s bridge when given, else on none.

    Raises LabSwitchError when the port already exists or ``ip`` refuses.
    """
    _check_port(port)
    if _ip(switch.netns, "link", "show", "dev", port, check=False).returncode == 0:
        raise LabSwitchError(f"lab switch {switch.name} already has a port {port}")
    _ip(
        switch.netns, "link", "add", port, "type", "veth", "peer", "name", peer_interface, "netns", peer_netns
    )
    if vlan is not None:
        _ip(switch.netns, "link", "set", port, "master", ensure_vlan(switch, vlan))
    _ip(switch.netns, "link", "set", port, "up")
    if peer_address:
        _ip(peer_netns, "addr", "replace", peer_address, "dev", peer_interface)
    _ip(peer_netns, "link", "set", peer_interface, "up")


_TUNSETIFF = 0x400454CA  # <linux/if_tun.h>
_TUNSETPERSIST = 0x400454CB
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000


def _tap(port: str, persist: bool) -> int:
    """In the calling thread's namespace: the tap ``port`` (made if missing), opened; ``persist``: made to
    outlive this descriptor, and closed."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", port.encode(), _IFF_TAP | _IFF_NO_PI))
        if persist:
            fcntl.ioctl(fd, _TUNSETPERSIST, 1)
    except OSError:
        os.close(fd)
        raise
    if persist:
        os.close(fd)
        return -1
    return fd


def add_tap_port(switch: LabSwitch, port: str, vlan: int) -> None:
    """Cable an emulated computer: a persistent tap device ``port`` in the switch, on ``vlan``'s bridge, up;
    QEMU gets its other side with ``open_tap_port`` (``-netdev tap,fd=``). Idempotent: an existing port keeps
    its VLAN.

    :raises LabSwitchError: the tap could not be made (no /dev/net/tun) or ``ip`` refused.
    """
    _check_port(port)
    if _ip(switch.netns, "link", "show", "dev", port, check=False).returncode == 0:
        return
    try:
        netns.call_in_namespace(switch.netns, lambda: _tap(port, persist=True))
    except OSError as exc:
        raise LabSwitchError(f"cannot make tap {port} in lab switch {switch.name}: {exc}") from None
    _ip(switch.netns, "link", "set", port, "master", ensure_vlan(switch, vlan))
    _ip(switch.netns, "link", "set", port, "up")


def open_tap_port(switch_name: str, port: str) -> int:
    """A descriptor on the tap ``port`` of lab switch ``switch_name`` (made by ``add_tap_port``), for QEMU's
    ``-netdev tap,fd=`` (close-on-exec: hand it over with ``pass_fds``). The caller closes it.

    :raises LabSwitchError: the switch or the port is missing.
    """
    _check_port(port)
    namespace = NETNS_PREFIX + switch_name
    if _ip(namespace, "link", "show", "dev", port, check=False).returncode != 0:
        raise LabSwitchError(f"lab switch {switch_name} has no port {port}")
    try:
        return netns.call_in_namespace(namespace, lambda: _tap(port, persist=False))
    except OSError as exc:
        raise LabSwitchError(f"cannot open tap {port} of lab switch {switch_name}: {exc}") from None


def set_port_vlan(switch: LabSwitch, port: str, vlan: int | None) -> None:
    """Put ``port`` on ``vlan``'s bridge, or on none (``None``), from the host, without SSH: how a test sets
    the scene before the driver acts. Idempotent."""
    _check_port(port)
    if vlan is None:
        _ip(switch.netns, "link", "set", port, "nomaster")
    else:
        _ip(switch.netns, "link", "set", port, "master", ensure_vlan(switch, vlan))


def bridge_link(switch: LabSwitch) -> dict[str, str]:
    """Port -> bridge as the switch's own ``bridge link`` shows it (ports on no bridge are absent)."""
    proc = _run(["ip", "netns", "exec", switch.netns, "bridge", "-o", "link", "show"])
    ports = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"\d+: (\S+?)(@\S+)?: .* master (\S+)", line)
        if match:
            ports[match.group(1)] = match.group(3)
    return ports


def namespaces() -> list[str]:
    """The lab switches' namespaces present now."""
    return [n for n in netns.list_namespaces() if n.startswith(NETNS_PREFIX)]


def stop_switch(switch: LabSwitch) -> None:
    """Stop the switch's processes and delete its namespace, ports (both ends) and host veth. Idempotent."""
    stop_switch_named(switch.name)


def stop_switch_named(name: str) -> None:
    """``stop_switch`` by name (for a switch left by an earlier run). Idempotent."""
    namespace = NETNS_PREFIX + name
    # The kernel frees a deleted namespace's interfaces later, in the background: delete the ports' veth
    # pairs now, so that no server namespace still holds a cable to nowhere when this returns.
    if netns.namespace_exists(namespace):
        for line in _ip(namespace, "-o", "link", "show", check=False).stdout.splitlines():
            parts = line.split(": ", 2)
            port = parts[1].split("@", 1)[0] if len(parts) >= 2 else ""
            if _PORT.match(port) or port in (HOST_UPLINK, PUBLIC_UPLINK):
                _ip(namespace, "link", "del", port, check=False)
    # sshd and lldpd run in sessions of their own: end their groups first so their children go too.
    for pid in netns.namespace_pids(namespace):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    netns.destroy_namespace(namespace)
    shutil.rmtree(_name_files(name), ignore_errors=True)
    for suffix in (".socket", ".socket.lock", ".conf"):
        (LLDP_RUN_DIR / f"{namespace}{suffix}").unlink(missing_ok=True)
    for proc in list(_launched):
        if proc.poll() is not None:
            _launched.remove(proc)


def destroy_server_namespace(name: str) -> None:
    """Delete a server namespace made by ``create_server_namespace`` (and whatever runs in it). Idempotent."""
    netns.kill_namespace_processes(name)
    if netns.namespace_exists(name):
        _run(["ip", "netns", "del", name], check=False)


def teardown_all() -> list[str]:
    """Stop every lab switch (namespaces ``ncsw-*``); return their names. Idempotent."""
    names = [n.removeprefix(NETNS_PREFIX) for n in namespaces()]
    for name in names:
        stop_switch_named(name)
    return names


def tools_available() -> bool:
    return (
        sshd.sshd_available()
        and shutil.which("bridge") is not None
        and shutil.which("ssh-keygen") is not None
    )
