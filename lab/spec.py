"""The description of one lab server, shared by the BMC endpoints, the firmware and the sshd runner.

The lab keeps its state under ``LAB_DIR`` (default ``var/lab`` in the project): ``lab.json`` lists the
nodes (one ``LabNodeSpec`` each); every node has a directory with its file-backed disk and logs.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

# The 8-GPU H100 server type (inventory YAML's fields, less its slug) that the tests and the benches enroll
# for their fake and lab servers: one definition, so that their figures and messages agree.
H100_8X_TYPE: dict[str, Any] = {
    "name": "8x H100 SXM",
    "cpu_model": "Xeon 8480+",
    "cpu_cores": 112,
    "ram_gib": 2048,
    "gpu_model": "NVIDIA H100 80GB HBM3",
    "gpu_count": 8,
    "gpu_memory_gib": 80,
    "pcie_gen": 5,
    "pcie_width": 16,
    "nvlink_links": 18,
    "disk_gib": 7680,
}


@dataclasses.dataclass
class LabNodeSpec:
    name: str  # e.g. "lab-h100-01"
    index: int  # 1-based, stable: derives addresses
    server_type: str  # ServerType slug, e.g. "h100-8x"
    mac: str  # boot NIC MAC, lower-case colon form
    bmc_protocol: str  # "ipmi" | "redfish"
    bmc_address: str  # its own loopback address, e.g. 127.0.10.1
    bmc_port: int  # 623 for IPMI, 8000 for Redfish
    bmc_username: str
    bmc_password: str = dataclasses.field(repr=False)
    system_id: str = ""  # Redfish ComputerSystem id ("" for IPMI)
    ssh_address: str = ""  # in 198.18.0.0/15, inside the node's network namespace
    netns: str = ""  # network namespace name, e.g. "nc-lab-01"
    disk_path: str = ""  # file-backed disk
    disk_size: int = 256 * 1024 * 1024
    # "simulated": the lab firmware runs the agent on this host, in the node's network namespace (lab.firmware);
    # "qemu": an emulated computer, powered by the BMC (lab.qemu_firmware)
    kind: str = "simulated"
    image_port: int = 8090  # qemu kind: the loopback port of the image server the guest sees at 10.0.2.101
    ssh_forward_port: int = 0  # qemu kind: 127.0.0.1:<port> reaches the guest's sshd (0: not forwarded)
    post_seconds: float = 0.0  # the power-on self-test's time, already scaled (lab.post)
    # the switched lab (lab.switched): eth0 is cabled to this switch port ("" : a veth straight to the host)
    switch_name: str = ""
    switch_port: str = ""

    @property
    def bmc_scheme(self) -> str:
        """The Redfish service's URL scheme: the lab's Redfish BMC speaks plain HTTP ("" for IPMI)."""
        return "http" if self.bmc_protocol == "redfish" else ""

    def os_python(self) -> str:
        """The Python of the OS this node runs once deployed: a simulated node's "OS" is this host's, run
        in the node's network namespace; an emulated computer boots the lab OS image (Debian's python3)."""
        return sys.executable if self.kind == "simulated" else "/usr/bin/python3"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabNodeSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def load_specs(lab_dir: Path) -> list[LabNodeSpec]:
    path = lab_dir / "lab.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return [LabNodeSpec.from_dict(d) for d in data.get("nodes", [])]
