"""Switch drivers: put a server's switch port on a VLAN and read it back, over SSH with netmiko.

``SwitchDriver`` is what the engine needs from a switch (Ironic's networking-generic-switch shape): a port's
access VLAN set and read back, trunk VLANs added and removed, the running configuration saved. Ports are
the switch's own names for them (``swp3``, ``Ethernet12``), as the node's cabling records them
(``Node.switch_name`` / ``switch_port``).

Sessions: every public method opens one SSH session for its call and closes it, unless the driver is used
as a context manager (``with driver: ...``), in which case all calls share one session. The batch call
``set_access_vlans({port: vlan, ...})`` checks every port, moves every port and reads every port back in
one session, whatever the number of ports: a login costs far more than a command (bench/switch.py).

``NetmikoSwitchDriver`` holds the SSH side (netmiko's ``ConnectHandler``, errors mapped to typed ones); a
switch OS is a subclass that says which netmiko ``device_type`` it is and what its commands are.
``LinuxSwitchDriver`` is a Linux switch in traditional bridge mode (one bridge ``br<vid>`` per VLAN, a port's
access VLAN being the bridge it belongs to, as Cumulus Linux's traditional bridges): the lab switch
(lab/switch.py). A vendor OS (SONiC, Cumulus NVUE, Arista EOS, Dell OS10) is another small subclass, shipped
when it can be tested against a real peer.

Drivers import no Django and never put a password or key in a message or repr.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import io
import ipaddress
import re
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from provisioner.errors import (
    InvalidRequest,
    SwitchAuthFailed,
    SwitchCommandFailed,
    SwitchUnreachable,
    UnknownSwitchPort,
    UnsupportedOperation,
)

VLAN_MIN, VLAN_MAX = 1, 4094


@dataclasses.dataclass(frozen=True)
class SwitchAccess:
    """How to reach one switch: its management address and login (a password, a private key, or both)."""

    name: str
    driver: str
    address: str
    port: int
    username: str
    password: str = dataclasses.field(default="", repr=False)
    private_key: str = dataclasses.field(default="", repr=False)
    timeout: float = 10.0

    def __repr__(self) -> str:  # never show a secret, even in tracebacks
        return (
            f"SwitchAccess(name={self.name!r}, driver={self.driver!r}, address={self.address!r}, "
            f"port={self.port}, username={self.username!r}, password='***', private_key='***')"
        )

    @property
    def label(self) -> str:
        """A printable name for messages: ``switch <name> (<address>:<port>)`` (no credentials)."""
        return f"switch {self.name} ({self.address}:{self.port})"


@dataclasses.dataclass(frozen=True)
class PortState:
    """A port as the switch reports it: its access VLAN (None: on no VLAN, forwards nothing) and link."""

    port: str
    vlan: int | None
    up: bool


@dataclasses.dataclass(frozen=True)
class RoutingState:
    """What a routing switch holds: each VLAN's gateway (``{1000: "198.19.3.1/24"}``) and each published
    address's private address (``{"198.19.254.5": "198.19.3.2"}``)."""

    gateways: dict[int, str]
    published: dict[str, str]


def check_ipv4(address: str, what: str) -> ipaddress.IPv4Address:
    """:raises InvalidRequest: ``address`` is not an IPv4 address (``what`` names it in the message)."""
    try:
        return ipaddress.IPv4Address(str(address))
    except ValueError:
        raise InvalidRequest(f"{what} {address!r} is not an IPv4 address") from None


def check_gateway_cidr(gateway_cidr: str) -> ipaddress.IPv4Interface:
    """:raises InvalidRequest: ``gateway_cidr`` is not a host address with its prefix (``198.19.3.1/24``)."""
    try:
        interface = ipaddress.IPv4Interface(str(gateway_cidr))
    except ValueError:
        interface = None
    if (
        interface is None
        or "/" not in str(gateway_cidr)
        or interface.network.prefixlen > 30
        or interface.ip in (interface.network.network_address, interface.network.broadcast_address)
    ):
        raise InvalidRequest(
            f"gateway {gateway_cidr!r} is not a host address with its network's prefix, such as 198.19.3.1/24"
        )
    return interface


def check_vlan(vlan: int) -> None:
    """:raises InvalidRequest: ``vlan`` is not a VLAN id (1-4094)."""
    if isinstance(vlan, bool) or not isinstance(vlan, int) or not VLAN_MIN <= vlan <= VLAN_MAX:
        raise InvalidRequest(f"VLAN {vlan!r} is not a VLAN id ({VLAN_MIN}-{VLAN_MAX})")


