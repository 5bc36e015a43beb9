"""Default pass/fail thresholds of the burn-in, each with the public source it comes from.

Operators override them per server type (stored in the database); the lead passes the overrides to
:func:`resolve_thresholds`. A value of ``None`` turns that limit off (the reading is still reported).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from provisioner.errors import InvalidRequest

# XIDs that mean "drain the server", from NVIDIA's XID catalog
# (https://docs.nvidia.com/deploy/xid-errors/): 48 double-bit ECC, 62 PMU halt, 63 row remap / page
# retirement recorded, 64 remap/retirement failed, 74 NVLink error, 79 fallen off the bus, 92 high
# single-bit ECC rate, 94 contained ECC, 95 uncontained ECC, 119/120 GSP timeout/error, 140 unrecovered
# ECC, 154 recovery action changed.
NVIDIA_DRAIN_XIDS = (48, 62, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140, 154)

# Azure azurehpc-health-checks, conf/nd96isr_h100_v5.conf (check_gpu_xid): the XIDs it drains on.
AZURE_DRAIN_XIDS = (48, 56, 57, 58, 62, 63, 64, 65, 68, 69, 73, 74, 79, 80, 81, 92, 119, 120)

# Application XIDs (NVIDIA XID catalog: 13 graphics engine exception, 31 MMU fault, 43 GPU stopped
# processing, 45 preemptive cleanup): caused by user programs, not by hardware; reported, never failed.
APPLICATION_XIDS = (13, 31, 43, 45)

DEFAULT_THRESHOLDS: dict[str, Any] = {
    # XIDs seen during the run that fail the GPU: NVIDIA's catalog plus Azure's list (above).
    "drain_xids": sorted(set(NVIDIA_DRAIN_XIDS) | set(AZURE_DRAIN_XIDS)),
    # Meta's GPU cluster monitoring defaults (BURNIN.md): 0 uncorrected volatile ECC errors.
    "max_volatile_uncorrectable_ecc": 0,
    # Lifetime uncorrectable DRAM errors are repaired by row remapping (NVIDIA "GPU Memory Error
    # Management" guide), so by default they are reported only; remap pending/failure below decide.
    "max_aggregate_uncorrectable_ecc": None,
    # Azure azurehpc-health-checks (check_gpu_ecc): fail on any SRAM uncorrectable error.
    "max_aggregate_sram_uncorrectable_ecc": 0,
    # Azure azurehpc-health-checks (check_gpu_ecc, H100): fail above 10,000 lifetime correctable SRAM errors
    # and above 20,000,000 correctable DRAM errors (a memory wearing out long before it fails outright).
    "max_aggregate_sram_correctable_ecc": 10_000,
    "max_aggregate_dram_correctable_ecc": 20_000_000,
    # Azure azurehpc-health-checks (check_gpu_ecc): fail on any pending row remap and any remap failure.
    "allow_row_remap_pending": False,
    "allow_row_remap_failure": False,
    # Meta GCM health checks, check-nvidia-smi gpu_retired_pages: default threshold 10, pending > 0 critical.
    "max_retired_pages": 10,
    "allow_retired_pages_pending": False,
    # NVIDIA XID catalog, XID 154: a recovery action other than NONE (0) means reset/reboot/drain needed.
    "allowed_recovery_actions": [0],
    # DCGM diagnostic PCIe plugin parameter max_pcie_replays (default 80 during the test): replays
    # counted between the start and the end of our run.
    "max_pcie_replays": 80,
    # Meta GCM health checks, check-dcgmi nvlink: CRC data, CRC flit, replay and recovery error
    # thresholds all default to 0. Counted between the start and the end of our run.
    "max_nvlink_errors": 0,
    # No public suite uses a fixed temperature limit (BURNIN.md); NVIDIA's slowdown threshold
    # (nvmlDeviceGetTemperatureThreshold SLOWDOWN) is where the GPU starts to slow itself down. Neocloud
    # choice: under full load a healthy GPU keeps at least this margin below it.
    "min_thermal_margin_c": 5,
    # The enforced power limit (nvmlDeviceGetEnforcedPowerLimit) is a ceiling the board regulates to;
    # Neocloud choice: a sample 5% above it means the regulation is broken.
    "max_power_fraction_of_limit": 1.05,
    # NVML clock event reasons (nvml.h nvmlClocksEventReason*): HW slowdown 0x8, SW thermal 0x20,
    # HW thermal 0x40, HW power brake 0x80 are hardware trouble; SW power cap (0x4) under full load is
    # normal. Azure azurehpc-health-checks treats anything but idle / SW power cap as a throttle.
    "bad_clock_event_reasons": 0x8 | 0x20 | 0x40 | 0x80,
    # Memory reported by NVML is the board's memory minus what the driver reserves: an "80GB" H100
    # reports 79.6 GiB (81559 MiB). Neocloud choice: accept 5% below the nominal size.
    "memory_tolerance_fraction": 0.05,
    # Whether a run without a load generator (no torch, no dcgmi) fails. Thermal, power and PCIe
    # readings at idle say little (links train down at idle, BURNIN.md), so they are marked as such.
    "require_load": False,
}


def resolve_thresholds(overrides: Mapping[str, Any] | str | None = None) -> dict[str, Any]:
    """Return the defaults with ``overrides`` applied. Pure function.

    :raises InvalidRequest: an override names an unknown threshold or has the wrong type.
    """
    if isinstance(overrides, str):
        try:
            overrides = json.loads(overrides) if overrides.strip() else None
        except json.JSONDecodeError as err:
            raise InvalidRequest(f"Thresholds are not valid JSON: {err}") from err
    resolved = {
        key: (list(value) if isinstance(value, list) else value) for key, value in DEFAULT_THRESHOLDS.items()
    }
    if not overrides:
        return resolved
    if not isinstance(overrides, Mapping):
        raise InvalidRequest("Thresholds must be a JSON object of threshold name to value.")
    for key, value in overrides.items():
        if key not in DEFAULT_THRESHOLDS:
            raise InvalidRequest(
                f"Unknown threshold {key!r}; known: {', '.join(sorted(DEFAULT_THRESHOLDS))}."
            )
        resolved[key] = _validated(key, value)
    return resolved


def _validated(key: str, value: Any) -> Any:
    default = DEFAULT_THRESHOLDS[key]
    if value is None:
        return None
    if isinstance(default, bool) or key == "require_load":
        if not isinstance(value, bool):
            raise InvalidRequest(f"Threshold {key!r} must be true or false.")
        return value
    if isinstance(default, list):
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise InvalidRequest(f"Threshold {key!r} must be a list of integers.")
        return list(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"Threshold {key!r} must be a number.")
    return value
