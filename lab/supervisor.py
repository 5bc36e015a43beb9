"""Start, inspect and stop the lab: one detached process per lab node (plain Python, no Django).

``up`` writes ``lab.json`` (one LabNodeSpec per node), creates each node's sparse disk, starts the
provisioning relay (lab.provisioning_relay: the boot service and the image server at 198.18.0.1, where the
simulated servers reach them over their own NIC) and every node process that is not already running (pid
file ``nodes/<name>/node.pid``) and waits until every BMC answers on the network. ``status`` reads pid
files and each node's state.json. ``down`` stops every process of the lab (node processes and relay), by pid
and by scanning /proc for strays, and verifies none is left.
BMC passwords live in lab.json (mode 0600) and never appear on a command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from lab import post
from lab import provisioning_relay as relay
from lab import switch as lab_switch
from lab import switched as switched_lab
from lab.images import IMAGE_SERVER_PORT
from lab.machine import read_state_file
from lab.node_process import node_dir
from lab.spec import LabNodeSpec, load_specs

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NODE_MODULE = "lab.node_process"
IPMI_PORT = 623
REDFISH_PORT = 8000
BMC_USERNAME = "ncadmin"
MAX_NODES = 200  # 127.0.10.<i> and 198.18.0.<i+1> stay inside one /24
QEMU_SSH_PORT_BASE = 22000  # a qemu node's sshd is forwarded from 127.0.0.1:<base + index>


class LabError(RuntimeError):
    """The lab could not be started or stopped; the message says which node and where its log is."""


def make_specs(
    n: int,
    lab_dir: Path,
    protocols: str = "mixed",
    server_type: str = "h100-8x",
    kind: str = "simulated",
    image_port: int = IMAGE_SERVER_PORT,
    post_scale: float = 0.0,
    switched: bool = False,
) -> list[LabNodeSpec]:
    """Fresh specs for ``n`` nodes with random per-node BMC passwords. Pure function of n and protocols.
    ``kind`` is "simulated" or "qemu" (every node an emulated computer: see lab.qemu_firmware,
    whose guest reaches the image server on loopback port ``image_port`` and whose sshd this host reaches
    at 127.0.0.1:``QEMU_SSH_PORT_BASE`` + index). ``post_scale``: the time scale of the servers' power-on
    self-test (lab.post; 0: none). ``switched``: every node's eth0 is cabled to port swp<index> of the lab
    switch (lab.switched) instead of to the host (an emulated computer's through a tap, its sshd then reached
    at its own address, not forwarded)."""
    if not 1 <= n <= MAX_NODES:
        raise ValueError(f"the lab holds 1..{MAX_NODES} nodes, not {n}")
    if protocols not in ("mixed", "ipmi", "redfish"):
        raise ValueError(f"protocols must be mixed, ipmi or redfish, not {protocols!r}")
    if kind not in ("simulated", "qemu"):
        raise ValueError(f"kind must be simulated or qemu, not {kind!r}")
    specs = []
    for i in range(1, n + 1):
        protocol = protocols if protocols != "mixed" else ("ipmi" if i % 2 else "redfish")
        name = f"lab-node-{i:02d}"
        specs.append(
            LabNodeSpec(
                name=name,
                index=i,
                server_type=server_type,
                mac=f"52:54:00:00:{i >> 8:02x}:{i & 0xFF:02x}",
                bmc_protocol=protocol,
                bmc_address=f"127.0.10.{i}",
                bmc_port=IPMI_PORT if protocol == "ipmi" else REDFISH_PORT,
                bmc_username=BMC_USERNAME,
                # IPMI 2.0 passwords are at most 20 bytes; 16 url-safe characters carry 96 bits
                bmc_password=secrets.token_urlsafe(12),
                system_id="" if protocol == "ipmi" else f"system-{i:02d}",
                ssh_address=f"198.18.0.{i + 1}",
                netns=f"nclab-{i}",
                disk_path=str(node_dir(lab_dir, name) / "disk.img"),
                kind=kind,
                image_port=image_port,
                # switched, an emulated computer's sshd is reached at its own address over the switch
                ssh_forward_port=QEMU_SSH_PORT_BASE + i if kind == "qemu" and not switched else 0,
                post_seconds=post.seconds_for(server_type, post_scale),
                switch_name=switched_lab.SWITCH_NAME if switched else "",
                switch_port=switched_lab.port_for(i) if switched else "",
            )
        )
    return specs


def write_lab_json(lab_dir: Path, specs: list[LabNodeSpec], boot_url: str) -> None:
    lab_dir.mkdir(parents=True, exist_ok=True)
    path = lab_dir / "lab.json"
    tmp = path.with_name(".lab.json.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"boot_url": boot_url, "nodes": [s.to_dict() for s in specs]}, f, indent=1)
    os.replace(tmp, path)


def _pid_file(lab_dir: Path, name: str) -> Path:
    return node_dir(lab_dir, name) / "node.pid"


def _read_pid(lab_dir: Path, name: str) -> int | None:
    try:
        return int(_pid_file(lab_dir, name).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _node_process_lab(pid: int) -> tuple[Path, str] | None:
    """(lab directory, node name) of a running node process ("" for the lab's provisioning relay), None for
    any other pid (guards against pid reuse: zombies and other programs are None)."""
    args = _cmdline(pid)
    if (NODE_MODULE not in args and relay.MODULE not in args) or "--lab-dir" not in args:
        return None
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        given = Path(args[args.index("--lab-dir") + 1])
        if not given.is_absolute():
            given = Path(os.readlink(f"/proc/{pid}/cwd")) / given
    except (OSError, IndexError):
        return None
    if state == "Z":
        return None
    name = args[args.index("--name") + 1] if "--name" in args[:-1] else ""
    return given.resolve(), name


def _is_node_process(pid: int, lab_dir: Path, name: str | None = None) -> bool:
    """True when pid is a running node process of this lab (guards against pid reuse)."""
    found = _node_process_lab(pid)
    return found is not None and found[0] == lab_dir.resolve() and name in (None, found[1])


def other_labs(lab_dir: Path) -> dict[Path, list[int]]:
    """Node processes of labs other than ``lab_dir`` that run now, by their lab directory. Every lab uses
    the same addresses (127.0.10.<i>, 198.18.0.<i+1>, namespace nclab-<i>), so one machine runs one lab."""
    others: dict[Path, list[int]] = {}
    for entry in Path("/proc").iterdir():
        found = _node_process_lab(int(entry.name)) if entry.name.isdigit() else None
        if found is not None and found[0] != lab_dir.resolve():
            others.setdefault(found[0], []).append(int(entry.name))
    return others


def lab_processes(lab_dir: Path) -> list[int]:
    """Every live process of this lab (its nodes and its relay), found by scanning /proc (not trusting pid
    files)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_node_process(int(entry.name), lab_dir):
            pids.append(int(entry.name))
    return pids


def _create_disk(spec: LabNodeSpec) -> None:
    path = Path(spec.disk_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        with open(path, "wb") as f:
            f.truncate(spec.disk_size)
            # Allocated, as a real disk's blocks are (fallocate only reserves them: instant on ext4/xfs).
            # In a sparse file every first write must allocate, and the agent's O_DIRECT writes wait for it.
            with contextlib.suppress(OSError):
                os.posix_fallocate(f.fileno(), 0, spec.disk_size)


def _start_node(lab_dir: Path, spec: LabNodeSpec, boot_url: str) -> int:
    directory = node_dir(lab_dir, spec.name)
    directory.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
    }
    with open(directory / "node.log", "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                NODE_MODULE,
                "--lab-dir",
                str(lab_dir.resolve()),
                "--name",
                spec.name,
                "--boot-url",
                boot_url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: survives the caller, gets no terminal signals
            env=env,
            cwd=PROJECT_ROOT,
        )
    _pid_file(lab_dir, spec.name).write_text(f"{proc.pid}\n")
    return proc.pid


def ipmi_answers(address: str, port: int = IPMI_PORT, timeout: float = 0.2) -> bool:
    """True when an IPMI BMC answers Get Channel Authentication Capabilities (session-less)."""
    body = bytes([0x20, 0x18, 0xC8, 0x81, 0x00, 0x38, 0x8E, 0x04])
    body += bytes([(-sum(body[3:])) & 0xFF])
    packet = b"\x06\x00\xff\x07" + b"\x00" + b"\x00" * 8 + bytes([len(body)]) + body
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(packet, (address, port))
            data, _ = sock.recvfrom(512)
        except OSError:
            return False
    return len(data) > 20 and data[:4] == b"\x06\x00\xff\x07"


def start_ipmi_group(specs: list[LabNodeSpec], group_file: Path) -> subprocess.Popen[bytes]:
    """Serve the IPMI BMCs of ``specs`` from one process (``node_process --group``), the way benches and
    tests run many BMCs. ``group_file`` holds their passwords: written mode 0600. The caller stops the
    process; ``silent_ipmi_bmcs`` waits for the BMCs to answer."""
    fd = os.open(group_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump([s.to_dict() for s in specs], f)
    return subprocess.Popen(
        [sys.executable, "-m", "lab.node_process", "--group", str(group_file)],
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        stdin=subprocess.DEVNULL,
    )


def silent_ipmi_bmcs(addresses: list[tuple[str, int]], timeout: float) -> list[tuple[str, int]]:
    """Wait up to ``timeout`` seconds for the IPMI BMCs at ``addresses`` to answer; return those that did not."""
    deadline = time.monotonic() + timeout
    waiting = list(addresses)
    while waiting and time.monotonic() < deadline:
        waiting = [(address, port) for address, port in waiting if not ipmi_answers(address, port)]
    return waiting


def redfish_answers(address: str, port: int = REDFISH_PORT, timeout: float = 0.5) -> bool:
    """True when a Redfish service root answers."""
    try:
        return requests.get(f"http://{address}:{port}/redfish/v1/", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def bmc_answers(spec: LabNodeSpec) -> bool:
    if spec.bmc_protocol == "ipmi":
        return ipmi_answers(spec.bmc_address, spec.bmc_port)
    return redfish_answers(spec.bmc_address, spec.bmc_port)


def up(
    n: int,
    lab_dir: Path,
    boot_url: str = "",
    protocols: str = "mixed",
    *,
    wait_timeout: float = 30.0,
    kind: str = "simulated",
    image_port: int = IMAGE_SERVER_PORT,
    post_scale: float | None = None,
    switch: bool = False,
) -> list[LabNodeSpec]:
    """Start an n-node lab (``switch``: the switched topology of lab.switched, the lab switch started and
    every node cabled to it before the nodes start; with ``kind`` qemu, its DHCP service on VLAN 100 too) (``post_scale``: the time scale of the servers' power-on self-test, lab.post;
    None: NEOCLOUD_LAB_POST_SCALE or its default). Idempotent: an existing lab.json with n nodes and the same protocols, kind and
    image port keeps its specs (and passwords); nodes already running are left alone.

    :raises LabError: a node's BMC did not answer within ``wait_timeout`` (the message names its log), or
        another lab directory's nodes run (they hold the same addresses: the message says how to stop them).
    """
    lab_dir = lab_dir.resolve()
    if others := other_labs(lab_dir):
        where, pids = next(iter(others.items()))
        raise LabError(
            f"another lab runs from {where} ({len(pids)} process(es), pids {', '.join(map(str, sorted(pids)))}) "
            f"and holds the lab's addresses; stop it first: python -m lab --lab-dir {where} down"
        )
    specs = load_specs(lab_dir)
    scale = post.scale_from_env() if post_scale is None else post_scale
    wanted = make_specs(
        n, lab_dir, protocols, kind=kind, image_port=image_port, post_scale=scale, switched=switch
    )
    same_shape = len(specs) == n and [
        (s.bmc_protocol, s.kind, s.image_port, s.post_seconds, s.switch_port) for s in specs
    ] == [(s.bmc_protocol, s.kind, s.image_port, s.post_seconds, s.switch_port) for s in wanted]
    if not same_shape:
        if lab_processes(lab_dir):
            down(lab_dir)
        specs = wanted
    write_lab_json(lab_dir, specs, boot_url)
    if switch:
        switched_lab.start(lab_dir, specs)
    node_boot_url = boot_url
    if kind == "simulated" or switch:
        # the servers reach the boot service and the image server on the provisioning network (their own NIC,
        # 198.18.0.1), relayed to loopback; unswitched emulated computers have QEMU's forwards instead
        ports = [p for p in (relay.relayed_port(boot_url), image_port) if p is not None]
        start_relay(lab_dir, ports)
    if kind == "simulated":
        node_boot_url = relay.server_url(boot_url)
    elif switch:
        try:
            switched_lab.start_pxe_service(lab_dir, specs, relay.server_url(boot_url))
        except lab_switch.LabSwitchError as exc:
            raise LabError(str(exc)) from None
    for spec in specs:
        _create_disk(spec)
        pid = _read_pid(lab_dir, spec.name)
        if pid is None or not _is_node_process(pid, lab_dir, spec.name):
            _start_node(lab_dir, spec, node_boot_url)
    deadline = time.monotonic() + wait_timeout
    waiting = list(specs)
    while waiting:
        waiting = [s for s in waiting if not bmc_answers(s)]
        if not waiting:
            break
        for spec in waiting:
            pid = _read_pid(lab_dir, spec.name)
            if pid is not None and not _is_node_process(pid, lab_dir, spec.name):
                raise LabError(
                    f"lab node {spec.name} exited; see {node_dir(lab_dir, spec.name) / 'node.log'}"
                )
        if time.monotonic() > deadline:
            names = ", ".join(s.name for s in waiting)
            raise LabError(f"BMCs of {names} did not answer within {wait_timeout:.0f} s; see their node.log")
        time.sleep(0.1)
    # a node that could not bind its address (another lab holds it) exits, though that lab answered
    for spec in specs:
        pid = _read_pid(lab_dir, spec.name)
        if pid is None or not _is_node_process(pid, lab_dir, spec.name):
            raise LabError(f"lab node {spec.name} exited; see {node_dir(lab_dir, spec.name) / 'node.log'}")
    return specs


def _relay_pid(lab_dir: Path) -> int | None:
    """The pid of this lab's running provisioning relay, None when none runs."""
    for pid in lab_processes(lab_dir):
        found = _node_process_lab(pid)
        if found is not None and found[1] == "" and relay.MODULE in _cmdline(pid):
            return pid
    return None


def start_relay(lab_dir: Path, ports: list[int], timeout: float = 10.0) -> int:
    """Start (or keep) the lab's provisioning relay for ``ports`` (lab.provisioning_relay); returns its pid.
    Idempotent: a relay of this lab that carries the same ports is kept, one carrying others replaced.

    :raises LabError: it could not listen (the message carries its error), or did not start in ``timeout``.
    """
    lab_dir = lab_dir.resolve()
    wanted = sorted(set(ports))
    ready_file = lab_dir / relay.READY_FILE
    pid = _relay_pid(lab_dir)
    if pid is not None:
        with contextlib.suppress(OSError, ValueError):
            ready = json.loads(ready_file.read_text())
            if ready.get("pid") == pid and ready.get("ports") == wanted:
                return pid
        _signal(pid, signal.SIGTERM)
        _wait_gone(lab_dir, [pid], timeout)
    ready_file.unlink(missing_ok=True)
    log_path = lab_dir / relay.LOG_FILE
    argv = [sys.executable, "-m", relay.MODULE, "--lab-dir", str(lab_dir)]
    for port in wanted:
        argv += ["--port", str(port)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached, as the node processes are
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
            cwd=PROJECT_ROOT,
        )
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(ready_file.read_text()).get("pid") == proc.pid:
                return proc.pid
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise LabError(f"the lab's provisioning relay exited: {' '.join(tail) or 'see ' + str(log_path)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise LabError(
                f"the lab's provisioning relay did not start within {timeout:.0f} s; see {log_path}"
            )
        time.sleep(0.05)


def stop_relay(lab_dir: Path, timeout: float = 10.0) -> None:
    """Stop the lab's provisioning relay (``down`` stops it with the rest of the lab). Idempotent."""
    lab_dir = lab_dir.resolve()
    pid = _relay_pid(lab_dir)
    if pid is not None:
        _signal(pid, signal.SIGTERM)
        _wait_gone(lab_dir, [pid], timeout)
    (lab_dir / relay.READY_FILE).unlink(missing_ok=True)


def _wait_gone(lab_dir: Path, pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_is_node_process(p, lab_dir) for p in pids):
        _reap(set(pids))
        time.sleep(0.05)
    for pid in pids:
        if _is_node_process(pid, lab_dir):
            _signal(pid, signal.SIGKILL)
    _reap(set(pids))


def status(lab_dir: Path) -> list[dict[str, Any]]:
    """Per node: protocol, address, port, credentials, power, boot device, pid and whether it runs.
    Read-only and idempotent; power is "unknown" when the node never ran."""
    lab_dir = lab_dir.resolve()
    rows = []
    for spec in load_specs(lab_dir):
        state = read_state_file(node_dir(lab_dir, spec.name))
        pid = _read_pid(lab_dir, spec.name)
        rows.append(
            {
                "name": spec.name,
                "protocol": spec.bmc_protocol,
                "address": spec.bmc_address,
                "port": spec.bmc_port,
                "username": spec.bmc_username,
                "password": spec.bmc_password,
                "system_id": spec.system_id,
                "mac": spec.mac,
                "ssh_address": spec.ssh_address,
                "power": state.get("power", "unknown"),
                "boot_device": state.get("boot_device", "unknown"),
                "boot_persistent": state.get("boot_persistent"),
                "boot_mode": state.get("boot_mode", "unknown"),
                "post": post.read_state(node_dir(lab_dir, spec.name)).get("state", "unknown"),
                "post_seconds": spec.post_seconds,
                "pid": pid,
                "alive": pid is not None and _is_node_process(pid, lab_dir, spec.name),
            }
        )
    return rows


def down(lab_dir: Path, *, timeout: float = 10.0) -> None:
    """Stop every process of the lab and verify none is left. Idempotent.

    :raises LabError: a process survived SIGKILL (should not happen; the message names its pid).
    """
    lab_dir = lab_dir.resolve()
    pids = set(lab_processes(lab_dir))
    for spec in load_specs(lab_dir):
        pid = _read_pid(lab_dir, spec.name)
        if pid is not None and _is_node_process(pid, lab_dir, spec.name):
            pids.add(pid)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout / 2
    while time.monotonic() < deadline and any(_is_node_process(p, lab_dir) for p in pids):
        _reap(pids)
        time.sleep(0.05)
    for pid in pids:
        if _is_node_process(pid, lab_dir):
            _signal(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout / 2
    while time.monotonic() < deadline and lab_processes(lab_dir):
        _reap(pids)
        time.sleep(0.05)
    _reap(pids)
    left = lab_processes(lab_dir)
    if left:
        raise LabError(f"lab processes {left} survived SIGKILL")
    specs = load_specs(lab_dir)
    for spec in specs:
        _pid_file(lab_dir, spec.name).unlink(missing_ok=True)
    (lab_dir / relay.READY_FILE).unlink(missing_ok=True)
    if any(spec.switch_port for spec in specs):
        switched_lab.stop(lab_dir)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _reap(pids: set[int]) -> None:
    """Collect exit statuses of node processes this process started, so none stays a zombie."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
