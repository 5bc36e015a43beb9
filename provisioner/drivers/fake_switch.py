"""A fake switch whose state is a small JSON file per switch, shared between processes (engine tests, the demo).

``<dir>/switch_<name>.json`` holds ``ports`` (port name -> access VLAN, or null for none), ``trunks`` (unused:
like the Linux switch it carries no trunks), ``saved`` (the ports at the last ``save``), ``gateways`` (VLAN, as
a string -> the gateway interface's address/prefix: ``ensure_vlan_gateway``), ``published`` (public address
-> private address: ``publish``), ``sessions`` (how many sessions the driver opened, as the lab switch's sshd
log counts them) and ``fault``: ``"unreachable"``, ``"auth"`` or ``"command"`` (every change refused). The directory is ``NEOCLOUD_FAKE_HW_DIR`` (else ``var/fake-hw``), as for the
fake BMCs. It passes the same contract tests as the Linux driver against the lab switch
(tests/lab/test_switch.py).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from provisioner.drivers.fake import fake_hw_dir, locked_state
from provisioner.drivers.switch import PortState, SwitchAccess, SwitchDriver, check_vlan
from provisioner.errors import SwitchAuthFailed, SwitchCommandFailed, SwitchUnreachable, UnknownSwitchPort


def fake_switch_path(name: str, directory: Path | None = None) -> Path:
    return (directory or fake_hw_dir()) / f"switch_{name}.json"


DEFAULT_STATE: dict[str, Any] = {
    "ports": {},
    "saved": {},
    "gateways": {},
    "published": {},
    "sessions": 0,
    "fault": None,
}


def _locked(path: Path) -> contextlib.AbstractContextManager[dict[str, Any]]:
    return locked_state(path, DEFAULT_STATE)


def write_fake_switch(name: str, directory: Path | None = None, **fields: Any) -> Path:
    """Create or update a fake switch (``ports={"swp1": 100, ...}``, ``fault="auth"``). Idempotent."""
    path = fake_switch_path(name, directory)
    with _locked(path) as state:
        state.update(fields)
    return path


def read_fake_switch(name: str, directory: Path | None = None) -> dict[str, Any]:
    with _locked(fake_switch_path(name, directory)) as state:
        return json.loads(json.dumps(state))


class FakeSwitchDriver(SwitchDriver):
    """SwitchDriver over a JSON file, with the Linux driver's port names, sessions and errors."""

    PORT_NAME = re.compile(r"\Aswp[0-9]{1,4}\Z")

    def __init__(self, access: SwitchAccess, directory: Path | None = None) -> None:
        super().__init__(access)
        self.directory = directory
        self._in_session = False

    @contextlib.contextmanager
    def _session(self) -> Iterator[dict[str, Any]]:
        with _locked(fake_switch_path(self.access.name, self.directory)) as state:
            if state["fault"] == "unreachable":
                raise SwitchUnreachable(
                    f"{self.access.label} did not answer SSH within {self.access.timeout:.0f} s (fake)"
                )
            if state["fault"] == "auth":
                raise SwitchAuthFailed(
                    f"{self.access.label} refused the login as {self.access.username!r}: check the switch's "
                    "recorded username and password or key"
                )
            if not self._in_session:
                state["sessions"] += 1
            yield state

    def __enter__(self) -> FakeSwitchDriver:
        with self._session():
            self._in_session = True
        return self

    def close(self) -> None:
        self._in_session = False

    def _known(self, state: dict[str, Any], ports: Iterable[str]) -> dict[str, PortState]:
        wanted = list(dict.fromkeys(ports))
        for port in wanted:
            self.validate_port_name(self.access.name, port)
        have: dict[str, int | None] = state["ports"]
        missing = [p for p in wanted if p not in have]
        if missing:
            names = sorted(have, key=lambda p: (len(p), p))
            listed = f"{names[0]} to {names[-1]}" if len(names) > 1 else (", ".join(names) or "none")
            raise UnknownSwitchPort(
                f"switch {self.access.name} has no port {', '.join(missing)} (its ports: {listed}); "
                "check the node's recorded cabling"
            )
        return {p: PortState(port=p, vlan=have[p], up=True) for p in wanted}

    def port_states(self, ports: Iterable[str]) -> dict[str, PortState]:
        with self._session() as state:
            return self._known(state, ports)

    def set_access_vlans(self, moves: Mapping[str, int]) -> None:
        if not moves:
            return
        for vlan in moves.values():
            check_vlan(vlan)
        with self._session() as state:
            self._known(state, moves)
            if state["fault"] == "command":
                raise SwitchCommandFailed(f"{self.access.label} refused a port change: (fake fault)")
            state["ports"].update(moves)

    def _changing(self, state: dict[str, Any], what: str) -> None:
        if state["fault"] == "command":
            raise SwitchCommandFailed(f"{self.access.label} refused {what}: (fake fault)")

    def ensure_vlan_gateway(self, vlan: int, gateway_cidr: str) -> None:
        check_vlan(vlan)
        interface = ipaddress.ip_interface(gateway_cidr)  # ValueError: not an address/prefix
        with self._session() as state:
            self._changing(state, f"the gateway of VLAN {vlan}")
            state.setdefault("gateways", {})[str(vlan)] = str(interface)

    def remove_vlan_gateway(self, vlan: int) -> None:
        check_vlan(vlan)
        with self._session() as state:
            self._changing(state, f"removing the gateway of VLAN {vlan}")
            state.setdefault("gateways", {}).pop(str(vlan), None)

    def publish(self, public_address: str, private_address: str) -> None:
        ipaddress.ip_address(public_address)
        ipaddress.ip_address(private_address)
        with self._session() as state:
            self._changing(state, f"publishing {public_address}")
            state.setdefault("published", {})[public_address] = private_address

    def withdraw(self, public_address: str) -> None:
        with self._session() as state:
            self._changing(state, f"withdrawing {public_address}")
            state.setdefault("published", {}).pop(public_address, None)

    def save(self) -> None:
        with self._session() as state:
            state["saved"] = dict(state["ports"])
