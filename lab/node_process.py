"""One lab node as a process: its BMC endpoint, its SimulatedServer and the firmware hooks.

    python -m lab.node_process --lab-dir var/lab --name lab-node-01 --boot-url http://...

The BMC password is read from lab.json, never from the command line. The firmware comes from
``lab.firmware:Firmware(spec, lab_dir, boot_url)`` when that module exists; its hooks run on
one background thread, in order, so the BMC answers a power command at once as real BMCs do.

``--group FILE`` serves many IPMI BMCs (LabNodeSpec dicts in a JSON list) in one process without
firmware or persisted state: the light mode used by bench/power_sweep.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import queue
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from lab.machine import FirmwareHooks, NoFirmware, SimulatedServer
from lab.spec import LabNodeSpec, load_specs
from provisioner.drivers.base import BootSetting

log = logging.getLogger("lab.node")

FIRMWARE_MODULE = "lab.firmware"


class BackgroundHooks:
    """Runs another FirmwareHooks' calls on one worker thread, in the order the BMC made them."""

    def __init__(self, inner: FirmwareHooks) -> None:
        self.inner = inner
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue()
        self._pending = 0  # power changes queued or running
        self._pending_lock = threading.Lock()
        threading.Thread(target=self._run, name="firmware-hooks", daemon=True).start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                job()
            except Exception:  # a firmware bug must not kill the BMC
                log.exception("firmware hook failed")
            finally:
                with self._pending_lock:
                    self._pending -= 1

    def _put(self, job: Callable[[], None]) -> None:
        with self._pending_lock:
            self._pending += 1
        self._queue.put(job)

    def on_power_on(self, spec: LabNodeSpec, boot: BootSetting) -> None:
        self._put(lambda: self.inner.on_power_on(spec, boot))

    def on_power_off(self, spec: LabNodeSpec) -> None:
        self._put(lambda: self.inner.on_power_off(spec))

    def halted(self, spec: LabNodeSpec) -> bool:
        """Never while a power change is still queued: the machine it would report on is the previous one."""
        with self._pending_lock:
            if self._pending:
                return False
        return self.inner.halted(spec)


def load_firmware(spec: LabNodeSpec, lab_dir: Path, boot_url: str) -> FirmwareHooks:
    """The lab firmware for a node: an emulated computer for the ``qemu`` kind, else the simulated firmware,
    or no-op hooks when lab.firmware is not installed."""
    if spec.kind == "qemu":
        from lab.qemu_firmware import QemuFirmware

        return QemuFirmware(spec, lab_dir, boot_url)
    try:
        module = importlib.import_module(FIRMWARE_MODULE)
    except ModuleNotFoundError as err:
        if err.name != FIRMWARE_MODULE:
            raise
        return NoFirmware()
    return module.Firmware(spec, lab_dir, boot_url)  # type: ignore[no-any-return]


def node_dir(lab_dir: Path, name: str) -> Path:
    return lab_dir / "nodes" / name


def _exit_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run_node(lab_dir: Path, name: str, boot_url: str) -> None:
    """Serve one lab node until SIGTERM."""
    specs = {s.name: s for s in load_specs(lab_dir)}
    if name not in specs:
        raise SystemExit(f"node {name!r} is not in {lab_dir / 'lab.json'}")
    spec = specs[name]
    directory = node_dir(lab_dir, name)
    directory.mkdir(parents=True, exist_ok=True)
    hooks = BackgroundHooks(load_firmware(spec, lab_dir, boot_url))
    server = SimulatedServer(spec, directory, hooks)
    _exit_on_sigterm()
    if spec.bmc_protocol == "ipmi":
        from lab.bmc_ipmi import LabIpmiBmc, serve_forever

        LabIpmiBmc(server, spec.bmc_address, spec.bmc_port, spec.bmc_username, spec.bmc_password)
        log.info("IPMI BMC of %s on %s:%d", name, spec.bmc_address, spec.bmc_port)
        serve_forever()
    elif spec.bmc_protocol == "redfish":
        from lab.bmc_redfish import RedfishHttpServer, RedfishService

        service = RedfishService({spec.system_id or name: server}, spec.bmc_username, spec.bmc_password)
        httpd = RedfishHttpServer(spec.bmc_address, spec.bmc_port, service)
        log.info("Redfish BMC of %s on %s:%d", name, spec.bmc_address, spec.bmc_port)
        try:
            httpd.serve_forever(poll_interval=0.5)
        finally:
            httpd.server_close()
    else:
        raise SystemExit(f"node {name!r}: unknown BMC protocol {spec.bmc_protocol!r}")


def run_group(group_file: Path) -> None:
    """Serve many IPMI BMCs in this process (light mode: no firmware, state in memory only)."""
    from lab.bmc_ipmi import LabIpmiBmc, serve_forever

    _exit_on_sigterm()
    for data in json.loads(group_file.read_text()):
        spec = LabNodeSpec.from_dict(data)
        LabIpmiBmc(
            SimulatedServer(spec, None), spec.bmc_address, spec.bmc_port, spec.bmc_username, spec.bmc_password
        )
    serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lab-dir", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--boot-url", default="")
    parser.add_argument("--group", type=Path, help="JSON list of IPMI node specs served by this process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.group:
        run_group(args.group)
    elif args.lab_dir and args.name:
        run_node(args.lab_dir, args.name, args.boot_url)
    else:
        parser.error("give --lab-dir and --name, or --group")


if __name__ == "__main__":
    main(sys.argv[1:])
