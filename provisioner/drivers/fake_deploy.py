"""Fake deploy and burn-in drivers for engine tests: the power and boot sequence really runs through the
node's power driver (fake, IPMI or Redfish), while the disk and the OS are simulated in a JSON file per node
under the fake-hardware directory, so a test process and a real worker process see the same fake machine.

Fault injection: ``<dir>/<node>.faults.json`` with {"deploy": "checksum"|"crash", "burnin": {...faults}}.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from provisioner.drivers.base import (
    BootDevice,
    BootSetting,
    BurnInDriver,
    DeployDriver,
    DeployRequest,
    DeployResult,
    HandoverRequest,
    HandoverResult,
    PersonalizeRequest,
    PowerDriver,
    PowerState,
)
from provisioner.errors import DeployFailed, DriverError, ImageChecksumMismatch


def _faults(state_dir: Path, node_name: str) -> dict[str, Any]:
    path = state_dir / f"{node_name}.faults.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _disk_path(state_dir: Path, node_name: str) -> Path:
    return state_dir / f"{node_name}.disk.json"


class FakeDeployDriver(DeployDriver):
    def __init__(self, power: PowerDriver, state_dir: Path, agent_seconds: float = 0.0) -> None:
        """``agent_seconds``: how long the (fake) deploy agent takes to stream or erase; with it, the step
        waits for the agent as a real deploy does (parked, no worker held) instead of finishing at once."""
        self.power = power
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.agent_seconds = agent_seconds

    def _netboot_and_wait(self, node_name: str, ctx: Any) -> None:
        """Boot the (fake) deploy ramdisk once per attempt, then wait for its agent to be done."""
        if not self.agent_seconds or ctx.data.get("phase") is None:
            self.power.power_off()
            self.power.set_boot_device(BootSetting(BootDevice.PXE))
            self.power.power_on()
            ctx(f"{node_name}: PXE boot into the (fake) deploy ramdisk")
            if not self.agent_seconds:
                return
            ctx.save_data(phase="agent", agent_done_at=time.time() + self.agent_seconds)
        remaining = ctx.data["agent_done_at"] - time.time()
        if remaining > 0:
            ctx.wait("the deploy agent", timeout=self.agent_seconds + 60, recheck_every=remaining)

    def deploy(self, request: DeployRequest, log: Any) -> DeployResult:
        from provisioner.sshkeys import generate_keypair, parse_public_key

        self._netboot_and_wait(request.node_name, log)
        fault = _faults(self.state_dir, request.node_name).get("deploy")
        if fault == "checksum":
            _disk_path(self.state_dir, request.node_name).unlink(missing_ok=True)
            raise ImageChecksumMismatch(
                f"image written to {request.node_name} does not match sha256 {request.image_sha256[:12]}…"
            )
        if fault == "crash":
            raise DeployFailed(f"the deploy agent on {request.node_name} stopped without reporting back")
        _, host_public = generate_keypair("ed25519")
        host = parse_public_key(host_public)
        disk = {
            "image_sha256": request.image_sha256,
            "hostname": request.hostname,
            "authorized_keys": [*request.authorized_keys, request.provisioning_public_key],
            "host_key": host_public,
            # the config drive's private_network (network-managed sites), as the deploy agent writes it
            **({"private_network": dict(request.private_network)} if request.private_network else {}),
        }
        _disk_path(self.state_dir, request.node_name).write_text(json.dumps(disk))
        self.power.set_boot_device(BootSetting(BootDevice.DISK, persistent=True))
        self.power.reset()
        if self.power.get_power_state() != PowerState.ON:
            raise DeployFailed(f"{request.node_name} did not power on after deploy")
        address = f"{request.node_name}.fake.invalid"
        return DeployResult(
            address=address,
            ssh_port=22,
            host_key_fingerprints={host.key_type: host.fingerprint},
            known_hosts=f"{address} {host.key_type} {host.blob_b64}",
        )

    def personalize(self, request: PersonalizeRequest, log: Any) -> DeployResult:
        """The fake warm server: checks the warm-time host key, writes a new one and the customer's keys."""
        from provisioner.sshkeys import fingerprint_sha256, generate_keypair, parse_public_key

        path = _disk_path(self.state_dir, request.node_name)
        if not path.exists():
            raise DriverError(f"{request.node_name} has no deployed OS to personalize")
        disk = json.loads(path.read_text())
        key_type, blob = disk["host_key"].split()[:2]
        if request.expected_fingerprints.get(key_type) != fingerprint_sha256(base64.b64decode(blob)):
            raise DriverError(f"host key of {request.node_name} does not match its warm-time one")
        _, host_public = generate_keypair("ed25519")
        host = parse_public_key(host_public)
        disk["host_key"] = host_public
        disk["authorized_keys"] = [*disk["authorized_keys"], *request.customer_keys]
        path.write_text(json.dumps(disk))
        log(f"{request.node_name}: new host key {host.fingerprint}; the customer's keys installed")
        return DeployResult(
            address=request.address,
            ssh_port=request.port,
            host_key_fingerprints={host.key_type: host.fingerprint},
            known_hosts=f"{request.address} {host.key_type} {host.blob_b64}",
        )

    def handover(self, request: HandoverRequest, log: Any) -> HandoverResult:
        path = _disk_path(self.state_dir, request.node_name)
        if not path.exists():
            raise DriverError(f"{request.node_name} has no deployed OS to hand over")
        disk = json.loads(path.read_text())
        key_type, blob = disk["host_key"].split()[:2]
        from provisioner.sshkeys import fingerprint_sha256

        actual = fingerprint_sha256(base64.b64decode(blob))
        if request.expected_fingerprints.get(key_type) != actual:
            raise DriverError(f"host key of {request.node_name} does not match the one generated at deploy")
        disk["authorized_keys"] = [k for k in disk["authorized_keys"] if k != request.provisioning_public_key]
        path.write_text(json.dumps(disk))
        return HandoverResult(
            host_key_fingerprints={key_type: actual},
            known_hosts=f"{request.address} {key_type} {blob}",
            ssh_command=f"ssh {request.username}@{request.address}",
        )

    def wipe(self, node_name: str, log: Any) -> None:
        if self.agent_seconds:
            self._netboot_and_wait(node_name, log)
        self.power.power_off()
        _disk_path(self.state_dir, node_name).unlink(missing_ok=True)
        self.power.set_boot_device(BootSetting(BootDevice.PXE, persistent=True))
        log(f"{node_name}: disk wiped, next boot from network")


