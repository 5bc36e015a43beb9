"""The LLDP cabling check against the real lab switch (lab.switch: Debian's lldpd announcing the switch's
name and each port's name every second): our reader hears the switch and the port a server namespace is
cabled to, and a forced mis-cabling (recorded at swp3, cabled to swp5) is caught through the real report
path: the deploy agent, run in the server's namespace, posts what it heard over HTTP to the boot service
(the live server, reached from the namespace through a Unix-socket relay), which stops it before the disk
is touched; the engine's deploy step then fails, not retried, and powers the server off.

Everything here is this module's own: switch ``lldp<hex>``, namespaces ``ncsrv-lldp-<hex>[-d]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lab import switch as lab_switch

pytestmark = [pytest.mark.lab]

ROOT = Path(__file__).resolve().parents[2]
MAC = "52:54:00:00:00:01"  # node-h100-8x-01 in the inventory fixture
RELAY_PORT = 8080  # where the boot service answers inside the server namespaces (their own loopback)
# lldpd in a fresh switch namespace first spends ~20 s failing to resolve its host name before it announces.
HEAR_TIMEOUT = 60.0
MIB = 1024 * 1024


def _missing() -> str:
    if os.geteuid() != 0:
        return "network namespaces and raw sockets need root"
    if not lab_switch.tools_available():
        return "openssh-server or iproute2 is not installed"
    if not lab_switch.lldpd_available():
        return "lldpd is not installed"
    if shutil.which("socat") is None:
        return "socat is not installed"
    return ""


@dataclasses.dataclass(frozen=True)
class Cabled:
    switch: lab_switch.LabSwitch
    server: str  # eth1 cabled to the switch's swp5
    dark: str  # eth1 cabled to nothing that speaks LLDP


@pytest.fixture(scope="module")
def cabled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cabled]:
    if _missing():
        pytest.skip(_missing())
    tag = secrets.token_hex(3)
    address = f"198.19.{secrets.randbelow(254) + 1}.{secrets.randbelow(253) + 2}"
    server, dark = f"ncsrv-lldp-{tag}", f"ncsrv-lldp-{tag}-d"
    switch = lab_switch.start_switch(f"lldp{tag}", address, tmp_path_factory.mktemp("lldp-switch"))
    try:
        for name in (server, dark):
            lab_switch.create_server_namespace(name)
        lab_switch.add_port(switch, "swp5", server, vlan=100)
        # (this kernel has no dummy devices: a veth pair whose both ends stay in the namespace)
        subprocess.run(
            ["ip", "-n", dark, "link", "add", "eth1", "type", "veth", "peer", "name", "eth2"], check=True
        )
        for end in ("eth1", "eth2"):
            subprocess.run(["ip", "-n", dark, "link", "set", end, "up"], check=True)
        yield Cabled(switch, server, dark)
    finally:
        lab_switch.stop_switch(switch)
        for name in (server, dark):
            lab_switch.destroy_server_namespace(name)


def in_namespace(namespace: str, *argv: str, env: dict[str, str] | None = None, timeout: float = 120):
    environment = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


LISTEN = (
    "import json, sys\n"
    "from provisioner.pxe import lldp\n"
    "heard = lldp.listen('eth1', float(sys.argv[1]))\n"
    "print(json.dumps(heard and {'switch': heard.switch, 'port': heard.port, 'port_id_subtype': heard.port_id_subtype}))\n"
)


def test_the_reader_hears_the_lab_switch_name_and_the_port_the_server_is_cabled_to(cabled: Cabled) -> None:
    started = time.monotonic()
    proc = in_namespace(cabled.server, sys.executable, "-c", LISTEN, str(HEAR_TIMEOUT))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"switch": cabled.switch.name, "port": "swp5", "port_id_subtype": 5}
    assert time.monotonic() - started < HEAR_TIMEOUT
    # once the switch announces, every second: a second listener hears it at once
    again = in_namespace(cabled.server, sys.executable, "-c", LISTEN, "5")
    assert json.loads(again.stdout)["port"] == "swp5"
    # and on an interface no switch speaks on, nothing within the timeout
    dark = in_namespace(cabled.dark, sys.executable, "-c", LISTEN, "2")
    assert dark.returncode == 0, dark.stderr
    assert json.loads(dark.stdout) is None


def test_a_socket_opened_in_the_servers_namespace_hears_its_switch_from_a_host_thread(cabled: Cabled) -> None:
    """A socket made in the server's namespace by call_in_namespace is read on this thread, which never left
    the host's namespace."""
    from lab.netns import call_in_namespace
    from provisioner.pxe import lldp

    host_namespace = os.readlink("/proc/thread-self/ns/net")
    sock = call_in_namespace(cabled.server, lambda: lldp.open_socket("eth1"))
    assert os.readlink("/proc/thread-self/ns/net") == host_namespace
    with sock:
        heard = lldp.receive(sock, HEAR_TIMEOUT)
    assert heard is not None and (heard.switch, heard.port) == (cabled.switch.name, "swp5")
    # a namespace that is not there is one sentence
    with pytest.raises(Exception, match="network namespace ncsrv-missing-x does not exist"):
        call_in_namespace("ncsrv-missing-x", lambda: None)


