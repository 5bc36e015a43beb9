"""What differs per node for the Ansible deploy and burn-in drivers, recorded as node data at enrollment.

Like Ironic's ``driver_info``: ``Node.driver_info`` is a mapping the inventory gives per node (its
``driver_info:`` entry), checked when the node is enrolled, so a typo is refused then with the key named
instead of surfacing as a failed burn-in later. Every key is optional; a node without any is a real server:

  python                   the interpreter Ansible uses on the deployed OS (default /usr/bin/python3)
  burnin_backend           ``nvml`` (default: the GPUs through NVML) or ``simulated`` (no GPU: a simulated
                           host of the server type, as the lab's servers are)
  burnin_faults_file       absolute path of a JSON file of faults to inject into a simulated burn-in, read on
                           the control host when each burn-in starts (absent file: no faults)
  burnin_load_seconds      how long the GPUs are loaded (default NEOCLOUD_BURNIN_LOAD_SECONDS)
  burnin_xid_wait_seconds  how long the burn-in waits for Xid events after the load (default 5)
  burnin_sample_interval   seconds between telemetry samples under load (default 1)
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from django.conf import settings

from provisioner.errors import DriverError, InvalidRequest
from provisioner.models import Node

DEFAULT_PYTHON = "/usr/bin/python3"
BURNIN_BACKENDS = ("nvml", "simulated")
DEFAULT_XID_WAIT_SECONDS = 5.0
DEFAULT_SAMPLE_INTERVAL = 1.0
# An interpreter path is passed to Ansible and to the burn-in playbook's shell: a plain absolute path only.
_INTERPRETER = re.compile(r"^/[A-Za-z0-9._+/-]+$")
# Upper bounds of the durations: a day of load, an hour of waiting or between samples.
_SECONDS_KEYS = {
    "burnin_load_seconds": 86400.0,
    "burnin_xid_wait_seconds": 3600.0,
    "burnin_sample_interval": 3600.0,
}
KEYS = ("python", "burnin_backend", "burnin_faults_file", *_SECONDS_KEYS)


def _seconds(key: str, value: Any, where: str) -> float:
    bound = _SECONDS_KEYS[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{where}: driver_info {key} must be a number of seconds, not {value!r}")
    if not 0 < value <= bound:
        raise InvalidRequest(f"{where}: driver_info {key} must be more than 0 and at most {bound:g} seconds")
    return float(value)


def checked_driver_info(data: Any, where: str) -> dict[str, Any]:
    """The driver_info mapping of an inventory entry, checked: what is stored as ``Node.driver_info``.

    :raises InvalidRequest: ``data`` is not a mapping, has a key not listed in this module's docstring, or a
        value of the wrong kind; the message names ``where`` and the key.
    """
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidRequest(f"{where}: driver_info must be a mapping of {', '.join(KEYS)}")
    unknown = sorted(str(k) for k in data if k not in KEYS)
    if unknown:
        raise InvalidRequest(
            f"{where}: driver_info {', '.join(unknown)} is not a known key (known: {', '.join(KEYS)})"
        )
    info: dict[str, Any] = {}
    if "python" in data:
        python = data["python"]
        if not isinstance(python, str) or not _INTERPRETER.match(python):
            raise InvalidRequest(
                f"{where}: driver_info python must be an absolute path such as {DEFAULT_PYTHON}, not {python!r}"
            )
        info["python"] = python
    if "burnin_backend" in data:
        if data["burnin_backend"] not in BURNIN_BACKENDS:
            raise InvalidRequest(
                f"{where}: driver_info burnin_backend must be one of {', '.join(BURNIN_BACKENDS)}, "
                f"not {data['burnin_backend']!r}"
            )
        info["burnin_backend"] = data["burnin_backend"]
    if "burnin_faults_file" in data:
        path = data["burnin_faults_file"]
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise InvalidRequest(
                f"{where}: driver_info burnin_faults_file must be an absolute path, not {path!r}"
            )
        if info.get("burnin_backend") != "simulated":
            # NVML's GPUs fail for real: faults are injected into a simulated burn-in only
            raise InvalidRequest(f"{where}: driver_info burnin_faults_file needs burnin_backend simulated")
        info["burnin_faults_file"] = path
    for key in _SECONDS_KEYS:
        if key in data:
            info[key] = _seconds(key, data[key], where)
    return info


@dataclasses.dataclass(frozen=True)
class AnsibleNodeInfo:
    """A node's driver_info with the defaults filled in: what the Ansible drivers use."""

    python: str = DEFAULT_PYTHON
    burnin_backend: str = "nvml"
    burnin_faults_file: str = ""
    burnin_load_seconds: float | None = None  # None: NEOCLOUD_BURNIN_LOAD_SECONDS, read when used
    burnin_xid_wait_seconds: float = DEFAULT_XID_WAIT_SECONDS
    burnin_sample_interval: float = DEFAULT_SAMPLE_INTERVAL

    @classmethod
    def of(cls, node: Node) -> AnsibleNodeInfo:
        """The node's driver_info as recorded (and checked) at enrollment, defaults for what it leaves out."""
        recorded = node.driver_info if isinstance(node.driver_info, dict) else {}
        return cls(**{k: v for k, v in recorded.items() if k in KEYS})

    @property
    def load_seconds(self) -> float:
        if self.burnin_load_seconds is None:
            return float(settings.NEOCLOUD_BURNIN_LOAD_SECONDS)
        return self.burnin_load_seconds

    def faults(self) -> dict[str, Any]:
        """The faults to inject into this burn-in: the faults file as it is now (none when it is absent).

        :raises DriverError: the file exists but cannot be read or is not a JSON mapping.
        """
        if not self.burnin_faults_file:
            return {}
        path = Path(self.burnin_faults_file)
        try:
            faults = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise DriverError(f"burn-in faults file {path} could not be read: {exc}")
        if not isinstance(faults, dict):
            raise DriverError(f"burn-in faults file {path} must hold a JSON mapping of GPU index to faults")
        return faults
