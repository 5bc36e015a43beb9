"""How hard we may push BMCs: concurrent sessions per BMC and in total, spacing between commands,
and retries with backoff.

BMCs are small embedded computers: many allow only a handful of sessions and misbehave when commands
arrive back to back. Every driver call takes a slot from ``BmcLimits`` (process-wide), which holds at
most ``per_bmc`` calls per BMC and ``global_max`` in total, and waits until ``min_spacing`` seconds
passed since the previous command to the same BMC.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from provisioner.errors import BmcCommandFailed, DriverError

log = logging.getLogger(__name__)
T = TypeVar("T")


class BmcLimits:
    """Per-BMC and global concurrency caps plus per-BMC command spacing. Thread-safe."""

    def __init__(self, per_bmc: int = 1, global_max: int = 64, min_spacing: float = 0.02) -> None:
        self.per_bmc = per_bmc
        self.global_max = global_max
        self.min_spacing = min_spacing
        self._cond = threading.Condition()
        self._active: collections.Counter[str] = collections.Counter()
        self._total = 0
        self._last: dict[str, float] = {}

    @contextlib.contextmanager
    def slot(self, bmc: str, timeout: float) -> Iterator[None]:
        """Hold one session slot for ``bmc`` (a label without credentials).

        :raises BmcCommandFailed: (retryable) no slot within ``timeout``: too many calls in flight.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._active[bmc] >= self.per_bmc or self._total >= self.global_max:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BmcCommandFailed(
                        f"{bmc}: too many BMC sessions in flight (per BMC {self.per_bmc}, "
                        f"total {self.global_max}); try again later",
                        retryable=True,
                    )
                self._cond.wait(remaining)
            self._active[bmc] += 1
            self._total += 1
            wait = self._last.get(bmc, 0.0) + self.min_spacing - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            yield
        finally:
            with self._cond:
                self._last[bmc] = time.monotonic()
                self._active[bmc] -= 1
                self._total -= 1
                self._cond.notify_all()


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError as err:
        raise ValueError(f"{name} must be a number, not {raw!r}") from err


DEFAULT_LIMITS = BmcLimits(
    per_bmc=int(_env_float("NEOCLOUD_BMC_SESSIONS_PER_BMC", 1)),
    global_max=int(_env_float("NEOCLOUD_BMC_SESSIONS_TOTAL", 64)),
    min_spacing=_env_float("NEOCLOUD_BMC_MIN_SPACING", 0.02),
)


def with_retries(
    call: Callable[[], T], *, what: str, attempts: int = 3, backoff: float = 0.5, max_delay: float = 4.0
) -> T:
    """Run ``call``; on a retryable DriverError (BmcUnreachable, BmcCommandFailed) wait
    ``backoff * 2**n`` seconds and try again, up to ``attempts`` times. Non-retryable errors
    (BmcAuthFailed, UnsupportedOperation) are raised at once. The last error is raised as is."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except DriverError as err:
            if not err.retryable or attempt == attempts:
                raise
            delay = min(backoff * 2 ** (attempt - 1), max_delay)
            log.warning(
                "%s failed (%s, attempt %d/%d); retrying in %.1f s", what, err.code, attempt, attempts, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
