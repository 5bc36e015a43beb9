"""Benchmark switch port moves: the batched driver against one SSH login and command per port.

    .venv/bin/python bench/switch.py --ports 100

Starts a lab switch (lab/switch.py: its own namespace, sshd, a bridge per VLAN) with N ports cabled into
one lab server namespace, then moves every port to another VLAN:

* neocloud: ``LinuxSwitchDriver.set_access_vlans`` with all N moves: one SSH session that checks every
  port, moves them (a few command lines) and reads every port back; run ``--rounds`` times, alternating
  two VLANs so that every move changes the port;
* baseline: per port, a netmiko login, one ``ip link set swpN master brV`` and a logout (what a driver that
  opens a session per port does, without even reading back).

Checks on the switch itself (``bridge link``) that every port ended where it was sent and, from the
switch's sshd log, how many SSH sessions each way took; stops everything it started (needs root) and
prints as its last line:

    switch port moves: neocloud X moves/s (S sessions), per-port baseline Y moves/s (T sessions), ratio Z
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from lab import switch as lab_switch  # noqa: E402
from provisioner.drivers.switch import LinuxSwitchDriver, SwitchAccess, load_private_key  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description="switch port move benchmark")
    parser.add_argument("--ports", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="batched rounds (the median is reported)")
    args = parser.parse_args()

    def say(what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)

    tag = secrets.token_hex(3)
    server = f"ncsrv-{tag}"
    ports = [f"swp{n}" for n in range(1, args.ports + 1)]
    with tempfile.TemporaryDirectory(prefix="bench-switch-") as tmp:
        switch = lab_switch.start_switch(
            f"b{tag}", f"198.19.{secrets.randbelow(254) + 1}.9", Path(tmp), lldp=False
        )
        try:
            lab_switch.create_server_namespace(server)
            say(f"cabling {args.ports} ports")
            for port in ports:
                lab_switch.add_port(switch, port, server, peer_interface=f"p{port[3:]}", vlan=100)
            access = SwitchAccess(
                name=switch.name,
                driver="linux",
                address=switch.address,
                port=lab_switch.SSH_PORT,
                username=lab_switch.SSH_USER,
                private_key=switch.private_key,
                timeout=30,
            )

            batched_s = []
            sessions_before = switch.ssh_sessions()
            for round_ in range(args.rounds):
                vlan = 200 + round_ % 2
                started = time.perf_counter()
                LinuxSwitchDriver(access).set_access_vlans(dict.fromkeys(ports, vlan))
                batched_s.append(time.perf_counter() - started)
                shown = lab_switch.bridge_link(switch)
                assert all(shown.get(p) == f"br{vlan}" for p in ports), "a batched move did not land"
                say(f"batched round {round_ + 1}: {batched_s[-1]:.3f} s")
            batched_sessions = (switch.ssh_sessions() - sessions_before) / args.rounds

            from netmiko import ConnectHandler

            pkey = load_private_key(switch.private_key)
            lab_switch.ensure_vlan(switch, 300)  # the baseline only moves ports
            sessions_before = switch.ssh_sessions()
            started = time.perf_counter()
            for port in ports:
                connection = ConnectHandler(
                    device_type="linux",
                    host=switch.address,
                    username=lab_switch.SSH_USER,
                    pkey=pkey,
                    allow_agent=False,
                )
                connection.send_command(f"ip link set {port} master br300")
                connection.disconnect()
            per_port_s = time.perf_counter() - started
            per_port_sessions = switch.ssh_sessions() - sessions_before
            shown = lab_switch.bridge_link(switch)
            assert all(shown.get(p) == "br300" for p in ports), "a per-port move did not land"
            say(f"per-port: {per_port_s:.3f} s")
        finally:
            lab_switch.stop_switch(switch)
            lab_switch.destroy_server_namespace(server)

    batched = statistics.median(batched_s)
    n = args.ports
    print(f"{n} ports on one lab switch; batched rounds {', '.join(f'{s:.3f}' for s in batched_s)} s")
    print(
        f"switch port moves: neocloud {n / batched:.0f} moves/s ({batched_sessions:.0f} session(s)), "
        f"per-port baseline {n / per_port_s:.1f} moves/s ({per_port_sessions} sessions), "
        f"ratio {per_port_s / batched:.1f}"
    )


if __name__ == "__main__":
    main()