class SwitchDriver(abc.ABC):
    """One switch's ports. Instances are cheap and hold no session until used."""

    # The shape of a port name on this switch OS; ``validate_port_name`` checks it without I/O.
    PORT_NAME: ClassVar[re.Pattern[str]] = re.compile(r"\A\S{1,64}\Z")

    def __init__(self, access: SwitchAccess) -> None:
        self.access = access
        # Set before ``with driver:``: a session that ends cleanly may stay open for the next one in this
        # process (drivers that log in; see NetmikoSwitchDriver). Others ignore it.
        self.keep_session = False

    @classmethod
    def validate_access(cls, access: SwitchAccess) -> None:
        """Check that the record holds what a login needs (address, port, username, a secret). No I/O.

        :raises InvalidRequest: naming the switch and what is missing.
        """
        if not access.address.strip() or re.search(r"[\s/]", access.address):
            raise InvalidRequest(f"switch {access.name}: {access.address!r} is not a host name or IP address")
        if not 0 < access.port < 65536:
            raise InvalidRequest(f"switch {access.name}: {access.port} is not a TCP port (1-65535)")
        if not access.username:
            raise InvalidRequest(f"switch {access.name}: no login username is recorded")
        if not access.password and not access.private_key:
            raise InvalidRequest(f"switch {access.name}: neither a password nor a private key is recorded")

    @classmethod
    def validate_port_name(cls, switch: str, port: str) -> None:
        """Check the shape of a port name (``swp3`` on Linux) without I/O.

        :raises UnknownSwitchPort: the name cannot be a port of this switch OS.
        """
        if not cls.PORT_NAME.match(port or ""):
            raise UnknownSwitchPort(f"switch {switch} has no port {port!r}: not a port name on this switch")

    def validate(self, ports: str | Iterable[str]) -> None:
        """Check on the switch itself that every port exists, before any work that moves them starts.
        Idempotent; one SSH session; changes nothing.

        :raises UnknownSwitchPort: naming the switch and every missing port.
        :raises SwitchUnreachable, SwitchAuthFailed:
        """
        names = [ports] if isinstance(ports, str) else list(ports)
        self.port_states(names)

    def set_access_vlan(self, port: str, vlan: int) -> None:
        """Make ``vlan`` the port's only (untagged) VLAN. Idempotent. One session.

        :raises UnknownSwitchPort, SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed:
        :raises InvalidRequest: ``vlan`` is not 1-4094.
        """
        self.set_access_vlans({port: vlan})

    @abc.abstractmethod
    def set_access_vlans(self, moves: Mapping[str, int]) -> None:
        """Set many ports' access VLANs in one SSH session: every port is checked first (an unknown one
        changes nothing), then moved, then read back. Idempotent.

        :raises UnknownSwitchPort: some port does not exist (nothing was changed).
        :raises SwitchCommandFailed: the switch refused a command or a port reads back otherwise.
        :raises SwitchUnreachable, SwitchAuthFailed:
        :raises InvalidRequest: a VLAN is not 1-4094.
        """

    def port_state(self, port: str) -> PortState:
        """Read one port back from the switch. Idempotent.

        :raises UnknownSwitchPort, SwitchUnreachable, SwitchAuthFailed:
        """
        return self.port_states([port])[port]

    @abc.abstractmethod
    def port_states(self, ports: Iterable[str]) -> dict[str, PortState]:
        """Read many ports back in one session. Idempotent.

        :raises UnknownSwitchPort: naming every port the switch does not have.
        :raises SwitchUnreachable, SwitchAuthFailed:
        """

    def add_trunk_vlans(self, port: str, vlans: Iterable[int]) -> None:
        """Add tagged VLANs to a port. Idempotent.

        :raises UnsupportedOperation: this switch cannot carry trunks (the default).
        """
        raise UnsupportedOperation(
            f"{self.access.label}: this switch driver cannot carry tagged (trunk) VLANs"
        )

    def remove_trunk_vlans(self, port: str, vlans: Iterable[int]) -> None:
        """Remove tagged VLANs from a port. Idempotent.

        :raises UnsupportedOperation: this switch cannot carry trunks (the default).
        """
        raise UnsupportedOperation(
            f"{self.access.label}: this switch driver cannot carry tagged (trunk) VLANs"
        )

    # --- Routing on the switch (a leaf with an L3 interface per tenant VLAN and 1:1 NAT for public addresses).
    # A switch that does not route raises UnsupportedOperation; a site whose tenants need public addresses
    # needs a switch driver that routes (the lab's Linux switch does).

    def ensure_vlan_gateway(self, vlan: int, gateway_cidr: str) -> None:
        """Give VLAN ``vlan`` its routed interface (SVI) with ``gateway_cidr`` (e.g. ``198.19.3.1/24``), the
        default gateway of the tenant network on that VLAN. Creates the VLAN when missing. Traffic between
        VLANs is never routed; only published addresses (``publish``) reach into a VLAN. Idempotent.

        :raises UnsupportedOperation: this switch does not route (the default).
        :raises SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed:
        """
        raise UnsupportedOperation(f"{self.access.label}: this switch driver does not route")

    def remove_vlan_gateway(self, vlan: int) -> None:
        """Remove VLAN ``vlan``'s routed interface (after its last server left). Idempotent.

        :raises UnsupportedOperation: this switch does not route (the default).
        :raises SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed:
        """
        raise UnsupportedOperation(f"{self.access.label}: this switch driver does not route")

    def publish(self, public_address: str, private_address: str) -> None:
        """1:1 NAT: connections to ``public_address`` reach ``private_address`` (on a VLAN with a gateway);
        replace any earlier mapping of ``public_address``. Idempotent.

        :raises UnsupportedOperation: this switch does not route (the default).
        :raises SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed:
        """
        raise UnsupportedOperation(f"{self.access.label}: this switch driver does not route")

    def publish_many(self, mapping: Mapping[str, str]) -> None:
        """``publish`` for many addresses (public -> private), in one session when the driver can.
        Idempotent.

        :raises UnsupportedOperation, SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed: as ``publish``.
        """
        for public_address, private_address in mapping.items():
            self.publish(public_address, private_address)

    def withdraw_many(self, public_addresses: Iterable[str]) -> None:
        """``withdraw`` for many public addresses, in one session when the driver can. Idempotent.

        :raises UnsupportedOperation, SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed: as ``withdraw``.
        """
        for public_address in public_addresses:
            self.withdraw(public_address)

    def withdraw(self, public_address: str) -> None:
        """Remove the mapping of ``public_address`` (nothing reaches in through it afterwards). Idempotent.

        :raises UnsupportedOperation: this switch does not route (the default).
        :raises SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed:
        """
        raise UnsupportedOperation(f"{self.access.label}: this switch driver does not route")

    def join_tenant_networks(
        self, gateways: Mapping[int, str], published: Mapping[str, str], moves: Mapping[str, int]
    ) -> None:
        """A handover's switch work in one session: each VLAN's gateway (``ensure_vlan_gateway``), each
        public address published (``publish_many``), then each port on its VLAN (``set_access_vlans``), in
        that order, and everything read back. Idempotent. Drivers that can do it in fewer round trips
        override it (the Linux driver: one read, the changes, one read back).

        :raises UnknownSwitchPort: some port does not exist (nothing was changed).
        :raises InvalidRequest: a VLAN, gateway or address is malformed, or a private address is on no
            gateway's network (nothing was changed).
        :raises UnsupportedOperation, SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed:
        """
        for vlan, gateway_cidr in sorted(gateways.items()):
            self.ensure_vlan_gateway(vlan, gateway_cidr)
        self.publish_many(published)
        self.set_access_vlans(moves)

    def leave_tenant_networks(self, withdrawn: Iterable[str], moves: Mapping[str, int]) -> None:
        """A release's switch work in one session: the public addresses withdrawn (``withdraw_many``), then
        each port on its VLAN (``set_access_vlans``), in that order, and both read back. Idempotent.

        :raises UnknownSwitchPort: some port does not exist (nothing was changed).
        :raises InvalidRequest: a VLAN or address is malformed (nothing was changed).
        :raises UnsupportedOperation, SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed:
        """
        self.withdraw_many(withdrawn)
        self.set_access_vlans(moves)

    def routing_state(self) -> RoutingState:
        """Read the switch's routed interfaces and published addresses back (what ``ensure_vlan_gateway``
        and ``publish`` made, as the switch itself holds them). Idempotent; changes nothing.

        :raises UnsupportedOperation: this switch does not route (the default).
        :raises SwitchUnreachable, SwitchAuthFailed:
        """
        raise UnsupportedOperation(f"{self.access.label}: this switch driver does not route")

    @abc.abstractmethod
    def save(self) -> None:
        """Make the running port configuration survive a reboot of the switch. Idempotent.

        :raises SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed:
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Close a session held by ``with driver:``."""

    def __enter__(self) -> SwitchDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_private_key(text: str) -> Any:
    """A paramiko key from an unencrypted private key's text (Ed25519, ECDSA or RSA).

    :raises InvalidRequest: the text is none of those.
    """
    import paramiko

    for key_class in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return key_class.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError):
            continue
    raise InvalidRequest(
        "the switch's private key is not an unencrypted OpenSSH/PEM Ed25519, ECDSA or RSA key"
    )