class FakeBurnInDriver(BurnInDriver):
    """Runs the real burn-in checks in-process against the simulated NVML backend (faults per node)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)

    def run(self, node_name: str, expectations: Any, log: Any) -> dict[str, Any]:
        from provisioner.burnin.runner import run_burnin
        from provisioner.burnin.simulated import SimulatedBackend

        faults = _faults(self.state_dir, node_name).get("burnin", {})
        backend = SimulatedBackend(simulated_profile(expectations["expect"]), faults=faults)
        return run_burnin(
            backend,
            expectations["expect"],
            expectations.get("thresholds") or {},
            load_seconds=0.3,
            xid_wait_seconds=0.05,
            sample_interval_s=0.1,
        )


def simulated_profile(expect: dict[str, Any]) -> Any:
    """A healthy simulated server matching a server type's expectations (H100-like thermals and power)."""
    import dataclasses

    from provisioner.burnin.simulated import PROFILES

    return dataclasses.replace(
        PROFILES["h100-sxm-8x"],
        gpu_count=expect["gpu_count"],
        model=expect["gpu_model"],
        memory_bytes=int(expect.get("gpu_memory_gib") or 80) * 1024**3 - 1024**3 // 2,
        pcie_gen=expect.get("pcie_gen") or 5,
        pcie_width=expect.get("pcie_width") or 16,
        nvlinks=expect.get("nvlink_links") or 0,
    )
