"""Network namespaces of the lab: one per node, reached from the host over its own veth pair.

Design ("unnumbered point-to-point", as container networks such as Calico do it):

* the node's namespace holds ``eth0`` with only the node's address as a /32 (``spec.ssh_address``,
  e.g. 198.18.0.2) plus ``lo``; inside, 198.18.0.1 is an on-link neighbour and the default gateway;
* the host end of the pair carries the gateway address 198.18.0.1/32 (the same address on every host
  end: Linux allows it, and a /32 adds no subnet route) and one host route
  ``<node>/32 dev <host end> src 198.18.0.1``.

Why not a shared bridge or /31 pairs: a bridge is one more shared object whose life outlives every node
(who creates it, who may delete it while a test or another lab still uses it) and /31 pairs burn a
second address per node that must never collide with another node's address. Here a node's network is
exactly two interfaces and one route that are created and destroyed with it; nodes do not depend on
each other, 200 nodes are 200 independent veth pairs, and two labs (or tests using 198.19.x.y) can run
side by side as long as their node addresses differ. Nodes cannot reach each other (the host does not
forward), which the lab does not need: only the control plane on the host talks to them.

Only addresses inside 198.18.0.0/15 are ever configured; the host's default route and other
interfaces are never touched. Everything runs ``ip`` from iproute2 and needs root.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lab.spec import LabNodeSpec
from provisioner.errors import DriverError

T = TypeVar("T")

LAB_NETWORK = ipaddress.ip_network("198.18.0.0/15")
GATEWAY_ADDRESS = "198.18.0.1"
NODE_INTERFACE = "eth0"  # the node's end of the pair, inside its namespace
_IFNAMSIZ = 15  # Linux interface names are at most 15 bytes
NETNS_DIR = Path("/run/netns")
_IP_TIMEOUT = 20.0


class LabNetworkError(DriverError):
    """Creating or removing a lab node's network failed (``ip`` refused, bad address)."""

    code = "lab_network_error"
    retryable = False