class NetmikoSwitchDriver(SwitchDriver):
    """The SSH side of a switch driver, on netmiko. Subclasses give ``DEVICE_TYPE`` and their commands."""

    DEVICE_TYPE: ClassVar[str] = ""

    def __init__(self, access: SwitchAccess) -> None:
        super().__init__(access)
        self._connection: Any = None

    def _connect(self) -> Any:
        import paramiko
        from netmiko import ConnectHandler
        from netmiko.exceptions import NetmikoAuthenticationException, NetmikoTimeoutException

        a = self.access
        params: dict[str, Any] = {
            "device_type": self.DEVICE_TYPE,
            "host": a.address,
            "port": a.port,
            "username": a.username,
            "password": a.password or None,
            "allow_agent": False,
            "conn_timeout": a.timeout,
            "auth_timeout": a.timeout,
            "banner_timeout": a.timeout,
            "timeout": a.timeout,
        }
        if a.private_key:
            params["pkey"] = load_private_key(a.private_key)
        try:
            return ConnectHandler(**params)
        except NetmikoAuthenticationException:
            raise SwitchAuthFailed(
                f"{a.label} refused the login as {a.username!r}: check the switch's recorded username and "
                "password or key"
            ) from None
        except (NetmikoTimeoutException, paramiko.SSHException, OSError, EOFError) as exc:
            raise SwitchUnreachable(
                f"{a.label} did not answer SSH within {a.timeout:.0f} s ({type(exc).__name__})"
            ) from None

    # ``keep_session``: a ``with driver:`` session that ends cleanly stays open, at most IDLE_SECONDS, for the
    # next ``with`` of a driver of the same switch and login in this process that also keeps sessions (the
    # engine's per-switch batches, engine/switch_batch.py: a login costs 0.45-1 s here, a command 36 ms).
    # Never used by two sessions at once; one whose SSH transport closed is dropped.
    IDLE_SECONDS: ClassVar[float] = 20.0
    _idle: ClassVar[dict[tuple[Any, ...], tuple[Any, float]]] = {}
    _idle_lock: ClassVar[threading.Lock] = threading.Lock()

    def _key(self) -> tuple[Any, ...]:
        a = self.access
        secret = hashlib.sha256(f"{a.password}\0{a.private_key}".encode()).hexdigest()
        return (type(self).__name__, a.name, a.address, a.port, a.username, secret)

    def _kept(self) -> Any:
        """This switch's kept session, taken out of the idle set, if still open and not idle too long."""
        with self._idle_lock:
            kept = self._idle.pop(self._key(), None)
        if kept is None:
            return None
        connection, since = kept
        transport = getattr(getattr(connection, "remote_conn", None), "transport", None)
        if time.monotonic() - since <= self.IDLE_SECONDS and transport is not None and transport.is_active():
            return connection
        with contextlib.suppress(Exception):
            connection.disconnect()
        return None

    def __enter__(self) -> NetmikoSwitchDriver:
        if self._connection is None:
            self._connection = (self.keep_session and self._kept()) or self._connect()
        return self

    def __exit__(self, *exc: object) -> None:
        if (exc and exc[0] is not None) or not self.keep_session or self._connection is None:
            self.close()
            return
        connection, self._connection = self._connection, None
        with self._idle_lock:
            replaced = self._idle.pop(self._key(), None)
            self._idle[self._key()] = (connection, time.monotonic())
        if replaced is not None:
            with contextlib.suppress(Exception):
                replaced[0].disconnect()

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.disconnect()
            self._connection = None

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """The session of ``with driver:``, or a new one for this call only."""
        if self._connection is not None:
            yield self._connection
            return
        connection = self._connect()
        try:
            yield connection
        finally:
            with contextlib.suppress(Exception):
                connection.disconnect()

    def run(self, connection: Any, command: str) -> str:
        """Send one command line and return its output.

        :raises SwitchUnreachable: the session broke or the prompt did not come back in time.
        """
        import paramiko
        from netmiko.exceptions import ReadTimeout

        # The prompt the login found, given as the end to wait for: without it netmiko looks the prompt up
        # again before every command, which took 87 ms a command here instead of 36 ms.
        expect = re.escape(str(connection.base_prompt)) + r"[#$>]\s*$"
        try:
            return str(
                connection.send_command(command, read_timeout=self.access.timeout, expect_string=expect)
            )
        except (ReadTimeout, paramiko.SSHException, OSError, EOFError) as exc:
            raise SwitchUnreachable(
                f"{self.access.label} stopped answering during a command ({type(exc).__name__})"
            ) from None


