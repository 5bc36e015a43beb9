"""The power-on self-test (POST) of lab servers: the minutes a real 8-GPU server spends between power-on and its
first boot device (memory training of 1-2 TiB of DIMMs, then the option ROMs of eight GPUs, the NVSwitches and
the NICs), which the classic provisioning path pays twice (once into the deploy ramdisk, once into the OS).

Defaults per server type, in seconds at time scale 1, from public figures (vendor forums, reviews and
operators' reports for HGX/DGX-class servers; they vary with DIMM count, firmware and settings such as fast
boot and memory re-training, so they are a typical figure, not a promise):

- ``h100-8x``: 240 s (HGX H100 8-GPU servers: 3-5 minutes are usual, with 2 TiB of DDR5);
- ``a100-8x``: 180 s (HGX A100 8-GPU servers: about 3 minutes);
- any other type: 180 s.

The time scale (``NEOCLOUD_LAB_POST_SCALE``, or ``lab up --post-scale``) multiplies them: 1 is real time, 0.1
runs a 3-minute POST in 18 s (benchmarks), 0 skips it (most tests). The lab's default is 0.1.

A node's POST state is the file ``post.json`` in its directory, written by the firmware (simulated or QEMU):
``{"state": "post", "started_at", "ends_at"}`` while it runs, ``"booting"`` once the first boot device is
tried, ``"off"`` at power-off. The lab's Redfish BMC reports it as the system's ``BootProgress`` (the DMTF
BootProgress states) and ``lab status`` shows it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_SECONDS = {"h100-8x": 240.0, "a100-8x": 180.0}
OTHER_TYPES_SECONDS = 180.0
DEFAULT_SCALE = 0.1
STATE_FILE = "post.json"

# DMTF Redfish ComputerSystem BootProgress.LastState for each POST state
BOOT_PROGRESS = {
    "post": "SystemHardwareInitializationStarted",
    "booting": "SystemHardwareInitializationComplete",
    "off": "None",
}


def scale_from_env() -> float:
    """``NEOCLOUD_LAB_POST_SCALE`` (a number >= 0), else the default.

    :raises ValueError: a value that is not a number >= 0.
    """
    raw = os.environ.get("NEOCLOUD_LAB_POST_SCALE", "")
    if not raw:
        return DEFAULT_SCALE
    value = float(raw)
    if not value >= 0:  # also refuses nan
        raise ValueError(f"NEOCLOUD_LAB_POST_SCALE must be a number >= 0, not {raw!r}")
    return value


def seconds_for(server_type: str, scale: float) -> float:
    """The POST time of a server of ``server_type`` at time scale ``scale``."""
    return DEFAULT_SECONDS.get(server_type, OTHER_TYPES_SECONDS) * scale


def write_state(node_dir: Path, state: str, **extra: Any) -> None:
    path = node_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"state": state, **extra}))
    os.replace(tmp, path)


def read_state(node_dir: Path | None) -> dict[str, Any]:
    if node_dir is None:
        return {}
    try:
        data = json.loads((node_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def boot_progress(node_dir: Path | None, powered_on: bool) -> str:
    """The Redfish ``BootProgress.LastState`` of a node: ``None`` when off, its POST state when on."""
    if not powered_on:
        return "None"
    state = read_state(node_dir).get("state", "booting")
    return BOOT_PROGRESS.get(state, "SystemHardwareInitializationComplete")


def run(node_dir: Path, seconds: float, still_on: Callable[[], bool], console: Callable[[str], None]) -> bool:
    """Spend ``seconds`` in POST (the state file says so); False when the server was powered off meanwhile."""
    if seconds <= 0:
        write_state(node_dir, "booting")
        return still_on()
    now = time.time()
    write_state(node_dir, "post", started_at=now, ends_at=now + seconds)
    console(f"POST: power-on self-test, {seconds:.1f} s")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not still_on():
            return False
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    if not still_on():
        return False
    write_state(node_dir, "booting", post_seconds=seconds)
    console("POST: done; trying the first boot device")
    return True
