"""The simulated firmware of a lab node: what a server does between power-on and its OS.

``Firmware(spec, lab_dir, boot_url)`` implements the hooks SimulatedServer calls
(lab.machine.FirmwareHooks):

- power on, boot device PXE: like iPXE, GET ``<boot_url>/boot/<mac>.ipxe`` (MAC in lower-case colon
  form), parse the script, GET its kernel and initrd, then run the real deploy agent
  (``python -m provisioner.pxe.agent``) against the node's disk with the API and token from the
  kernel arguments. A script that ``exit``s, or a boot service that cannot be reached, falls through to
  the disk, as real firmware tries its next boot device.

Where the boot service is on the lab network (``boot_url`` at 198.18.0.1, as lab.supervisor hands it: the
provisioning relay, lab.provisioning_relay), everything the server does over the network happens inside its
own network namespace, over its own eth0, as on a site: the script, kernel and initrd are fetched from a
thread that entered the namespace (lab.netns.call_in_namespace), and the agent runs under
``ip netns exec`` (its image download, reports, heartbeats and LLDP listening all go through eth0). The
network starts as a fresh boot finds it (lab.netns.boot_node_network: the provisioning address alone; a
switched server's port stays on whatever VLAN the switch has it on, so a server moved off the provisioning
VLAN reaches no boot service). A boot service on loopback (a test's) is reached from the host, as before.
- power on, boot device DISK: read the config drive; if there is one, start the node's OS
  (``lab.sshd.start_node_os``), else the console says "no bootable device".
- power off: kill the agent if it runs, stop the node's OS.

The hooks return at once (the boot runs on a thread): a BMC command never waits for a deploy.
Per node, ``<lab_dir>/nodes/<name>/console.log`` is the firmware's console and ``agent.log`` the
agent's output. Faults, from ``<lab_dir>/nodes/<name>/faults.json`` (the file the lab BMC reads too):
``{"agent_crash": true}`` kills the agent after it wrote ``AGENT_CRASH_AFTER_BYTES``;
``{"image_corruption": true}`` flips one byte of the image stream the agent receives.
"""

from __future__ import annotations

import datetime
import importlib
import ipaddress
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lab import netns, post
from lab.netns import NODE_INTERFACE, LabNetworkError, call_in_namespace
from lab.spec import LabNodeSpec
from provisioner.drivers.base import BootDevice, BootSetting
from provisioner.pxe.configdrive import ConfigDriveError, read_config_drive
from provisioner.pxe.ipxe import (
    BOOT_RETRY_SECONDS,
    IpxeScriptError,
    is_chained_script,
    normalize_mac,
    parse_ipxe_script,
)

log = logging.getLogger("lab.firmware")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FAULTS_FILE = "faults.json"
AGENT_CRASH_AFTER_BYTES = 4 * 1024 * 1024
CORRUPT_OFFSET = 512 * 1024 + 17  # inside any image worth deploying, past the first chunk boundary
HTTP_TIMEOUT = 10.0
MAX_SCRIPT_BYTES = 64 * 1024
SSHD_MODULE = "lab.sshd"
MAX_CHAINED_SCRIPTS = 60  # a boot service that keeps saying "try again" for 5 min: give up as iPXE would not


