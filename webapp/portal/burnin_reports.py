"""Burn-in reports as an operator reads them on a node's page: a verdict, the checks that need a look
first, the rest folded away, and every reading written for people (units, yes/no, "none"), never as the
Python repr of the report's JSON."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

# What an operator must look at: a check that failed, or one the GPU could not answer (not_supported).
# "not_checked" is the server type's own choice (its expectation is null), so it folds with the passes.
ATTENTION_STATUSES = ("failed", "not_supported")
STATUS_ORDER = ("failed", "not_supported", "not_checked", "passed")
STATUS_WORDS = {
    "failed": "failed",
    "not_supported": "could not be checked",
    "not_checked": "not checked",
    "passed": "passed",
}

_ACRONYMS = {
    "gpu": "GPU",
    "gpus": "GPUs",
    "ecc": "ECC",
    "pcie": "PCIe",
    "pci": "PCI",
    "nvlink": "NVLink",
    "nvlinks": "NVLinks",
    "xid": "XID",
    "xids": "XIDs",
    "mig": "MIG",
    "uuid": "UUID",
    "id": "ID",
    "sram": "SRAM",
    "cuda": "CUDA",
    "tflops": "TFLOPS",
}
# A key's unit from its suffix, as the burn-in writes them (max_temperature_c, limit_w, min_gib).
_UNIT_SUFFIXES = {"c": "°C", "w": "W", "gib": "GiB", "s": "s", "seconds": "s", "mhz": "MHz"}
# Checks whose bare numbers (value or threshold) carry a unit their key cannot.
_CHECK_UNITS = {"inventory.memory": "GiB", "thermal.margin": "°C"}
_MESSAGE_PREFIX = re.compile(r"^(GPU \d+|Host): ")


def words(key: str) -> str:
    """``max_temperature`` -> "max temperature", ``pcie.replays`` -> "PCIe replays". Pure."""
    return " ".join(_ACRONYMS.get(part, part) for part in re.split(r"[._]", key) if part)


def check_title(name: str) -> str:
    """A check's name for people: ``memory.ecc_errors`` -> "Memory · ECC errors". Pure."""
    group, _, rest = name.partition(".")
    title = words(group)
    title = title[:1].upper() + title[1:]
    return f"{title} · {words(rest)}" if rest else title


def _number(value: float) -> str:
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return str(int(value))


def reading(value: Any, unit: str = "") -> str:
    """One value of a report as people write it: numbers with their unit, yes/no, "none" for an empty
    list, "—" for a missing reading, "key value" pairs for a mapping. Pure."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        return f"{_number(value)}\u00a0{unit}" if unit else _number(value)  # no break before the unit
    if isinstance(value, list | tuple):
        return ", ".join(reading(item, unit) for item in value) if value else "none"
    if isinstance(value, dict):
        parts = []
        for key, item in value.items():
            base, _, suffix = str(key).rpartition("_")
            item_unit = _UNIT_SUFFIXES.get(suffix, "") if base else ""
            label = words(base if item_unit else str(key))
            text = reading(item, item_unit)
            parts.append(f"{label} ({text})" if isinstance(item, dict) else f"{label} {text}")
        return ", ".join(parts) if parts else "—"
    return str(value)


@dataclass(frozen=True)
class CheckRow:
    """One check of a report, ready to show."""

    title: str
    gpu: str  # "0".."7", or "host" for a host-wide check
    status: str
    measured: str
    limit: str
    message: str


@dataclass(frozen=True)
class ReportView:
    """One burn-in report on a node's page."""

    row: Any  # the BurnInReport
    verdict: str  # "passed", "failed", or "error" (the burn-in could not run)
    counts: str  # "139 checks: 137 passed, 1 failed, 1 could not be checked"
    attention: list[CheckRow]
    rest: list[CheckRow]
    rest_counts: str  # what the folded checks are: "137 passed, 1 not checked"
    error: str
    load: str  # what load ran, for how long, what it reached


def _check_row(check: dict[str, Any]) -> CheckRow:
    name = str(check.get("name", ""))
    unit = _CHECK_UNITS.get(name, "")
    gpu = check.get("gpu")
    return CheckRow(
        title=check_title(name),
        gpu="host" if gpu is None else str(gpu),
        status=str(check.get("status") or ("passed" if check.get("passed") else "failed")),
        measured=reading(check.get("value"), unit),
        limit=reading(check.get("threshold"), unit) if check.get("threshold") is not None else "",
        message=_MESSAGE_PREFIX.sub("", str(check.get("message", ""))),
    )


def _tally(rows: list[CheckRow]) -> str:
    counts = Counter(r.status for r in rows)
    ordered = [s for s in STATUS_ORDER if counts[s]] + sorted(s for s in counts if s not in STATUS_ORDER)
    return ", ".join(f"{counts[s]} {STATUS_WORDS.get(s, words(s))}" for s in ordered)


def _load(load: Any) -> str:
    if not isinstance(load, dict) or not load.get("kind"):
        return ""
    text = f"{load['kind']} load"
    if load.get("ran_seconds") is not None:
        text += f" for {_number(load['ran_seconds'])}\u00a0s"
    if load.get("error"):
        return f"{text}: {load['error']}"
    rates = load.get("tflops_per_gpu") or []
    if rates:
        low, high = _number(min(rates)), _number(max(rates))
        text += f", {low} TFLOPS per GPU" if low == high else f", {low} to {high} TFLOPS per GPU"
    return text


def report_view(row: Any) -> ReportView:
    """How one BurnInReport row reads on the page: failed and unanswerable checks first (failed ahead),
    the others folded, in the report's order."""
    report = row.report if isinstance(row.report, dict) else {}
    rows = [_check_row(c) for c in report.get("checks") or [] if isinstance(c, dict)]
    attention = sorted(
        (r for r in rows if r.status in ATTENTION_STATUSES), key=lambda r: ATTENTION_STATUSES.index(r.status)
    )
    rest = [r for r in rows if r.status not in ATTENTION_STATUSES]
    error = report.get("error") or {}
    if row.passed:
        verdict = "passed"
    elif error and not rows:
        verdict = "error"
    else:
        verdict = "failed"
    return ReportView(
        row=row,
        verdict=verdict,
        counts=f"{len(rows)} checks: {_tally(rows)}" if rows else "",
        attention=attention,
        rest=rest,
        rest_counts=_tally(rest),
        error=str(error.get("message", "")) if isinstance(error, dict) else str(error),
        load=_load(report.get("load")),
    )
