"""One burn-in run: watch XIDs, run the load while sampling, then evaluate every check."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pynvml

from provisioner.burnin.backend import GpuBackend, XidEvent
from provisioner.burnin.checks import (
    CheckSuite,
    Expectations,
    LoadSummary,
    RunObservation,
    Sample,
    parse_expectations,
    read_nvlink_errors,
)
from provisioner.burnin.load import DcgmDiagLoad, LoadGenerator, LoadResult, NoLoad, choose_load
from provisioner.burnin.report import build_report
from provisioner.burnin.thresholds import resolve_thresholds


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sample(backend: GpuBackend, gpu: int, at_s: float) -> Sample:
    sample = Sample(at_s=round(at_s, 2))
    readings = {
        "temperature_c": backend.temperature_c,
        "power_mw": backend.power_usage_mw,
        "clock_event_reasons": backend.clock_event_reasons,
        "pcie": backend.pcie_link,
    }
    for attribute, read in readings.items():
        try:
            setattr(sample, attribute, read(gpu))
        except pynvml.NVMLError as err:
            sample.errors[attribute] = str(err)
    return sample


def _prepare_load(load: LoadGenerator, seconds: float) -> tuple[LoadGenerator, str | None]:
    """Prepare ``load``; when it cannot run, fall back to dcgmi or to none and say why."""
    try:
        load.prepare()
        return load, None
    except Exception as err:  # torch without CUDA, CUDA init failure: the burn-in must still run
        reason = f"{load.kind} unavailable: {type(err).__name__}: {err}"
    fallback: LoadGenerator = DcgmDiagLoad(seconds) if DcgmDiagLoad.available() else NoLoad(seconds)
    return fallback, reason


def run_burnin(
    backend: GpuBackend,
    expectations: Expectations | Mapping[str, Any] | str | None,
    thresholds: Mapping[str, Any] | str | None = None,
    *,
    load_seconds: float = 60.0,
    xid_wait_seconds: float = 5.0,
    sample_interval_s: float = 1.0,
    load_preference: str = "auto",
) -> dict[str, Any]:
    """Run the whole burn-in against ``backend`` and return the report (see :mod:`report`).

    Not idempotent in effect (it loads the GPUs), but safe to repeat. Never changes GPU settings.

    :raises NvmlUnavailable: the backend cannot reach NVML.
    :raises InvalidRequest: invalid expectations or thresholds.
    """
    expect = expectations if isinstance(expectations, Expectations) else parse_expectations(expectations)
    limits = resolve_thresholds(thresholds)
    started_at = _now()
    with backend:
        try:
            count = backend.device_count()
        except pynvml.NVMLError:
            count = 0
        watch_error: str | None = None
        try:
            unwatched = backend.start_xid_watch()
            watching = True
        except pynvml.NVMLError as exc:
            # No event set (NotSupported in some VMs, a driver in trouble): every GPU is reported as
            # unwatched, and the XID waits below become plain sleeps instead of waits on no set. Only
            # NotSupported is a property of the platform; any other error fails the XID check.
            unwatched = list(range(count))
            watching = False
            if not isinstance(exc, pynvml.NVMLError_NotSupported):
                watch_error = str(exc)
        replays_before: dict[int, int | None] = {}
        nvlink_before = {}
        slowdown_before: dict[int, dict[int, int] | None] = {}
        for gpu in range(count):
            try:
                replays_before[gpu] = backend.pcie_replay_counter(gpu)
            except pynvml.NVMLError:
                replays_before[gpu] = None
            try:
                nvlink_before[gpu] = read_nvlink_errors(backend, gpu)
            except pynvml.NVMLError:
                nvlink_before[gpu] = {}
            try:
                slowdown_before[gpu] = backend.slowdown_ns(gpu)
            except pynvml.NVMLError:
                slowdown_before[gpu] = None

        load, fallback_reason = _prepare_load(
            choose_load(backend, load_seconds, load_preference), load_seconds
        )
        samples: dict[int, list[Sample]] = {gpu: [] for gpu in range(count)}
        xids: list[XidEvent] = []

        def drain_xids(for_seconds: float) -> None:
            until = time.monotonic() + for_seconds
            if not watching:
                time.sleep(max(0.0, for_seconds))
                return
            while True:
                remaining = until - time.monotonic()
                try:
                    event = backend.wait_xid(max(0.0, remaining))
                except pynvml.NVMLError:
                    event = None
                    time.sleep(max(0.0, remaining))
                if event is not None:
                    xids.append(event)
                if time.monotonic() >= until:
                    return

        start = time.monotonic()
        load.start()
        # Sample at least once, for as long as the load runs (dcgmi decides its own length).
        while True:
            for gpu in range(count):
                samples[gpu].append(_sample(backend, gpu, time.monotonic() - start))
            if not load.running() and time.monotonic() - start >= load_seconds:
                break
            drain_xids(sample_interval_s)
            if not load.running() and time.monotonic() - start >= load_seconds:
                break
        result: LoadResult = load.stop()
        if fallback_reason:
            result.details["fallback_reason"] = fallback_reason
        drain_xids(xid_wait_seconds)

        observation = RunObservation(
            load=LoadSummary(kind=result.kind, ran=result.ran, error=result.error),
            samples=samples,
            xids=xids,
            unwatched_gpus=unwatched,
            xid_watch_error=watch_error,
            slowdown_ns_before=slowdown_before,
            pcie_replays_before=replays_before,
            nvlink_errors_before=nvlink_before,
        )
        checks = CheckSuite(backend, expect, limits, observation).run()
        load_info = result.to_dict()
        load_info["samples_per_gpu"] = len(samples[0]) if count else 0
        load_info["sample_interval_s"] = sample_interval_s
        return build_report(
            backend=backend.name,
            started_at=started_at,
            finished_at=_now(),
            load=load_info,
            expectations=expect.to_dict(),
            thresholds=limits,
            checks=checks,
            xids=[{"gpu": e.gpu, "xid": e.xid} for e in xids],
        )
