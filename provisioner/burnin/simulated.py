"""A simulated GPU host with realistic readings and injectable faults.

The lab and the tests use it where no GPU exists. It raises the same ``pynvml.NVMLError`` objects the
real library raises (``NVMLError_NotSupported`` for absent NVLinks, ``NVMLError_Timeout`` internally
for an empty event wait), so the checks cannot tell it from NVML by its errors.

Faults are given per physical GPU index, e.g. ``{"1": ["ecc_uncorrectable"], "3": ["xid:79"]}``, as a
mapping, a JSON string, or the ``NEOCLOUD_BURNIN_FAULTS`` environment variable.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pynvml

from provisioner.burnin.backend import (
    NVLINK_ERROR_COUNTERS,
    GpuBackend,
    PcieLink,
    RemappedRows,
    RetiredPages,
    XidEvent,
)
from provisioner.errors import InvalidRequest

FAULTS_ENV_VAR = "NEOCLOUD_BURNIN_FAULTS"

#: Every fault kind and what it does. Kinds with ``:N`` take an integer argument.
FAULT_KINDS: dict[str, str] = {
    "ecc_uncorrectable": "one volatile (and aggregate) uncorrectable DRAM ECC error",
    "sram_uncorrectable": "one lifetime uncorrectable SRAM ECC error",
    "sram_correctable": "10,001 lifetime correctable SRAM ECC errors (one over Azure's limit)",
    "dram_correctable": "20,000,001 lifetime correctable DRAM ECC errors (one over Azure's limit)",
    "row_remap_pending": "a row remap waiting for a GPU reset",
    "row_remap_failure": "a row remap that failed (no spare rows left)",
    "retired_pages_pending": "a page retirement waiting for a reset (pre-Ampere profiles)",
    "recovery_action": "driver asks for a recovery action (``recovery_action:N``, default 1 = GPU reset)",
    "ecc_off": "ECC mode disabled",
    "nvlink_down": "one NVLink inactive (``nvlink_down:N`` picks the link, default 0)",
    "nvlink_errors": "NVLink replay, recovery and CRC errors counted during the run",
    "pcie_width": "PCIe link trained to a narrower width (``pcie_width:N``, default 8)",
    "pcie_gen": "PCIe link trained to a lower generation (``pcie_gen:N``, default 4)",
    "pcie_replays": "PCIe replays counted during the run",
    "xid": "the driver reports this XID during the run (``xid:N``, e.g. xid:79)",
    "thermal_throttle": "SW and HW thermal slowdown clock event reasons under load",
    "power_brake": "HW power brake slowdown (external power brake signal) under load",
    "brief_power_brake": "a 50 ms HW power brake slowdown between two samples: only the driver's "
    "cumulative slowdown time shows it",
    "overheat": "temperature under load within 2 C of the slowdown threshold",
    "power_over_limit": "power draw under load 10% above the enforced limit",
    "gpu_missing": "the GPU is not visible to the driver (fell off the bus)",
    "wrong_model": "a different GPU model than the server type",
    "memory_small": "less GPU memory than the server type",
    "persistence_off": "persistence mode disabled",
    "mig_on": "MIG mode enabled",
}

_DEFAULT_ARGS = {"recovery_action": 1, "nvlink_down": 0, "pcie_width": 8, "pcie_gen": 4}
_NEEDS_ARG = {"xid"}
# The link the nvlink_errors fault counts its errors on.
_NVLINK_ERRORS_LINK = 2


@dataclass(frozen=True)
class ServerProfile:
    """What a healthy server of one type reads like."""

    gpu_count: int
    model: str
    memory_bytes: int
    pcie_gen: int
    pcie_width: int
    nvlinks: int
    row_remapping: bool
    idle_temp_c: int
    load_temp_c: int
    slowdown_c: int
    shutdown_c: int
    idle_power_w: int
    load_power_w: int
    power_limit_w: int
    driver_version: str = "550.90.07"
    cuda_driver_version: int = 12040


# H100 values as a real H100 80GB HBM3 reported them through NVML (driver 580, 60 s bf16 matmul load):
# 81559 MiB, Gen5 x16, slowdown threshold 89 C, 68 C and 700 W (limit 700 W, SW power cap) under load;
# 18 NVLink4 links per GPU on an 8-GPU SXM board.
PROFILES: dict[str, ServerProfile] = {
    "h100-sxm-8x": ServerProfile(
        gpu_count=8,
        model="NVIDIA H100 80GB HBM3",
        memory_bytes=81559 * 1024 * 1024,
        pcie_gen=5,
        pcie_width=16,
        nvlinks=18,
        row_remapping=True,
        idle_temp_c=34,
        load_temp_c=66,
        slowdown_c=89,
        shutdown_c=92,
        idle_power_w=98,
        load_power_w=655,
        power_limit_w=700,
    ),
    "h100-pcie-1x": ServerProfile(
        gpu_count=1,
        model="NVIDIA H100 PCIe",
        memory_bytes=81559 * 1024 * 1024,
        pcie_gen=5,
        pcie_width=16,
        nvlinks=0,
        row_remapping=True,
        idle_temp_c=38,
        load_temp_c=70,
        slowdown_c=85,
        shutdown_c=90,
        idle_power_w=60,
        load_power_w=335,
        power_limit_w=350,
    ),
    "v100-sxm-8x": ServerProfile(
        gpu_count=8,
        model="Tesla V100-SXM2-32GB",
        memory_bytes=32510 * 1024 * 1024,
        pcie_gen=3,
        pcie_width=16,
        nvlinks=6,
        row_remapping=False,
        idle_temp_c=36,
        load_temp_c=68,
        slowdown_c=87,
        shutdown_c=90,
        idle_power_w=55,
        load_power_w=290,
        power_limit_w=300,
        driver_version="535.183.01",
        cuda_driver_version=12020,
    ),
}


def _not_supported() -> pynvml.NVMLError:
    return pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def parse_faults(spec: str | Mapping[str, Any] | None) -> dict[int, list[tuple[str, int | None]]]:
    """Parse a fault specification into ``{gpu: [(kind, argument or None), ...]}``. Pure function.

    ``spec`` is a mapping or JSON object of GPU index to a list of fault strings (or one string).

    :raises InvalidRequest: not a JSON object, a bad GPU index or an unknown fault kind.
    """
    if spec is None or spec == "":
        return {}
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise InvalidRequest(f"Faults are not valid JSON: {err}") from err
    if not isinstance(spec, Mapping):
        raise InvalidRequest('Faults must be a JSON object like {"1": ["ecc_uncorrectable"]}.')
    parsed: dict[int, list[tuple[str, int | None]]] = {}
    for key, value in spec.items():
        try:
            gpu = int(key)
        except (TypeError, ValueError):
            raise InvalidRequest(f"Fault key {key!r} is not a GPU index.") from None
        if gpu < 0:
            raise InvalidRequest(f"Fault key {key!r} is not a GPU index.")
        items = [value] if isinstance(value, str) else list(value)
        for item in items:
            parsed.setdefault(gpu, []).append(_parse_fault(str(item)))
    return parsed


def _parse_fault(text: str) -> tuple[str, int | None]:
    kind, _, arg = text.strip().partition(":")
    if kind not in FAULT_KINDS:
        raise InvalidRequest(f"Unknown fault {text!r}; known faults: {', '.join(sorted(FAULT_KINDS))}.")
    if not arg:
        if kind in _NEEDS_ARG:
            raise InvalidRequest(f"Fault {kind!r} needs a number, e.g. {kind}:79.")
        return kind, _DEFAULT_ARGS.get(kind)
    try:
        return kind, int(arg)
    except ValueError:
        raise InvalidRequest(f"Fault {text!r}: {arg!r} is not a number.") from None


def _why_no_effect(profile: ServerProfile, kind: str, arg: int | None) -> str | None:
    """Why fault ``kind`` would change no reading of ``profile`` (so no check could fail), or ``None``."""
    if kind in ("row_remap_pending", "row_remap_failure") and not profile.row_remapping:
        return "it retires pages instead of remapping rows (use retired_pages_pending)"
    if kind == "retired_pages_pending" and profile.row_remapping:
        return "it remaps rows instead of retiring pages (use row_remap_pending)"
    if kind == "nvlink_down" and not (arg is not None and 0 <= arg < profile.nvlinks):
        return f"it has NVLinks 0..{profile.nvlinks - 1}" if profile.nvlinks else "it has no NVLink"
    if kind == "nvlink_errors" and profile.nvlinks <= _NVLINK_ERRORS_LINK:
        return f"the errors are counted on link {_NVLINK_ERRORS_LINK}, and it has {profile.nvlinks} NVLinks"
    if kind == "pcie_gen" and not (arg is not None and 0 < arg < profile.pcie_gen):
        return f"its link is Gen{profile.pcie_gen}; pick a lower generation"
    if kind == "pcie_width" and not (arg is not None and 0 < arg < profile.pcie_width):
        return f"its link is x{profile.pcie_width}; pick a narrower width"
    if kind == "recovery_action" and not arg:
        return "recovery action 0 means none is needed"
    return None


def faults_from_environment() -> dict[int, list[tuple[str, int | None]]]:
    """Faults from ``NEOCLOUD_BURNIN_FAULTS`` (empty when unset).

    :raises InvalidRequest: the variable holds an invalid specification.
    """
    return parse_faults(os.environ.get(FAULTS_ENV_VAR))


class SimulatedBackend(GpuBackend):
    """A host of one :data:`PROFILES` server type; a load raises temperature and power over time."""

    name = "simulated"

    def __init__(
        self,
        profile: str | ServerProfile = "h100-sxm-8x",
        faults: str | Mapping[str, Any] | dict[int, list[tuple[str, int | None]]] | None = None,
        *,
        thermal_time_constant_s: float = 3.0,
    ) -> None:
        """``thermal_time_constant_s`` sets how fast temperatures follow the load (tests shorten it).

        :raises InvalidRequest: unknown profile, invalid faults, or a fault for a GPU the profile lacks.
        """
        profile_name = profile if isinstance(profile, str) else profile.model
        if isinstance(profile, str):
            if profile not in PROFILES:
                raise InvalidRequest(f"Unknown simulated profile {profile!r}; known: {', '.join(PROFILES)}.")
            profile = PROFILES[profile]
        self.profile = profile
        self._faults = self._normalise_faults(faults)
        for gpu in self._faults:
            if gpu >= profile.gpu_count:
                raise InvalidRequest(f"Fault for GPU {gpu}, but the profile has {profile.gpu_count} GPUs.")
            for kind, arg in self._faults[gpu]:
                why = _why_no_effect(profile, kind, arg)
                if why:
                    raise InvalidRequest(f"Fault {kind!r} cannot show on profile {profile_name}: {why}.")
        # NVML indices skip GPUs that fell off the bus, as the driver does.
        self._visible = [g for g in range(profile.gpu_count) if not self._has(g, "gpu_missing")]
        self._temp_tau_s = thermal_time_constant_s
        self._power_tau_s = thermal_time_constant_s / 10
        self._load_started: float | None = None
        self._load_stopped: float | None = None
        self._load_stop_level = 0.0
        self._xid_queue: deque[XidEvent] = deque()
        self._xid_cond = threading.Condition()
        self._watching = False
        self._opened = False

    @staticmethod
    def _normalise_faults(faults: Any) -> dict[int, list[tuple[str, int | None]]]:
        if faults is None:
            return {}
        if isinstance(faults, Mapping) and all(
            isinstance(k, int) and all(isinstance(f, tuple) for f in v) for k, v in faults.items()
        ):
            return {int(k): list(v) for k, v in faults.items()}
        return parse_faults(faults)

    # --- fault helpers --------------------------------------------------------------------------

    def _physical(self, gpu: int) -> int:
        if gpu < 0 or gpu >= len(self._visible):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return self._visible[gpu]

    def _has(self, physical: int, kind: str) -> bool:
        return any(k == kind for k, _ in self._faults.get(physical, []))

    def _arg(self, physical: int, kind: str) -> int | None:
        for k, arg in self._faults.get(physical, []):
            if k == kind:
                return arg
        return None

    # --- simulated load -------------------------------------------------------------------------

    def set_load(self, active: bool) -> None:
        """Start or stop the simulated load. Idempotent per state."""
        now = time.monotonic()
        if active and self._load_started is None:
            self._load_started, self._load_stopped = now, None
        elif not active and self._load_started is not None:
            self._load_stop_level = self._level(self._temp_tau_s)
            self._load_started, self._load_stopped = None, now

    def _level(self, tau: float) -> float:
        """0 at idle, rising towards 1 under load with time constant ``tau``."""
        now = time.monotonic()
        if self._load_started is not None:
            return 1.0 - math.exp(-(now - self._load_started) / tau)
        if self._load_stopped is not None:
            return self._load_stop_level * math.exp(-(now - self._load_stopped) / tau)
        return 0.0

    @property
    def under_load(self) -> bool:
        return self._load_started is not None

    # --- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        self._opened = True

    def close(self) -> None:
        self._watching = False
        self._opened = False
        self.set_load(False)

    # --- readings -------------------------------------------------------------------------------

    def driver_version(self) -> str:
        return self.profile.driver_version

    def cuda_driver_version(self) -> int:
        return self.profile.cuda_driver_version

    def device_count(self) -> int:
        return len(self._visible)

    def device_name(self, gpu: int) -> str:
        p = self._physical(gpu)
        return "NVIDIA A100-SXM4-40GB" if self._has(p, "wrong_model") else self.profile.model

    def uuid(self, gpu: int) -> str:
        p = self._physical(gpu)
        return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_OID, f"neocloud-sim-{self.profile.model}-{p}"))

    def serial(self, gpu: int) -> str:
        return f"1653223{self._physical(gpu):06d}"

    def pci_bus_id(self, gpu: int) -> str:
        # The buses of the eight GPUs of an HGX H100 board, in NVML order.
        buses = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
        return f"00000000:{buses[self._physical(gpu) % len(buses)]:02X}:00.0"

    def memory_total_bytes(self, gpu: int) -> int:
        p = self._physical(gpu)
        return self.profile.memory_bytes // 2 if self._has(p, "memory_small") else self.profile.memory_bytes

    def ecc_mode(self, gpu: int) -> tuple[bool, bool]:
        enabled = not self._has(self._physical(gpu), "ecc_off")
        return enabled, enabled

    def uncorrectable_ecc(self, gpu: int, *, aggregate: bool) -> int:
        p = self._physical(gpu)
        if self._has(p, "ecc_off"):
            raise _not_supported()  # NVML needs ECC enabled to count
        return 1 if self._has(p, "ecc_uncorrectable") else 0

    def sram_uncorrectable_aggregate(self, gpu: int) -> int:
        p = self._physical(gpu)
        if self._has(p, "ecc_off"):
            raise _not_supported()
        return 1 if self._has(p, "sram_uncorrectable") else 0

    def correctable_ecc_aggregate(self, gpu: int, location: str) -> int:
        p = self._physical(gpu)
        if self._has(p, "ecc_off"):
            raise _not_supported()
        if location == "sram":
            return 10_001 if self._has(p, "sram_correctable") else 3
        return 20_000_001 if self._has(p, "dram_correctable") else 120

    def remapped_rows(self, gpu: int) -> RemappedRows:
        p = self._physical(gpu)
        if not self.profile.row_remapping:
            raise _not_supported()
        pending = self._has(p, "row_remap_pending")
        failure = self._has(p, "row_remap_failure")
        return RemappedRows(
            corrected=0, uncorrected=int(pending or failure), pending=pending, failure=failure
        )

    def retired_pages(self, gpu: int) -> RetiredPages:
        p = self._physical(gpu)
        if self.profile.row_remapping:
            raise _not_supported()
        pending = self._has(p, "retired_pages_pending")
        return RetiredPages(single_bit=0, double_bit=int(pending), pending=pending)

    def recovery_action(self, gpu: int) -> int:
        return self._arg(self._physical(gpu), "recovery_action") or 0

    def pcie_link(self, gpu: int) -> PcieLink:
        p = self._physical(gpu)
        gen = self._arg(p, "pcie_gen") or self.profile.pcie_gen
        width = self._arg(p, "pcie_width") or self.profile.pcie_width
        # Links train down to Gen1 at idle to save power; they come up when traffic flows.
        current_gen = min(gen, self.profile.pcie_gen) if self.under_load else 1
        return PcieLink(
            gen=current_gen, width=width, max_gen=self.profile.pcie_gen, max_width=self.profile.pcie_width
        )

    def pcie_replay_counter(self, gpu: int) -> int:
        p = self._physical(gpu)
        if self._has(p, "pcie_replays") and (self.under_load or self._load_stopped is not None):
            return 500
        return 0

    def _check_link(self, link: int) -> None:
        """Answer for a link the GPU lacks as a real driver does: NotSupported without NVLink,
        InvalidArgument past the last link of a GPU with NVLink."""
        if self.profile.nvlinks == 0:
            raise _not_supported()
        if not 0 <= link < self.profile.nvlinks:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    def nvlink_state(self, gpu: int, link: int) -> bool:
        p = self._physical(gpu)
        self._check_link(link)
        return not (self._has(p, "nvlink_down") and self._arg(p, "nvlink_down") == link)

    def nvlink_error_counter(self, gpu: int, link: int, counter: int) -> int:
        p = self._physical(gpu)
        self._check_link(link)
        if counter not in NVLINK_ERROR_COUNTERS.values():
            raise _not_supported()
        if (
            self._has(p, "nvlink_errors")
            and link == _NVLINK_ERRORS_LINK
            and (self.under_load or self._load_stopped is not None)
        ):
            return 40
        return 0

    def temperature_c(self, gpu: int) -> int:
        p = self._physical(gpu)
        peak = self.profile.slowdown_c - 2 if self._has(p, "overheat") else self.profile.load_temp_c + p % 3
        idle = self.profile.idle_temp_c + p % 3
        return round(idle + (peak - idle) * self._level(self._temp_tau_s))

    def temperature_threshold_c(self, gpu: int, kind: str) -> int:
        self._physical(gpu)
        return {"slowdown": self.profile.slowdown_c, "shutdown": self.profile.shutdown_c}[kind]

    def power_usage_mw(self, gpu: int) -> int:
        p = self._physical(gpu)
        peak = (
            self.profile.power_limit_w * 1.10
            if self._has(p, "power_over_limit")
            else self.profile.load_power_w
        )
        idle = self.profile.idle_power_w
        return round((idle + (peak - idle) * self._level(self._power_tau_s)) * 1000)

    def power_limit_mw(self, gpu: int) -> int:
        self._physical(gpu)
        return self.profile.power_limit_w * 1000

    def clock_event_reasons(self, gpu: int) -> int:
        p = self._physical(gpu)
        if not self.under_load:
            return pynvml.nvmlClocksEventReasonGpuIdle
        reasons = pynvml.nvmlClocksEventReasonNone
        if self.power_usage_mw(gpu) >= 0.9 * self.power_limit_mw(gpu):
            reasons |= pynvml.nvmlClocksEventReasonSwPowerCap  # normal at full load
        if self._has(p, "thermal_throttle"):
            reasons |= (
                pynvml.nvmlClocksEventReasonSwThermalSlowdown | pynvml.nvmlClocksEventReasonHwThermalSlowdown
            )
        if self._has(p, "power_brake"):
            reasons |= (
                pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown | pynvml.nvmlClocksEventReasonHwSlowdown
            )
        return reasons

    def slowdown_ns(self, gpu: int) -> dict[int, int]:
        p = self._physical(gpu)
        loaded = self.under_load or self._load_stopped is not None
        sustained = 2_000_000_000 if loaded else 0  # a slowdown for the whole (simulated) load
        counters = {0x20: 0, 0x40: 0, 0x80: 0}
        if self._has(p, "thermal_throttle"):
            counters[0x20] = counters[0x40] = sustained
        if self._has(p, "power_brake"):
            counters[0x80] = sustained
        if self._has(p, "brief_power_brake") and loaded:
            counters[0x80] += 50_000_000
        return counters

    def persistence_mode(self, gpu: int) -> bool:
        return not self._has(self._physical(gpu), "persistence_off")

    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        on = self._has(self._physical(gpu), "mig_on")
        return on, on

    # --- XID events -----------------------------------------------------------------------------

    def start_xid_watch(self) -> list[int]:
        with self._xid_cond:
            self._watching = True
            for index, physical in enumerate(self._visible):
                for kind, arg in self._faults.get(physical, []):
                    if kind == "xid" and arg is not None:
                        self._xid_queue.append(XidEvent(gpu=index, xid=arg))
            self._xid_cond.notify_all()
        return []

    def wait_xid(self, timeout_s: float) -> XidEvent | None:
        try:
            return self._event_set_wait(timeout_s)
        except pynvml.NVMLError_Timeout:
            return None

    def _event_set_wait(self, timeout_s: float) -> XidEvent:
        """Like ``nvmlEventSetWait``: the next event, or ``NVMLError_Timeout`` when none came in time."""
        if not self._watching:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        with self._xid_cond:
            if not self._xid_queue:
                self._xid_cond.wait(timeout=max(0.0, timeout_s))
            if self._xid_queue:
                return self._xid_queue.popleft()
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