# --- the report path: the agent in the server's namespace, the boot service, the engine ----------------


@pytest.fixture
def boot_api(cabled: Cabled, live_server, tmp_path: Path) -> Iterator[str]:
    """The live server's agent API as the server namespaces see it: http://127.0.0.1:8080/boot/api, relayed
    by a socat in each namespace to a Unix socket (a path crosses network namespaces) and by one on the host
    from that socket to the live server."""
    sock = tmp_path / "boot.sock"
    live_port = urlsplit(live_server.url).port
    relays = [
        subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{sock},fork,unlink-early", f"TCP:127.0.0.1:{live_port}"],
            start_new_session=True,
        )
    ]
    for namespace in (cabled.server, cabled.dark):
        relays.append(
            subprocess.Popen(
                ["ip", "netns", "exec", namespace, "socat",
                 f"TCP-LISTEN:{RELAY_PORT},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{sock}"],
                start_new_session=True,
            )
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not all(_listening(ns) for ns in (cabled.server, cabled.dark)) or not sock.exists():
            assert time.monotonic() < deadline, "the relay to the boot service did not start"
            time.sleep(0.1)
        yield f"http://127.0.0.1:{RELAY_PORT}/boot/api"
    finally:
        for relay in relays:
            os.killpg(relay.pid, signal.SIGTERM)
            relay.wait(timeout=10)


def _listening(namespace: str) -> bool:
    shown = subprocess.run(["ip", "netns", "exec", namespace, "ss", "-ltnH"], capture_output=True, text=True)
    return f"127.0.0.1:{RELAY_PORT}" in shown.stdout


def _instructions(sha256: str) -> dict:
    return {
        "action": "deploy",
        "node": "node-h100-8x-01",
        # never fetched when the cabling is wrong; port 9 inside the namespace refuses when it is right
        "image": {"url": "http://127.0.0.1:9/image.raw", "sha256": sha256, "format": "raw", "size": MIB},
        "config": {"hostname": "node-h100-8x-01", "authorized_keys": [], "network": {}},
    }


@dataclasses.dataclass
class Deploy:
    node: object
    operation: object
    ticket: object
    disk: Path
    disk_bytes: bytes


@pytest.fixture
def deploy_of(transactional_db, inventory, fake_hw_dir, live_server, settings, tmp_path: Path):
    """A deploy of node-h100-8x-01 whose ticket the node's PXE boot claimed (over HTTP), recorded as cabled
    to ``switch``/``port``, with a disk of its own; the node powered on through its (fake) BMC."""
    from provisioner import hardware
    from provisioner.boot.tickets import open_ticket
    from provisioner.engine.queue import create_operation
    from provisioner.models import Image, Node
    from provisioner.pxe.ipxe import parse_ipxe_script

    settings.NEOCLOUD_DEPLOY_DRIVER = "ansible"

    def make(switch: str, port: str) -> tuple[Deploy, str]:
        Node.objects.filter(boot_mac=MAC).update(
            switch_name=switch, switch_port=port, primary_address="198.18.0.9"
        )
        node = Node.objects.get(boot_mac=MAC)
        power = hardware.power_driver(node)
        power.power_on()
        power.close()
        image = Image.objects.first()
        operation = create_operation("provision", node, params={"image_id": image.pk})
        ticket = open_ticket(node, operation, _instructions(image.sha256))
        with urllib.request.urlopen(f"{live_server.url}/boot/{MAC}.ipxe", timeout=10) as answer:
            token = parse_ipxe_script(answer.read().decode()).kernel_params()["neocloud.token"]
        disk = tmp_path / "disk.img"
        content = (b"previous OS " * (4 * MIB // 12 + 1))[: 4 * MIB]
        disk.write_bytes(content)
        return Deploy(node, operation, ticket, disk, content), token

    return make


def run_agent(namespace: str, api: str, token: str, disk: Path, *extra: str):
    return in_namespace(
        namespace,
        sys.executable, "-m", "provisioner.pxe.agent", "--api", api, "--disk", str(disk),
        "--lldp-interface", "eth1", *extra,
        env={"NEOCLOUD_TOKEN": token},
    )  # fmt: skip


def _deploy_step(deploy: Deploy):
    """The engine's deploy step, run again as the agent's report wakes it: (the error it raised, its log)."""
    from provisioner.engine.context import StepContext
    from provisioner.engine.registry import STEPS
    from provisioner.lifecycle import Actor
    from provisioner.models import LogLine

    op = deploy.operation
    ctx = StepContext(op, op.steps.get(name="deploy"), Actor.system("test"), threading.Event())
    ctx.save_data(ticket=deploy.ticket.pk, phase="agent")  # as the step left it when it netbooted the node
    with pytest.raises(Exception) as raised:
        STEPS["deploy"].fn(ctx)
    return raised.value, list(LogLine.objects.filter(operation=op).values_list("message", flat=True))


def test_a_forced_mis_cabling_is_caught_by_lldp_before_the_image_is_written(cabled, boot_api, deploy_of):
    from provisioner import hardware
    from provisioner.drivers.base import PowerState
    from provisioner.errors import CablingMismatch

    switch = cabled.switch.name
    deploy, token = deploy_of(switch, "swp3")  # recorded at swp3; the namespace is cabled to swp5

    agent = run_agent(cabled.server, boot_api, token, deploy.disk, "--lldp-timeout", str(HEAR_TIMEOUT))

    sentence = (
        f"node-h100-8x-01's boot NIC is cabled to {switch} port swp5 (heard by LLDP) but recorded at "
        f"{switch} port swp3: deploy stopped; fix the cabling or the inventory"
    )
    assert agent.returncode == 1, agent.stderr
    assert sentence in agent.stderr
    assert deploy.disk.read_bytes() == deploy.disk_bytes  # nothing written, not even the markers wiped
    deploy.ticket.refresh_from_db()
    assert deploy.ticket.instructions_fetched_at is not None
    assert deploy.ticket.result["error_code"] == "cabling_mismatch"
    assert deploy.ticket.result["message"] == sentence
    assert deploy.ticket.result["lldp"]["switch"] == switch and deploy.ticket.result["lldp"]["port"] == "swp5"

    error, log = _deploy_step(deploy)
    assert isinstance(error, CablingMismatch) and str(error) == sentence
    assert error.retryable is False
    assert f"LLDP on eth1: switch {switch} port swp5" in log
    assert any("powered off" in line for line in log)
    power = hardware.power_driver(deploy.node)
    assert power.get_power_state() == PowerState.OFF
    power.close()


def test_nothing_heard_while_cabling_is_recorded_stops_the_deploy_too(cabled, boot_api, deploy_of):
    from provisioner.errors import CablingMismatch

    deploy, token = deploy_of(cabled.switch.name, "swp3")
    agent = run_agent(cabled.dark, boot_api, token, deploy.disk, "--lldp-timeout", "3")
    assert agent.returncode == 1, agent.stderr
    assert deploy.disk.read_bytes() == deploy.disk_bytes
    deploy.ticket.refresh_from_db()
    assert deploy.ticket.result["error_code"] == "cabling_unconfirmed"
    assert deploy.ticket.result["message"].startswith(
        "node-h100-8x-01's boot NIC heard no LLDP announcement on eth1 (no LLDP announcement arrived on eth1 "
        f"within 3 s) but is recorded at {cabled.switch.name} port swp3: deploy stopped"
    )
    error, log = _deploy_step(deploy)
    assert isinstance(error, CablingMismatch) and error.retryable is False
    assert "LLDP on eth1: nothing heard (no LLDP announcement arrived on eth1 within 3 s)" in log


def test_the_right_cabling_lets_the_agent_go_on_to_the_image(cabled, boot_api, deploy_of):
    from provisioner.errors import CablingMismatch, DeployFailed

    deploy, token = deploy_of(cabled.switch.name, "swp5")
    agent = run_agent(cabled.server, boot_api, token, deploy.disk, "--lldp-timeout", str(HEAR_TIMEOUT))
    # confirmed: it went on to fetch the image (nothing serves it inside the namespace)
    assert agent.returncode == 1, agent.stderr
    deploy.ticket.refresh_from_db()
    assert deploy.ticket.result["error_code"] == "image_download_failed"
    assert deploy.ticket.result["lldp"]["port"] == "swp5"
    error, log = _deploy_step(deploy)
    assert isinstance(error, DeployFailed) and not isinstance(error, CablingMismatch)
    assert f"LLDP on eth1: switch {cabled.switch.name} port swp5" in log
