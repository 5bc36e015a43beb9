"""The burn-in report: one JSON document with every check, its measured value and its threshold."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from provisioner.burnin.checks import FAILED, CheckResult

REPORT_VERSION = 1


def summarise(checks: Sequence[CheckResult]) -> str:
    """One paragraph for the operator: how many checks failed and each failure's sentence. Pure."""
    failed = [c for c in checks if c.status == FAILED]
    gpus = {c.gpu for c in checks if c.gpu is not None}
    if not failed:
        gpu_words = "1 GPU" if len(gpus) == 1 else f"{len(gpus)} GPUs"
        return f"PASSED: {len(checks)} checks on {gpu_words}, none failed."
    # NVML indices shift when a GPU drops off the bus: name each failed GPU's board as well.
    identities = {c.gpu: c.value for c in checks if c.name == "inventory.identity" and c.status != FAILED}
    boards = [
        f"GPU {gpu} is serial {identities[gpu]['serial']} at PCI {identities[gpu]['pci_bus_id']}."
        for gpu in sorted({c.gpu for c in failed if c.gpu is not None})
        if gpu in identities
    ]
    return f"FAILED: {len(failed)} of {len(checks)} checks failed. " + " ".join(
        [c.message for c in failed] + boards
    )


def build_report(
    *,
    backend: str,
    started_at: str,
    finished_at: str,
    load: dict[str, Any],
    expectations: dict[str, Any],
    thresholds: dict[str, Any],
    checks: Sequence[CheckResult],
    xids: list[dict[str, int]],
) -> dict[str, Any]:
    """Assemble the report of a run that completed. Pure function (apart from the host name)."""
    return {
        "version": REPORT_VERSION,
        "host": socket.gethostname(),
        "started_at": started_at,
        "finished_at": finished_at,
        "backend": backend,
        "load": load,
        "expectations": expectations,
        "not_checked": sorted(key for key, value in expectations.items() if value is None),
        "thresholds": thresholds,
        "passed": all(c.passed for c in checks),
        "checks": [c.to_dict() for c in checks],
        "xids": xids,
        "summary": summarise(checks),
    }


def build_error_report(
    *, backend: str, started_at: str, code: str, message: str, expectations: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report of a run that could not happen (NVML unavailable, bad arguments). Pure function."""
    return {
        "version": REPORT_VERSION,
        "host": socket.gethostname(),
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "backend": backend,
        "load": None,
        "expectations": expectations,
        "passed": False,
        "checks": [],
        "error": {"code": code, "message": message},
        "summary": f"Burn-in could not run: {message}",
    }