class Firmware:
    """The firmware hooks of one lab node. Thread-safe; one boot at a time."""

    def __init__(self, spec: LabNodeSpec, lab_dir: Path, boot_url: str) -> None:
        self.spec = spec
        self.lab_dir = Path(lab_dir)
        self.boot_url = boot_url.rstrip("/")
        # the server's own network (its namespace) reaches a boot service on the lab network; this host's
        # loopback is reached from the host
        self.in_namespace = bool(spec.netns) and _on_lab_network(self.boot_url)
        self.node_dir = self.lab_dir / "nodes" / spec.name
        self.node_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every power change: a stale boot thread stops
        self._agent: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self.agent_returncode: int | None = None
        self.os_started = False

    # --- hooks ------------------------------------------------------------------------------------

    def on_power_on(self, spec: LabNodeSpec, boot: BootSetting) -> None:
        """Start booting ``boot.device`` on a thread and return at once."""
        with self._lock:
            self._generation += 1
            generation = self._generation
            self.agent_returncode = None
        self._console(f"power on: boot {boot.device.value} ({boot.mode.value})")
        target = self._pxe_boot if boot.device == BootDevice.PXE else self._disk_boot

        def post_then_boot(generation: int) -> None:
            if post.run(
                self.node_dir, spec.post_seconds, lambda: self._generation == generation, self._console
            ):
                target(generation)

        thread = threading.Thread(
            target=post_then_boot, args=(generation,), name=f"firmware-{spec.name}", daemon=True
        )
        self._thread = thread
        thread.start()

    def halted(self, spec: LabNodeSpec) -> bool:
        """Never: the simulated deploy ramdisk waits for the BMC's next command, like one that does not
        power off when it is done."""
        return False

    def on_power_off(self, spec: LabNodeSpec) -> None:
        """Kill the agent if it runs and stop the node's OS. Idempotent."""
        with self._lock:
            self._generation += 1
            agent = self._agent
        post.write_state(self.node_dir, "off")
        self._console("power off")
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
            self._console("power off: deploy agent killed")
        sshd = self._sshd_module()
        if sshd is not None:
            try:
                sshd.stop_node_os(self.spec, self.lab_dir)
            except Exception as exc:  # the power is off whatever the OS runner says
                self._console(f"power off: stopping the OS failed: {exc}")
        self.os_started = False

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the current boot (and its agent) finished. For tests and `lab` tooling."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    # --- PXE ----------------------------------------------------------------------------------------

    def _pxe_boot(self, generation: int) -> None:
        if self.in_namespace:
            try:
                netns.boot_node_network(self.spec)
            except LabNetworkError as exc:
                self._console(f"PXE: no link on {NODE_INTERFACE} ({exc}); trying the next boot device")
                self._disk_boot(generation)
                return
        mac = normalize_mac(self.spec.mac)
        script_url = f"{self.boot_url}/boot/{mac}.ipxe"
        for _ in range(MAX_CHAINED_SCRIPTS):
            self._console(f"PXE: GET {script_url}")
            try:
                script = parse_ipxe_script(self._get(script_url, MAX_SCRIPT_BYTES).decode())
            except (OSError, IpxeScriptError, UnicodeDecodeError) as exc:
                self._console(f"PXE: no boot script ({exc}); trying the next boot device")
                self._disk_boot(generation)
                return
            if not (script.boots and script.kernel_url and is_chained_script(script.kernel_url)):
                break
            # the boot service asked to be asked again (iPXE: sleep, then chain to the script)
            self._console(f"PXE: the boot service asks to try again in {BOOT_RETRY_SECONDS} s")
            time.sleep(BOOT_RETRY_SECONDS)
            with self._lock:
                if generation != self._generation:
                    return  # powered off meanwhile
            script_url = script.kernel_url
        if script.exits or not script.boots or not script.kernel_url:
            self._console("PXE: the script exits; trying the next boot device")
            self._disk_boot(generation)
            return
        try:
            kernel = self._get(script.kernel_url)
            self._console(f"PXE: kernel {script.kernel_url}: {len(kernel)} bytes")
            for url in script.initrd_urls:
                self._console(f"PXE: initrd {url}: {len(self._get(url))} bytes")
        except OSError as exc:
            self._console(f"PXE: boot failed, cannot load the deploy ramdisk: {exc}")
            return
        params = script.kernel_params()
        api, token = params.get("neocloud.api"), params.get("neocloud.token")
        if not api or not token:
            self._console("PXE: the kernel command line has no neocloud.api/neocloud.token; halted")
            return
        self._run_agent(generation, api, token)

    def _run_agent(self, generation: int, api: str, token: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEOCLOUD_FAULT_")}
        env.update(NEOCLOUD_TOKEN=token, PYTHONPATH=str(PROJECT_ROOT), PYTHONUNBUFFERED="1")
        faults = self._faults()
        if faults.get("image_corruption"):
            env["NEOCLOUD_FAULT_CORRUPT_OFFSET"] = str(CORRUPT_OFFSET)
            self._console("fault injection: the image stream will be corrupted")
        if faults.get("agent_crash"):
            env["NEOCLOUD_FAULT_CRASH_AFTER_BYTES"] = str(AGENT_CRASH_AFTER_BYTES)
            self._console("fault injection: the deploy agent will crash mid-write")
        cmd = [sys.executable, "-m", "provisioner.pxe.agent", "--api", api, "--disk", self.spec.disk_path]
        if self.in_namespace:
            # `ip netns exec` enters the namespace and execs the agent: the child's pid is the agent's
            cmd = ["ip", "netns", "exec", self.spec.netns, *cmd, "--lldp-interface", NODE_INTERFACE]
        with open(self.node_dir / "agent.log", "ab") as agent_log, self._lock:
            if generation != self._generation:
                return  # powered off (or cycled) while the ramdisk was loading
            # The token goes by environment, not argv, so it never shows in the process list.
            self._agent = subprocess.Popen(
                cmd,
                env=env,
                cwd=PROJECT_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=agent_log,
                stderr=agent_log,
            )
            agent = self._agent
        self._console(f"deploy ramdisk: agent started (pid {agent.pid})")
        returncode = agent.wait()
        with self._lock:
            if self._agent is agent:
                self._agent = None
            self.agent_returncode = returncode
        self._console(f"deploy ramdisk: agent exited with {returncode}")

    # --- disk ---------------------------------------------------------------------------------------

    def _disk_boot(self, generation: int) -> None:
        disk = self.spec.disk_path
        if not disk or not os.path.exists(disk):
            self._console("disk: no disk attached: no bootable device")
            return
        try:
            document = read_config_drive(disk)
        except (OSError, ConfigDriveError) as exc:
            self._console(f"disk: unreadable config drive ({exc}): no bootable device")
            return
        if document is None:
            self._console("disk: no operating system on the disk: no bootable device")
            return
        with self._lock:
            if generation != self._generation:
                return
        self._console(
            f"disk: booting {document.get('hostname', '?')} (deployed {document.get('deployed_at')})"
        )
        sshd = self._sshd_module()
        if sshd is None:
            self._write_marker(document)
            self._console("disk: OS booted (no sshd runner in this lab: marker written)")
            self.os_started = True
            return
        try:
            sshd.start_node_os(self.spec, document, self.lab_dir)
        except Exception as exc:  # the console shows why the OS did not come up, as a real one would
            self._console(f"disk: the OS failed to start: {exc}")
            return
        self.os_started = True
        self._console("disk: OS up (sshd running)")

    def _write_marker(self, document: dict[str, Any]) -> None:
        marker = {"hostname": document.get("hostname"), "booted_at": _now()}
        (self.node_dir / "os-booted.json").write_text(json.dumps(marker))

    # --- helpers ------------------------------------------------------------------------------------

    def _sshd_module(self) -> Any:
        try:
            return importlib.import_module(SSHD_MODULE)
        except ModuleNotFoundError as err:
            if err.name != SSHD_MODULE:
                raise
            return None

    def _faults(self) -> dict[str, Any]:
        try:
            data = json.loads((self.node_dir / FAULTS_FILE).read_text() or "{}")
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _get(self, url: str, limit: int | None = None) -> bytes:
        if not url.startswith(("http://", "https://")):
            raise OSError(f"unsupported URL scheme in {url}")
        if self.in_namespace:
            try:
                return call_in_namespace(self.spec.netns, lambda: self._fetch(url, limit))
            except LabNetworkError as exc:
                raise OSError(str(exc)) from None
        return self._fetch(url, limit)

    @staticmethod
    def _fetch(url: str, limit: int | None) -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:  # noqa: S310 - scheme checked
                return response.read(limit) if limit else response.read()
        except urllib.error.HTTPError as exc:
            raise OSError(f"HTTP {exc.code} for {url}") from None
        except urllib.error.URLError as exc:
            raise OSError(f"{url}: {exc.reason}") from None

    def _console(self, line: str) -> None:
        # The script URL and kernel arguments carry the token: never echo a kernel command line here.
        with open(self.node_dir / "console.log", "a") as fh:
            fh.write(f"{_now()} {line}\n")
        log.info("%s: %s", self.spec.name, line)


def _on_lab_network(url: str) -> bool:
    try:
        return ipaddress.ip_address(urlsplit(url).hostname or "") in netns.LAB_NETWORK
    except ValueError:
        return False


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