def _ip(*args: str, namespace: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip"]
    if namespace is not None:
        cmd += ["-n", namespace]
    cmd += list(args)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_IP_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise LabNetworkError(f"'{' '.join(cmd)}' did not finish within {_IP_TIMEOUT:.0f} s")
    if check and proc.returncode != 0:
        raise LabNetworkError(f"'{' '.join(cmd)}' failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def host_interface_name(netns: str) -> str:
    """The host end of a namespace's veth pair: the namespace's own name when it fits in 15 bytes.

    Longer names are shortened to their first 6 characters plus a hash, so the name stays stable,
    unique and still starts with the same short prefix (``teardown_all`` finds links by prefix).
    """
    if len(netns) <= _IFNAMSIZ:
        return netns
    digest = hashlib.sha1(netns.encode(), usedforsecurity=False).hexdigest()
    return netns[:6] + digest[: _IFNAMSIZ - 6]


def _check_address(address: str, *, gateway: bool = False) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        raise LabNetworkError(f"lab address {address!r} is not an IPv4 address")
    if ip not in LAB_NETWORK:
        raise LabNetworkError(f"lab address {address} is outside {LAB_NETWORK}")
    if not gateway and str(ip) == GATEWAY_ADDRESS:
        raise LabNetworkError(f"lab address {address} is the host's gateway address, not a node address")
    return ip


def _check_name(netns: str) -> None:
    if not netns or "/" in netns or netns.startswith(".") or len(netns) > 64:
        raise LabNetworkError(f"network namespace name {netns!r} is not usable")


def namespace_exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def list_namespaces() -> list[str]:
    if not NETNS_DIR.is_dir():
        return []
    return sorted(p.name for p in NETNS_DIR.iterdir())


def create_namespace(netns: str, address: str, gateway: str = GATEWAY_ADDRESS) -> None:
    """Create (or complete) the namespace ``netns`` with ``address`` on its eth0, reachable from the host.

    Idempotent and convergent: every piece (namespace, loopback, veth pair, addresses, routes) is
    created only when missing or set with ``replace``, so calling it again, or after a crash half-way,
    leaves the same result. Raises LabNetworkError when ``ip`` fails or the address is outside
    198.18.0.0/15.
    """
    _check_name(netns)
    ip = _check_address(address)
    _check_address(gateway, gateway=True)
    host_if = host_interface_name(netns)
    if not namespace_exists(netns):
        proc = _ip("netns", "add", netns, check=False)
        # Another caller may have created it in between: only a still-missing namespace is an error.
        if proc.returncode != 0 and not namespace_exists(netns):
            raise LabNetworkError(f"could not create network namespace {netns}: {proc.stderr.strip()}")
    _ip("link", "set", "lo", "up", namespace=netns)
    if _ip("link", "show", "dev", host_if, check=False).returncode != 0:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", NODE_INTERFACE, "netns", netns)
    configure_node_end(netns, str(ip), gateway)
    _ip("addr", "replace", f"{gateway}/32", "dev", host_if)
    _ip("link", "set", host_if, "up")
    _ip("route", "replace", f"{ip}/32", "dev", host_if, "src", gateway)


def configure_node_end(netns: str, address: str, gateway: str = GATEWAY_ADDRESS) -> None:
    """Inside ``netns``: ``address``/32 on eth0 (up), ``gateway`` on link and the default route via it.
    Idempotent. Raises LabNetworkError when ``ip`` fails or an address is outside 198.18.0.0/15."""
    ip = _check_address(address)
    _check_address(gateway, gateway=True)
    _ip("addr", "replace", f"{ip}/32", "dev", NODE_INTERFACE, namespace=netns)
    _ip("link", "set", NODE_INTERFACE, "up", namespace=netns)
    _ip("route", "replace", f"{gateway}/32", "dev", NODE_INTERFACE, "scope", "link", namespace=netns)
    _ip("route", "replace", "default", "via", gateway, "dev", NODE_INTERFACE, "src", str(ip), namespace=netns)


_CLONE_NEWNET = 0x40000000


def call_in_namespace(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run in network namespace ``netns``, on a thread of its own: a network namespace belongs to a
    thread (setns(2)), so this process's other threads stay where they are, and a socket made by ``fn`` keeps
    the namespace it was made in after the thread ends. Raises LabNetworkError when the namespace cannot be
    entered; whatever ``fn`` raises is raised here."""
    _check_name(netns)
    outcome: dict[str, Any] = {}

    def enter_and_call() -> None:
        try:
            with open(NETNS_DIR / netns) as handle:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise LabNetworkError(f"cannot enter network namespace {netns}: {os.strerror(err)}")
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=enter_and_call, name=f"in-{netns}", daemon=True)
    worker.start()
    worker.join()
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, FileNotFoundError):
            raise LabNetworkError(f"network namespace {netns} does not exist")
        raise error
    return outcome["value"]


def namespace_pids(netns: str) -> list[int]:
    """Processes running inside the namespace (the node's sshd, anything it spawned)."""
    if not namespace_exists(netns):
        return []
    proc = _ip("netns", "pids", netns, check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def kill_namespace_processes(netns: str, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, every process inside the namespace. Idempotent."""
    # A namespace stays alive (with its veth and address) while a process is inside it, so the
    # processes the lab started there must go first. Only processes inside that namespace are hit.
    pids = namespace_pids(netns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.05)
        if not pids:
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours still answers kill(0): reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def destroy_namespace(netns: str) -> None:
    """Remove the namespace, the processes inside it, its veth pair and its host route.

    Idempotent: a missing namespace or link is not an error. Raises LabNetworkError only when ``ip``
    refuses to delete something that exists.
    """
    _check_name(netns)
    kill_namespace_processes(netns)
    host_if = host_interface_name(netns)
    # Deleting the host end deletes the pair and the host route with it.
    if _ip("link", "show", "dev", host_if, check=False).returncode == 0:
        proc = _ip("link", "del", host_if, check=False)
        if proc.returncode != 0 and _ip("link", "show", "dev", host_if, check=False).returncode == 0:
            raise LabNetworkError(f"could not delete link {host_if}: {proc.stderr.strip()}")
    if namespace_exists(netns):
        proc = _ip("netns", "del", netns, check=False)
        if proc.returncode != 0 and namespace_exists(netns):
            raise LabNetworkError(f"could not delete network namespace {netns}: {proc.stderr.strip()}")


def create_node_network(spec: LabNodeSpec) -> None:
    """``create_namespace`` for a lab node (``spec.netns``, ``spec.ssh_address``). Idempotent."""
    if not spec.netns or not spec.ssh_address:
        raise LabNetworkError(f"lab node {spec.name} has no network namespace or SSH address in its spec")
    if spec.switch_port:  # the switched lab: eth0 is cabled to the lab switch, not to the host
        from lab import switched

        switched.connect_node(spec)
        return
    create_namespace(spec.netns, spec.ssh_address)


def boot_node_network(spec: LabNodeSpec) -> None:
    """A node's network as a fresh boot finds it (the firmware's PXE boot, the OS's boot): ``create_node_network``,
    and for a switched node its eth0 back to the provisioning address alone (lab.switched.boot_network; the
    port's VLAN is the switch's business). Idempotent.

    :raises LabNetworkError: ``ip`` failed, or the node's switch is not running.
    """
    if spec.switch_port:
        from lab import switched

        if not spec.netns or not spec.ssh_address:
            raise LabNetworkError(f"lab node {spec.name} has no network namespace or SSH address in its spec")
        switched.boot_network(spec)
        return
    create_node_network(spec)


def destroy_node_network(spec: LabNodeSpec) -> None:
    """``destroy_namespace`` for a lab node. Idempotent."""
    if spec.netns:
        destroy_namespace(spec.netns)


def _host_links() -> list[str]:
    proc = _ip("-o", "link", "show", "type", "veth", check=False)
    names = []
    for line in proc.stdout.splitlines():
        # "12: nclab-3@if2: <BROADCAST,...": the name ends at '@' (peer index) or ':'.
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            names.append(parts[1].split("@", 1)[0])
    return names


def teardown_all(prefix: str = "nclab-") -> list[str]:
    """Remove every namespace whose name starts with ``prefix`` and every leftover host veth so named.

    Returns the namespaces removed. Idempotent. ``prefix`` must be at least 3 characters so a slip
    cannot remove unrelated namespaces.
    """
    if len(prefix) < 3:
        raise LabNetworkError(f"teardown prefix {prefix!r} is too short to be safe")
    removed = []
    for netns in list_namespaces():
        if netns.startswith(prefix):
            destroy_namespace(netns)
            removed.append(netns)
    for link in _host_links():
        if link.startswith(prefix):
            _ip("link", "del", link, check=False)
    return removed
