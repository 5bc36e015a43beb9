"""Fleet power sweep: read the power state of many BMCs at once, bounded and with per-BMC timeouts.

IPMI BMCs are all driven from pyghmi's event loop in the calling thread (logins and queries
multiplexed, sessions kept for the next sweep: see ipmi.py for the measured reasons); Redfish and fake
BMCs run on a thread pool of ``max_workers``. A BMC that does not answer within its timeout is
``PowerState.UNKNOWN`` with the error's code: never a guess.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from provisioner.drivers.base import BmcAccess, PowerState
from provisioner.drivers.ipmi import ipmi_power_states, parse_chassis_status
from provisioner.drivers.registry import power_driver_for
from provisioner.errors import DriverError, bmc_error_kind


@dataclasses.dataclass(frozen=True)
class SweepResult:
    state: PowerState
    error_code: str | None = None  # e.g. "bmc_unreachable", "bmc_auth_failed"
    error_kind: str | None = None  # errors.bmc_error_kind: "timeout", "auth", ... (the metrics' label)
    error: str | None = None  # a sentence for people; never contains credentials
    duration: float = 0.0  # seconds spent on this BMC


def _failed(err: DriverError, duration: float) -> SweepResult:
    return SweepResult(PowerState.UNKNOWN, err.code, bmc_error_kind(err), str(err), duration)


def _query_one(access: BmcAccess) -> SweepResult:
    started = time.monotonic()
    driver = power_driver_for(access)
    try:
        state = driver.get_power_state()
    except DriverError as err:
        return _failed(err, time.monotonic() - started)
    except Exception as err:  # a driver bug must cost one BMC, not the sweep
        return SweepResult(
            PowerState.UNKNOWN,
            "driver_error",
            bmc_error_kind(err),
            f"{access.label}: {type(err).__name__}",
            0.0,
        )
    finally:
        driver.close()
    return SweepResult(state, None, None, None, time.monotonic() - started)


def sweep_power(
    accesses: Sequence[BmcAccess], *, timeout: float, max_workers: int
) -> dict[BmcAccess, SweepResult]:
    """Read every BMC's power state; results keyed by the (password-masking) BmcAccess. Read-only,
    idempotent, never raises for a BMC's failure. ``timeout`` caps each BMC (lowering access.timeout);
    ``max_workers`` caps the BMCs in flight at once."""
    capped = {a: dataclasses.replace(a, timeout=min(a.timeout, timeout)) for a in accesses}
    results: dict[BmcAccess, SweepResult] = {}
    others = [a for a in accesses if a.protocol != "ipmi"]
    ipmi = [a for a in accesses if a.protocol == "ipmi"]
    pool = ThreadPoolExecutor(max_workers=max(1, max_workers), thread_name_prefix="sweep") if others else None
    try:
        futures = {a: pool.submit(_query_one, capped[a]) for a in others} if pool else {}
        if ipmi:
            jobs = ipmi_power_states([capped[a] for a in ipmi], max_in_flight=max(1, max_workers))
            for original, job in zip(ipmi, jobs, strict=True):
                if job.error is not None:
                    results[original] = _failed(job.error, job.duration)
                    continue
                try:
                    state = parse_chassis_status(job.access, job.responses[0])
                except DriverError as err:
                    results[original] = _failed(err, job.duration)
                else:
                    results[original] = SweepResult(state, None, None, None, job.duration)
        for access, future in futures.items():
            results[access] = future.result()
    finally:
        if pool:
            pool.shutdown(wait=True)
    return results