_RC = re.compile(r"NC_RC=(\d+)\s*\Z")
# the first command's result in an output that goes on with a read back's (``_checked``'s ``then``)
_FIRST_RC = re.compile(r"^NC_RC=(\d+)\s*$", re.MULTILINE)
_LINK = re.compile(r"\A\d+: ([^:@\s]+)(?:@\S+)?: <([^>]*)>")
_MASTER = re.compile(r" master (\S+)")
_ADDR = re.compile(r"\A\d+: (\S+)\s+inet ([0-9.]+/[0-9]+) ")
# separates the parts of one command's output that reads several things (``_read_all``)
_SECTION = "NC_SECTION"
_LINKS = "ip -o link show"
_NAT_ELEMENT = re.compile(r"([0-9]+(?:\.[0-9]+){3}) : ([0-9]+(?:\.[0-9]+){3})")


class LinuxSwitchDriver(NetmikoSwitchDriver):
    """A Linux switch in traditional bridge mode: VLAN ``v`` is the bridge ``br<v>``, a port (``swp<N>``)
    is on the VLAN whose bridge it belongs to, and on none when it belongs to no bridge. Commands are plain
    iproute2 run by the login shell (root, or a user allowed to run ``ip``).

    Trunks: without VLAN-aware bridges or 802.1Q devices (the lab's kernel has neither) a port cannot carry
    tagged VLANs, so ``add_trunk_vlans`` / ``remove_trunk_vlans`` raise UnsupportedOperation. ``save`` writes
    the ``ip link set`` lines that restore every port's VLAN to ``$NEOCLOUD_SWITCH_CONFIG`` (the lab switch
    sets it; on a real Linux switch a boot script would replay that file).
    """

    DEVICE_TYPE = "linux"
    PORT_NAME = re.compile(r"\Aswp[0-9]{1,4}\Z")
    # netmiko's terminal is 511 columns wide and it recognises a command's echo only when it did not wrap:
    # longer command lists are sent as several lines.
    MAX_LINE = 480
    SAVED_CONFIG = '"${NEOCLOUD_SWITCH_CONFIG:?the switch names no file to save to}"'
    # The nftables map of published addresses (public -> private), made by the switch's base ruleset.
    NAT_TABLE = "inet neocloud"
    NAT_MAP = "publish"

    @staticmethod
    def bridge(vlan: int) -> str:
        return f"br{vlan}"

    def _checked(self, connection: Any, commands: list[str], then: str = "") -> str:
        """Run ``commands`` (joined by ``&&``, a few lines at most) and check that each line succeeded; then
        run ``then`` (a read back) and return its output. ``then`` rides on the last line when it fits (one
        round trip fewer: it runs whatever the line's result, which is checked first)."""
        lines: list[list[str]] = [[]]
        for command in commands:
            if lines[-1] and sum(len(c) + 4 for c in lines[-1]) + len(command) > self.MAX_LINE:
                lines.append([])
            lines[-1].append(command)
        lines = [line for line in lines if line]
        riding = (
            bool(then)
            and bool(lines)
            and (sum(len(c) + 4 for c in lines[-1]) + len(then) + 20 <= self.MAX_LINE)
        )
        rest = ""
        for number, line in enumerate(lines, start=1):
            command = " && ".join(line) + "; echo NC_RC=$?"
            if riding and number == len(lines):
                command += f"; {then}"
            output = self.run(connection, command)
            match = _FIRST_RC.search(output)
            if match is None or match.group(1) != "0":
                said = output[: match.start()] if match else output
                said = said.strip().replace("\n", " / ")[:300] or "no output"
                raise SwitchCommandFailed(f"{self.access.label} refused a port change: {said}")
            rest = output[match.end() :]
        if riding:
            return rest
        return self.run(connection, then) if then else ""

    def _read_links(self, connection: Any) -> dict[str, PortState]:
        return self._parse_links(self.run(connection, _LINKS))

    def _parse_links(self, output: str) -> dict[str, PortState]:
        states = {}
        for line in output.splitlines():
            match = _LINK.match(line.strip())
            if not match or not self.PORT_NAME.match(match.group(1)):
                continue
            master = _MASTER.search(line)
            vlan = None
            if master and re.fullmatch(r"br[0-9]{1,4}", master.group(1)):
                vlan = int(master.group(1)[2:])
            states[match.group(1)] = PortState(
                port=match.group(1), vlan=vlan, up="LOWER_UP" in match.group(2).split(",")
            )
        return states

    def _unknown_ports(
        self, states: Mapping[str, PortState], wanted: Iterable[str]
    ) -> UnknownSwitchPort | None:
        missing = [p for p in dict.fromkeys(wanted) if p not in states]
        if not missing:
            return None
        have = sorted(states, key=lambda p: (len(p), p))
        listed = f"{have[0]} to {have[-1]}" if len(have) > 1 else (", ".join(have) or "none")
        return UnknownSwitchPort(
            f"switch {self.access.name} has no port {', '.join(missing)} (its ports: {listed}); "
            "check the node's recorded cabling"
        )

    def _known(self, connection: Any, ports: Iterable[str]) -> dict[str, PortState]:
        wanted = list(dict.fromkeys(ports))
        for port in wanted:
            self.validate_port_name(self.access.name, port)
        states = self._read_links(connection)
        unknown = self._unknown_ports(states, wanted)
        if unknown is not None:
            raise unknown
        return {p: states[p] for p in wanted}

    def port_states(self, ports: Iterable[str]) -> dict[str, PortState]:
        with self.session() as connection:
            return self._known(connection, ports)

    def _move_commands(self, moves: Mapping[str, int]) -> list[str]:
        """The commands that put each port of ``moves`` on its VLAN's bridge (made when missing)."""
        commands = []
        for vlan in sorted(set(moves.values())):
            bridge = self.bridge(vlan)
            commands.append(
                f"{{ ip link show {bridge} >/dev/null 2>&1 || ip link add {bridge} type bridge; }}"
            )
            commands.append(f"ip link set {bridge} up")
        # One `ip -batch` per VLAN (and per line's worth of ports): a port costs a few characters of the
        # command line instead of a whole `ip link set` command.
        by_vlan: dict[int, list[str]] = {}
        for port, vlan in moves.items():
            by_vlan.setdefault(vlan, []).append(port)
        for vlan, ports in sorted(by_vlan.items()):
            head = f"printf 'link set %s master {self.bridge(vlan)}\\n'"
            chunk: list[str] = []
            for port in ports:
                if chunk and len(head) + sum(len(p) + 1 for p in chunk) + len(port) > self.MAX_LINE - 40:
                    commands.append(f"{head} {' '.join(chunk)} | ip -batch -")
                    chunk = []
                chunk.append(port)
            commands.append(f"{head} {' '.join(chunk)} | ip -batch -")
        return commands

    def set_access_vlans(self, moves: Mapping[str, int]) -> None:
        if not moves:
            return
        for vlan in moves.values():
            check_vlan(vlan)
        with self.session() as connection:
            before = self._known(connection, moves)
            # ports the switch already reports on their VLAN need nothing more: that read is its state
            pending = {p: v for p, v in moves.items() if before[p].vlan != v}
            if not pending:
                return
            states = self._parse_links(self._checked(connection, self._move_commands(pending), then=_LINKS))
        unknown = self._unknown_ports(states, moves)
        if unknown is not None:  # gone meanwhile
            raise SwitchCommandFailed(f"{self.access.label}: {unknown}")
        after = {p: states[p] for p in moves}
        wrong = [f"{p} on {after[p].vlan} (wanted {v})" for p, v in moves.items() if after[p].vlan != v]
        if wrong:
            raise SwitchCommandFailed(f"{self.access.label}: ports read back otherwise: {', '.join(wrong)}")

    # --- routing: an SVI per tenant VLAN (an address on its bridge) and 1:1 NAT in nftables -------------------
    # The switch's base ruleset (lab/switch.py sets it when the switch starts) holds the table, the map and the
    # filter: forwarding only for connections DNAT'ed from the public uplink and their replies, so no VLAN
    # reaches another, the provisioning network or the management network. The driver only fills the map.

    def _read_gateways(self, connection: Any) -> dict[int, str]:
        return self._parse_gateways(self.run(connection, "ip -4 -o addr show"))

    @staticmethod
    def _parse_gateways(output: str) -> dict[int, str]:
        gateways: dict[int, str] = {}
        for line in output.splitlines():
            match = _ADDR.match(line.strip())
            if match and re.fullmatch(r"br[0-9]{1,4}", match.group(1)):
                # one gateway per VLAN: a second address on the bridge would be an outside change; the
                # first one is reported and ensure_vlan_gateway replaces both
                gateways.setdefault(int(match.group(1)[2:]), match.group(2))
        return gateways

    @staticmethod
    def _bridge_addresses(output: str, bridge: str) -> list[str]:
        return [
            m.group(2)
            for m in (_ADDR.match(line.strip()) for line in output.splitlines())
            if m and m.group(1) == bridge
        ]

    def _read_published(self, connection: Any) -> dict[str, str]:
        return self._parse_published(
            self.run(connection, f"nft list map {self.NAT_TABLE} {self.NAT_MAP}; echo NC_RC=$?")
        )

    def _parse_published(self, output: str) -> dict[str, str]:
        match = _RC.search(output.strip())
        if match is None or match.group(1) != "0":
            said = _RC.sub("", output).strip().replace("\n", " / ")[:200] or "no output"
            raise SwitchCommandFailed(
                f"{self.access.label} has no NAT map {self.NAT_TABLE} {self.NAT_MAP} (its base ruleset is "
                f"missing): {said}"
            )
        return dict(_NAT_ELEMENT.findall(output))

    def _read_all(self, connection: Any) -> tuple[dict[str, PortState], str, dict[str, str]]:
        """Ports, addresses (``ip -4 -o addr`` output) and published addresses in one command."""
        return self._parse_all(self.run(connection, self._read_all_command()))

    def _read_all_command(self) -> str:
        return (
            f"{_LINKS}; echo {_SECTION}; ip -4 -o addr show; echo {_SECTION}; "
            f"nft list map {self.NAT_TABLE} {self.NAT_MAP}; echo NC_RC=$?"
        )

    def _parse_all(self, output: str) -> tuple[dict[str, PortState], str, dict[str, str]]:
        parts = re.split(rf"^{_SECTION}\s*$", output, flags=re.MULTILINE)  # the echo's own lines only
        if len(parts) != 3:
            raise SwitchCommandFailed(f"{self.access.label} answered a state read unexpectedly")
        return self._parse_links(parts[0]), parts[1], self._parse_published(parts[2])

    def join_tenant_networks(
        self, gateways: Mapping[int, str], published: Mapping[str, str], moves: Mapping[str, int]
    ) -> None:
        """One read of ports, addresses and the NAT map; the gateways, published addresses and port moves
        that differ, in that order, in as few command lines as fit; one read back of all three."""
        for vlan in [*gateways, *moves.values()]:
            check_vlan(vlan)
        for port in moves:
            self.validate_port_name(self.access.name, port)
        cidrs = {vlan: check_gateway_cidr(cidr).with_prefixlen for vlan, cidr in gateways.items()}
        wanted = {
            str(check_ipv4(public, "public address")): str(check_ipv4(private, "private address"))
            for public, private in published.items()
        }
        if not (cidrs or wanted or moves):
            return
        with self.session() as connection:
            links, addresses, nat = self._read_all(connection)
            unknown = self._unknown_ports(links, moves)
            if unknown is not None:
                raise unknown
            networks = [
                ipaddress.IPv4Interface(c).network
                for c in {**self._parse_gateways(addresses), **cidrs}.values()
            ]
            for private in wanted.values():
                if not any(ipaddress.IPv4Address(private) in network for network in networks):
                    raise InvalidRequest(
                        f"{self.access.label} has no VLAN gateway whose network holds {private}: give the "
                        "tenant VLAN its gateway before publishing an address on it"
                    )
            commands = []
            for vlan, cidr in sorted(cidrs.items()):
                bridge = self.bridge(vlan)
                if self._bridge_addresses(addresses, bridge) != [cidr]:
                    commands += [
                        f"{{ ip link show {bridge} >/dev/null 2>&1 || ip link add {bridge} type bridge; }}",
                        f"ip -4 addr flush dev {bridge}",
                        f"ip addr add {cidr} dev {bridge}",
                        f"ip link set {bridge} up",
                    ]
            changed = [(p, v) for p, v in wanted.items() if nat.get(p) != v]
            if changed:
                commands += self._nft_commands([p for p, _ in changed if p in nat], changed)
            pending = {p: v for p, v in moves.items() if links[p].vlan != v}
            if pending:
                commands += self._move_commands(pending)
            if not commands:
                return  # the switch holds all of it: that read is its state
            links, addresses, nat = self._parse_all(
                self._checked(connection, commands, then=self._read_all_command())
            )
        wrong = [f"port {p} on {links[p].vlan} (wanted {v})" for p, v in moves.items() if links[p].vlan != v]
        wrong += [
            f"VLAN {vlan}'s gateway {', '.join(self._bridge_addresses(addresses, self.bridge(vlan))) or 'none'} "
            f"(wanted {cidr})"
            for vlan, cidr in sorted(cidrs.items())
            if self._bridge_addresses(addresses, self.bridge(vlan)) != [cidr]
        ]
        wrong += [
            f"{p} to {nat.get(p) or 'nothing'} (wanted {v})" for p, v in wanted.items() if nat.get(p) != v
        ]
        if wrong:
            raise SwitchCommandFailed(f"{self.access.label}: read back otherwise: {', '.join(wrong)}")

    def routing_state(self) -> RoutingState:
        with self.session() as connection:
            return RoutingState(self._read_gateways(connection), self._read_published(connection))

    def ensure_vlan_gateway(self, vlan: int, gateway_cidr: str) -> None:
        check_vlan(vlan)
        interface = check_gateway_cidr(gateway_cidr)
        bridge, cidr = self.bridge(vlan), interface.with_prefixlen
        with self.session() as connection:
            addresses = [
                m.group(2)
                for m in map(_ADDR.match, self.run(connection, "ip -4 -o addr show").splitlines())
                if m and m.group(1) == bridge
            ]
            if addresses != [cidr]:
                self._checked(
                    connection,
                    [
                        f"{{ ip link show {bridge} >/dev/null 2>&1 || ip link add {bridge} type bridge; }}",
                        f"ip -4 addr flush dev {bridge}",
                        f"ip addr add {cidr} dev {bridge}",
                        f"ip link set {bridge} up",
                    ],
                )
            after = self._read_gateways(connection).get(vlan)
        if after != cidr:
            raise SwitchCommandFailed(
                f"{self.access.label}: VLAN {vlan}'s gateway reads back as {after or 'none'} (wanted {cidr})"
            )

    def remove_vlan_gateway(self, vlan: int) -> None:
        check_vlan(vlan)
        bridge = self.bridge(vlan)
        with self.session() as connection:
            if vlan in self._read_gateways(connection):
                self._checked(connection, [f"ip -4 addr flush dev {bridge}"])
            after = self._read_gateways(connection).get(vlan)
        if after is not None:
            raise SwitchCommandFailed(f"{self.access.label}: VLAN {vlan} still has its gateway {after}")

    def leave_tenant_networks(self, withdrawn: Iterable[str], moves: Mapping[str, int]) -> None:
        """One read of ports and the NAT map; the withdrawals and port moves that are due, in that order;
        one read back of both."""
        for vlan in moves.values():
            check_vlan(vlan)
        for port in moves:
            self.validate_port_name(self.access.name, port)
        gone = list(dict.fromkeys(str(check_ipv4(public, "public address")) for public in withdrawn))
        if not (gone or moves):
            return
        with self.session() as connection:
            links, _, nat = self._read_all(connection)
            unknown = self._unknown_ports(links, moves)
            if unknown is not None:
                raise unknown
            commands = []
            published = [public for public in gone if public in nat]
            if published:
                commands += self._nft_commands(published, [])
            pending = {p: v for p, v in moves.items() if links[p].vlan != v}
            if pending:
                commands += self._move_commands(pending)
            if not commands:
                return  # the switch holds it already: that read is its state
            links, _, nat = self._parse_all(
                self._checked(connection, commands, then=self._read_all_command())
            )
        wrong = [f"port {p} on {links[p].vlan} (wanted {v})" for p, v in moves.items() if links[p].vlan != v]
        wrong += [f"{public} still published (to {nat[public]})" for public in gone if public in nat]
        if wrong:
            raise SwitchCommandFailed(f"{self.access.label}: read back otherwise: {', '.join(wrong)}")

    def publish(self, public_address: str, private_address: str) -> None:
        self.publish_many({public_address: private_address})

    def _nft_commands(self, delete: list[str], add: list[tuple[str, str]]) -> list[str]:
        """``printf ... | nft -f -`` commands that delete the ``delete`` addresses and add the ``add`` mappings,
        as few as fit a command line each; a remapped address (in both) is deleted and added by the same
        command (one nft transaction), so it is never left unpublished."""
        nl = "\\n"  # printf's newline
        head = f"printf '%s{nl}' "
        commands: list[str] = []
        dels: list[str] = []
        adds: list[str] = []

        def command() -> str:
            lines = []
            if dels:
                lines.append(f"'delete element {self.NAT_TABLE} {self.NAT_MAP} {{ {', '.join(dels)} }}'")
            if adds:
                lines.append(f"'add element {self.NAT_TABLE} {self.NAT_MAP} {{ {', '.join(adds)} }}'")
            return head + " ".join(lines) + " | nft -f -"

        adding = dict(add)
        for public in dict.fromkeys([*delete, *adding]):
            new_dels = [*dels, public] if public in delete else dels
            new_adds = [*adds, f"{public} : {adding[public]}"] if public in adding else adds
            if (dels or adds) and len(head) + 120 + sum(
                len(x) + 2 for x in new_dels + new_adds
            ) > self.MAX_LINE:
                commands.append(command())
                dels, adds = [], []
                new_dels = [public] if public in delete else []
                new_adds = [f"{public} : {adding[public]}"] if public in adding else []
            dels, adds = new_dels, new_adds
        if dels or adds:
            commands.append(command())
        return commands

    def publish_many(self, mapping: Mapping[str, str]) -> None:
        wanted = {
            str(check_ipv4(public, "public address")): check_ipv4(private, "private address")
            for public, private in mapping.items()
        }
        if not wanted:
            return
        with self.session() as connection:
            networks = [ipaddress.IPv4Interface(c).network for c in self._read_gateways(connection).values()]
            for private in wanted.values():
                if not any(private in network for network in networks):
                    raise InvalidRequest(
                        f"{self.access.label} has no VLAN gateway whose network holds {private}: give the "
                        "tenant VLAN its gateway before publishing an address on it"
                    )
            published = self._read_published(connection)
            changed = [(p, str(v)) for p, v in wanted.items() if published.get(p) != str(v)]
            if changed:
                remapped = [p for p, _ in changed if p in published]
                self._checked(connection, self._nft_commands(remapped, changed))
            after = self._read_published(connection)
        wrong = [
            f"{public} to {after.get(public) or 'nothing'} (wanted {private})"
            for public, private in wanted.items()
            if after.get(public) != str(private)
        ]
        if wrong:
            raise SwitchCommandFailed(
                f"{self.access.label}: published addresses read back as {', '.join(wrong)}"
            )

    def withdraw(self, public_address: str) -> None:
        self.withdraw_many([public_address])

    def withdraw_many(self, public_addresses: Iterable[str]) -> None:
        wanted = [str(check_ipv4(public, "public address")) for public in public_addresses]
        if not wanted:
            return
        with self.session() as connection:
            published = self._read_published(connection)
            gone = [public for public in dict.fromkeys(wanted) if public in published]
            if gone:
                self._checked(connection, self._nft_commands(gone, []))
            after = self._read_published(connection)
        left = [f"{public} (to {after[public]})" for public in wanted if public in after]
        if left:
            raise SwitchCommandFailed(f"{self.access.label}: still published: {', '.join(left)}")

    def save(self) -> None:
        """Write the commands that restore every port's VLAN, every VLAN gateway and every published address."""
        with self.session() as connection:
            states = self._read_links(connection)
            lines = [
                f"ip link set {s.port} master {self.bridge(s.vlan)}"
                for s in states.values()
                if s.vlan is not None
            ]
            lines += [
                f"ip addr replace {cidr} dev {self.bridge(vlan)}"
                for vlan, cidr in sorted(self._read_gateways(connection).items())
            ]
            lines += [
                f"nft add element {self.NAT_TABLE} {self.NAT_MAP} {{ {public} : {private} }}"
                for public, private in sorted(self._read_published(connection).items())
            ]
            tmp = f"{self.SAVED_CONFIG}.tmp"
            commands = [f": > {tmp}"]
            commands += [f"echo '{line}' >> {tmp}" for line in lines]
            commands.append(f"mv {tmp} {self.SAVED_CONFIG}")
            self._checked(connection, commands)
