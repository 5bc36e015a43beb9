"""The burn-in checks: readings plus expectations plus thresholds in, one result per check and GPU out.

Static readings (inventory, ECC, modes, links) are taken from the backend when the checks run, which is
after the load, so errors the load provoked are counted. Readings that only mean something under load
(temperature, power, clock event reasons, PCIe link training) come from the samples taken during it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import pynvml

from provisioner.burnin.backend import (
    NVLINK_ABSENT,
    NVLINK_ERROR_COUNTERS,
    NVLINK_MAX_LINKS,
    GpuBackend,
    PcieLink,
    XidEvent,
)
from provisioner.burnin.thresholds import APPLICATION_XIDS
from provisioner.errors import InvalidRequest

PASSED = "passed"
FAILED = "failed"
NOT_CHECKED = "not_checked"  # the expectation is null: the operator asked us not to check this
NOT_SUPPORTED = "not_supported"  # the GPU has no such feature (NVMLError_NotSupported)

# Names of the clock event reason bits (nvml.h nvmlClocksEventReason*).
CLOCK_EVENT_REASON_NAMES = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# What the common XIDs mean (NVIDIA XID catalog), for messages an operator understands.
XID_MEANINGS = {
    13: "graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "preemptive cleanup",
    48: "double-bit ECC error",
    56: "display engine error",
    57: "error programming video memory interface",
    58: "unstable video memory interface",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping recorded",
    64: "ECC page retirement or row remapping failure",
    65: "video processor exception",
    68: "NVDEC0 exception",
    69: "graphics engine class error",
    73: "NVENC2 error",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    80: "corrupted data sent to GPU",
    81: "VGA subsystem error",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
    154: "GPU recovery action changed",
}

RECOVERY_ACTIONS = {
    0: "none",
    1: "GPU reset",
    2: "node reboot",
    3: "drain peer-to-peer",
    4: "drain and reset",
    5: "recover IMEX domain",
    6: "bus reset",
    7: "system reboot",
}


@dataclass(frozen=True)
class Expectations:
    """What a server type should have. ``None`` for a field means "not checked"."""

    gpu_count: int | None = None
    gpu_model: str | None = None
    gpu_memory_gib: float | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    nvlink_links: int | None = None
    persistence_mode: bool | None = None
    mig_mode: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_EXPECTATION_TYPES: dict[str, tuple[type, ...]] = {
    "gpu_count": (int,),
    "gpu_model": (str,),
    "gpu_memory_gib": (int, float),
    "pcie_gen": (int,),
    "pcie_width": (int,),
    "nvlink_links": (int,),
    "persistence_mode": (bool,),
    "mig_mode": (bool,),
}


def parse_expectations(spec: Mapping[str, Any] | str | None) -> Expectations:
    """Build :class:`Expectations` from a mapping or JSON object. Pure function.

    :raises InvalidRequest: not an object, an unknown key, or a value of the wrong type.
    """
    if spec is None:
        return Expectations()
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise InvalidRequest(f"Expectations are not valid JSON: {err}") from err
    if not isinstance(spec, Mapping):
        raise InvalidRequest('Expectations must be a JSON object like {"gpu_count": 8}.')
    values: dict[str, Any] = {}
    for key, value in spec.items():
        if key not in _EXPECTATION_TYPES:
            raise InvalidRequest(f"Unknown expectation {key!r}; known: {', '.join(_EXPECTATION_TYPES)}.")
        types = _EXPECTATION_TYPES[key]
        wrong_bool = isinstance(value, bool) and bool not in types
        if value is not None and (wrong_bool or not isinstance(value, types)):
            raise InvalidRequest(f"Expectation {key!r} has the wrong type ({type(value).__name__}).")
        values[key] = value
    return Expectations(**values)


@dataclass
class CheckResult:
    """One check on one GPU (``gpu`` is ``None`` for host-wide checks)."""

    name: str
    gpu: int | None
    status: str
    value: Any
    threshold: Any
    message: str

    @property
    def passed(self) -> bool:
        return self.status != FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "gpu": self.gpu,
            "passed": self.passed,
            "status": self.status,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
        }


@dataclass
class Sample:
    """Readings of one GPU at one moment of the load window; a reading that failed is ``None``."""

    at_s: float
    temperature_c: int | None = None
    power_mw: int | None = None
    clock_event_reasons: int | None = None
    pcie: PcieLink | None = None
    errors: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadSummary:
    """What load ran during the sampling window (see :mod:`provisioner.burnin.load`)."""

    kind: str
    ran: bool
    error: str | None = None


@dataclass
class RunObservation:
    """Everything recorded during the run that the checks need besides the backend itself."""

    load: LoadSummary
    samples: dict[int, list[Sample]]
    xids: list[XidEvent]
    unwatched_gpus: list[int]
    pcie_replays_before: dict[int, int | None]
    nvlink_errors_before: dict[int, dict[int, dict[str, int]]]
    # Why XID events could not be watched at all, other than the platform not supporting it.
    xid_watch_error: str | None = None
    # The driver's cumulative slowdown nanoseconds per reason bit before the run (None: not counted).
    slowdown_ns_before: dict[int, dict[int, int] | None] = field(default_factory=dict)


def nvlink_states(backend: GpuBackend, gpu: int) -> dict[int, bool]:
    """``{link: active}`` for every NVLink the GPU has (see ``NVLINK_ABSENT``). Idempotent."""
    states: dict[int, bool] = {}
    for link in range(NVLINK_MAX_LINKS):
        try:
            states[link] = backend.nvlink_state(gpu, link)
        except NVLINK_ABSENT:
            continue
    return states


def read_nvlink_errors(backend: GpuBackend, gpu: int) -> dict[int, dict[str, int]]:
    """Error counters of every NVLink that exists: ``{link: {counter name: count}}``. Idempotent."""
    counters: dict[int, dict[str, int]] = {}
    for link in nvlink_states(backend, gpu):
        per_link: dict[str, int] = {}
        for counter_name, counter_id in NVLINK_ERROR_COUNTERS.items():
            try:
                per_link[counter_name] = backend.nvlink_error_counter(gpu, link, counter_id)
            except NVLINK_ABSENT:
                continue  # e.g. ECC data counters on NVLink generations without them
        counters[link] = per_link
    return counters


_ECC_COUNTER_WORDS = {
    "volatile": "volatile uncorrectable",
    "aggregate": "aggregate uncorrectable",
    "sram_aggregate": "sram aggregate uncorrectable",
    "sram_correctable_aggregate": "lifetime correctable SRAM",
    "dram_correctable_aggregate": "lifetime correctable DRAM",
}


def _gpu_label(gpu: int | None) -> str:
    return "Host" if gpu is None else f"GPU {gpu}"


def _reasons_names(mask: int) -> list[str]:
    return [name for bit, name in CLOCK_EVENT_REASON_NAMES.items() if mask & bit]


def _gen_width(gen: int | None, width: int | None) -> str:
    return f"Gen{gen} x{width}"


class CheckSuite:
    """Evaluates every check for one run. Create one per run; :meth:`run` is idempotent."""

    def __init__(
        self,
        backend: GpuBackend,
        expectations: Expectations,
        thresholds: Mapping[str, Any],
        observation: RunObservation,
    ) -> None:
        self.backend = backend
        self.expect = expectations
        self.th = thresholds
        self.obs = observation

    def run(self) -> list[CheckResult]:
        """Run all checks. A reading that fails unexpectedly fails its check; nothing here raises
        ``NVMLError``."""
        results: list[CheckResult] = []
        results += self._guard("inventory.driver", None, self.check_driver)
        results += self._guard("inventory.gpu_count", None, self.check_gpu_count)
        try:
            count = self.backend.device_count()
        except pynvml.NVMLError:
            count = 0  # already reported as a failed gpu_count check
        per_gpu: list[tuple[str, Callable[[int], list[CheckResult]]]] = [
            ("inventory.model", self.check_model),
            ("inventory.memory", self.check_memory_size),
            ("inventory.identity", self.check_identity),
            ("memory.ecc_mode", self.check_ecc_mode),
            ("memory.ecc_errors", self.check_ecc_errors),
            ("memory.remapping", self.check_remapping),
            ("memory.recovery_action", self.check_recovery_action),
            ("pcie.link", self.check_pcie_link),
            ("pcie.replays", self.check_pcie_replays),
            ("nvlink.links", self.check_nvlink_links),
            ("nvlink.errors", self.check_nvlink_errors),
            ("xid.events", self.check_xids),
            ("thermal.margin", self.check_thermal_margin),
            ("power.draw", self.check_power),
            ("clocks.event_reasons", self.check_clock_events),
            ("modes.persistence", self.check_persistence),
            ("modes.mig", self.check_mig),
        ]
        for gpu in range(count):
            for name, check in per_gpu:
                results += self._guard(name, gpu, lambda g=gpu, c=check: c(g))  # type: ignore[misc]
        results += self._guard("xid.events", None, self.check_xids_unknown_gpu)
        results += self._guard("load.ran", None, self.check_load)
        return results

    def _guard(self, name: str, gpu: int | None, check: Callable[[], list[CheckResult]]) -> list[CheckResult]:
        try:
            return check()
        except pynvml.NVMLError as err:
            # A reading that fails (GPU lost, unknown error, or NotSupported where the feature is required)
            # fails its check with the NVML error in words.
            return self._failed(name, gpu, None, None, f"{name} could not be read: {err}.")

    def _result(
        self, name: str, gpu: int | None, status: str, value: Any, threshold: Any, message: str
    ) -> list[CheckResult]:
        """The check's one result, its message prefixed with the GPU it is about (or "Host")."""
        return [CheckResult(name, gpu, status, value, threshold, f"{_gpu_label(gpu)}: {message}")]

    # One per status, for the outcomes a check knows when it writes them.

    def _passed(
        self, name: str, gpu: int | None, value: Any, threshold: Any, message: str
    ) -> list[CheckResult]:
        return self._result(name, gpu, PASSED, value, threshold, message)

    def _failed(
        self, name: str, gpu: int | None, value: Any, threshold: Any, message: str
    ) -> list[CheckResult]:
        return self._result(name, gpu, FAILED, value, threshold, message)

    def _not_checked(
        self, name: str, gpu: int | None, value: Any, threshold: Any, message: str
    ) -> list[CheckResult]:
        return self._result(name, gpu, NOT_CHECKED, value, threshold, message)

    def _not_supported(
        self, name: str, gpu: int | None, value: Any, threshold: Any, message: str
    ) -> list[CheckResult]:
        return self._result(name, gpu, NOT_SUPPORTED, value, threshold, message)

    # --- inventory ------------------------------------------------------------------------------

    def check_driver(self) -> list[CheckResult]:
        driver = self.backend.driver_version()
        cuda = self.backend.cuda_driver_version()
        cuda_text = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        value = {"driver_version": driver, "cuda_driver_version": cuda_text}
        return self._passed(
            "inventory.driver", None, value, None, f"NVIDIA driver {driver}, CUDA {cuda_text}."
        )

    def check_gpu_count(self) -> list[CheckResult]:
        count = self.backend.device_count()
        expected = self.expect.gpu_count
        if expected is None:
            return self._not_checked(
                "inventory.gpu_count", None, count, None, f"{count} GPU(s) (count not checked)."
            )
        if count != expected:
            return self._failed(
                "inventory.gpu_count", None, count, expected, f"{count} GPU(s) visible, expected {expected}."
            )
        return self._passed("inventory.gpu_count", None, count, expected, f"{count} GPU(s), as expected.")

    def check_model(self, gpu: int) -> list[CheckResult]:
        model = self.backend.device_name(gpu)
        expected = self.expect.gpu_model
        if expected is None:
            return self._not_checked("inventory.model", gpu, model, None, f"{model} (model not checked).")
        if model != expected:
            return self._failed(
                "inventory.model", gpu, model, expected, f"model {model}, expected {expected}."
            )
        return self._passed("inventory.model", gpu, model, expected, f"{model}, as expected.")

    def check_memory_size(self, gpu: int) -> list[CheckResult]:
        total = self.backend.memory_total_bytes(gpu)
        gib = round(total / 2**30, 2)
        expected = self.expect.gpu_memory_gib
        if expected is None:
            return self._not_checked("inventory.memory", gpu, gib, None, f"{gib} GiB (not checked).")
        tolerance = self.th["memory_tolerance_fraction"] or 0.0
        minimum = round(expected * (1 - tolerance), 2)
        threshold = {"expected_gib": expected, "min_gib": minimum}
        if gib < minimum:
            return self._failed(
                "inventory.memory", gpu, gib, threshold, f"{gib} GiB of memory, expected {expected} GiB."
            )
        return self._passed("inventory.memory", gpu, gib, threshold, f"{gib} GiB of memory.")

    def check_identity(self, gpu: int) -> list[CheckResult]:
        uuid = self.backend.uuid(gpu)
        try:
            serial: str | None = self.backend.serial(gpu)
        except pynvml.NVMLError_NotSupported:
            serial = None  # boards without an InfoROM serial (some PCIe and VM-passthrough cards)
        pci_bus_id = self.backend.pci_bus_id(gpu)
        value = {"uuid": uuid, "serial": serial, "pci_bus_id": pci_bus_id}
        return self._passed(
            "inventory.identity", gpu, value, None, f"UUID {uuid}, serial {serial}, PCI {pci_bus_id}."
        )

    # --- memory health --------------------------------------------------------------------------

    def check_ecc_mode(self, gpu: int) -> list[CheckResult]:
        current, pending = self.backend.ecc_mode(gpu)
        value = {"current": current, "pending": pending}
        if not current:
            return self._failed("memory.ecc_mode", gpu, value, True, "ECC is disabled, expected enabled.")
        if not pending:
            return self._failed(
                "memory.ecc_mode", gpu, value, True, "ECC will be disabled at the next reset."
            )
        return self._passed("memory.ecc_mode", gpu, value, True, "ECC enabled.")

    def check_ecc_errors(self, gpu: int) -> list[CheckResult]:
        limits = {
            "volatile": self.th["max_volatile_uncorrectable_ecc"],
            "aggregate": self.th["max_aggregate_uncorrectable_ecc"],
            "sram_aggregate": self.th["max_aggregate_sram_uncorrectable_ecc"],
            "sram_correctable_aggregate": self.th["max_aggregate_sram_correctable_ecc"],
            "dram_correctable_aggregate": self.th["max_aggregate_dram_correctable_ecc"],
        }
        try:
            value: dict[str, int | None] = {
                "volatile": self.backend.uncorrectable_ecc(gpu, aggregate=False),
                "aggregate": self.backend.uncorrectable_ecc(gpu, aggregate=True),
            }
        except pynvml.NVMLError_NotSupported:
            # NVML counts ECC errors only with ECC enabled; memory.ecc_mode reports that.
            return self._not_supported(
                "memory.ecc_errors", gpu, None, limits, "ECC error counters not available."
            )
        readings: dict[str, Callable[[], int]] = {
            "sram_aggregate": lambda: self.backend.sram_uncorrectable_aggregate(gpu),
            "sram_correctable_aggregate": lambda: self.backend.correctable_ecc_aggregate(gpu, "sram"),
            "dram_correctable_aggregate": lambda: self.backend.correctable_ecc_aggregate(gpu, "dram"),
        }
        for kind, read in readings.items():
            try:
                value[kind] = read()
            except pynvml.NVMLError_NotSupported:
                value[kind] = None
        problems = [
            f"{count} {_ECC_COUNTER_WORDS[kind]} ECC errors (limit {limits[kind]})"
            for kind, count in value.items()
            if count is not None and limits[kind] is not None and count > limits[kind]
        ]
        if problems:
            return self._failed("memory.ecc_errors", gpu, value, limits, "; ".join(problems) + ".")
        return self._passed("memory.ecc_errors", gpu, value, limits, "no ECC error counts over the limits.")

    def check_remapping(self, gpu: int) -> list[CheckResult]:
        try:
            rows = self.backend.remapped_rows(gpu)
        except pynvml.NVMLError_NotSupported:
            return self._check_retired_pages(gpu)
        threshold = {
            "allow_pending": self.th["allow_row_remap_pending"],
            "allow_failure": self.th["allow_row_remap_failure"],
        }
        value = asdict(rows)
        if rows.failure and not threshold["allow_failure"]:
            return self._failed(
                "memory.remapping",
                gpu,
                value,
                threshold,
                "row remapping failed (no spare rows left); the GPU needs replacement.",
            )
        if rows.pending and not threshold["allow_pending"]:
            return self._failed(
                "memory.remapping",
                gpu,
                value,
                threshold,
                "a row remap is pending; the GPU needs a reset before use.",
            )
        return self._passed(
            "memory.remapping",
            gpu,
            value,
            threshold,
            f"no pending or failed row remaps ({rows.corrected} correctable, "
            f"{rows.uncorrected} uncorrectable rows remapped).",
        )

    def _check_retired_pages(self, gpu: int) -> list[CheckResult]:
        try:
            pages = self.backend.retired_pages(gpu)
        except pynvml.NVMLError_NotSupported:
            return self._not_supported(
                "memory.remapping", gpu, None, None, "neither row remapping nor page retirement supported."
            )
        threshold = {
            "max_retired_pages": self.th["max_retired_pages"],
            "allow_pending": self.th["allow_retired_pages_pending"],
        }
        value = asdict(pages)
        total = pages.single_bit + pages.double_bit
        if pages.pending and not threshold["allow_pending"]:
            return self._failed(
                "memory.remapping",
                gpu,
                value,
                threshold,
                "a page retirement is pending; the GPU needs a reset.",
            )
        if threshold["max_retired_pages"] is not None and total > threshold["max_retired_pages"]:
            return self._failed(
                "memory.remapping",
                gpu,
                value,
                threshold,
                f"{total} retired memory pages, limit {threshold['max_retired_pages']}.",
            )
        return self._passed(
            "memory.remapping", gpu, value, threshold, f"{total} retired pages, none pending."
        )

    def check_recovery_action(self, gpu: int) -> list[CheckResult]:
        allowed = self.th["allowed_recovery_actions"]
        try:
            action = self.backend.recovery_action(gpu)
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
            # InvalidArgument: a driver older than the field (565) may not know its id at all
            return self._not_supported(
                "memory.recovery_action", gpu, None, allowed, "driver does not report a recovery action."
            )
        words = RECOVERY_ACTIONS.get(action, f"action {action}")
        if allowed is not None and action not in allowed:
            return self._failed(
                "memory.recovery_action", gpu, action, allowed, f"the driver asks for recovery: {words}."
            )
        return self._passed("memory.recovery_action", gpu, action, allowed, f"recovery action {words}.")

    # --- PCIe -----------------------------------------------------------------------------------

    def check_pcie_link(self, gpu: int) -> list[CheckResult]:
        links = [s.pcie for s in self.obs.samples.get(gpu, []) if s.pcie is not None]
        if not links:
            links = [self.backend.pcie_link(gpu)]
        max_gen, max_width = links[-1].max_gen, links[-1].max_width
        want_gen = self.expect.pcie_gen if self.expect.pcie_gen is not None else max_gen
        want_width = self.expect.pcie_width if self.expect.pcie_width is not None else max_width
        # The best link seen in one sample (links train down at idle and come up under traffic): a Gen5 x8
        # sample and a Gen1 x16 one are two bad links, not a good Gen5 x16.
        good = [link for link in links if link.gen >= want_gen and link.width >= want_width]
        best = good[0] if good else max(links, key=lambda link: (link.width << link.gen, link.width))
        gen, width = best.gen, best.width
        value = {
            "gen": gen,
            "width": width,
            "max_gen": max_gen,
            "max_width": max_width,
            "under_load": self.obs.load.ran,
        }
        threshold = {
            "gen": want_gen,
            "width": want_width,
            "source": "server type" if self.expect.pcie_gen is not None else "link maximum",
        }
        where = "under load" if self.obs.load.ran else "at idle (no load ran)"
        if width < want_width:
            return self._failed(
                "pcie.link", gpu, value, threshold, f"PCIe link x{width}, expected x{want_width} ({where})."
            )
        if gen < want_gen:
            return self._failed(
                "pcie.link", gpu, value, threshold, f"PCIe link Gen{gen}, expected Gen{want_gen} ({where})."
            )
        return self._passed(
            "pcie.link", gpu, value, threshold, f"PCIe {_gen_width(gen, width)} {where}, as expected."
        )

    def check_pcie_replays(self, gpu: int) -> list[CheckResult]:
        limit = self.th["max_pcie_replays"]
        try:
            after = self.backend.pcie_replay_counter(gpu)
        except pynvml.NVMLError_NotSupported:
            return self._not_supported("pcie.replays", gpu, None, limit, "PCIe replay counter not supported.")
        before = self.obs.pcie_replays_before.get(gpu)
        during = after - before if before is not None else after
        value = {"during_run": during, "total": after}
        if limit is not None and during > limit:
            return self._failed(
                "pcie.replays", gpu, value, limit, f"{during} PCIe replays during the run, limit {limit}."
            )
        return self._passed("pcie.replays", gpu, value, limit, f"{during} PCIe replays during the run.")

    # --- NVLink ---------------------------------------------------------------------------------

    def check_nvlink_links(self, gpu: int) -> list[CheckResult]:
        expected = self.expect.nvlink_links
        states = nvlink_states(self.backend, gpu)
        active = [link for link, up in states.items() if up]
        down = [link for link, up in states.items() if not up]
        value = {"active": len(active), "down_links": down}
        wanted = f", expected {expected}" if expected is not None else ""
        if down:
            # A link the GPU has that is not up is a fault whatever count the server type expects.
            return self._failed(
                "nvlink.links",
                gpu,
                value,
                expected,
                f"NVLink {', '.join(map(str, down))} down ({len(active)} active{wanted}).",
            )
        if expected is None:
            return self._not_checked(
                "nvlink.links",
                gpu,
                value,
                None,
                f"{len(active)} NVLinks active (not checked: the server type expects no NVLink count).",
            )
        if len(active) < expected:
            return self._failed(
                "nvlink.links", gpu, value, expected, f"{len(active)} NVLinks active{wanted}."
            )
        return self._passed(
            "nvlink.links", gpu, value, expected, f"{len(active)} NVLinks active, as expected."
        )

    def check_nvlink_errors(self, gpu: int) -> list[CheckResult]:
        limit = self.th["max_nvlink_errors"]
        # Counted on whatever links exist, whatever the server type says about their number: a null
        # nvlink_links only turns off the link count, and errors on a link are a fault either way.
        after = read_nvlink_errors(self.backend, gpu)
        if not after:
            return self._passed("nvlink.errors", gpu, None, limit, "no NVLinks to count errors on.")
        before = self.obs.nvlink_errors_before.get(gpu, {})
        during: dict[str, int] = dict.fromkeys(NVLINK_ERROR_COUNTERS, 0)
        worst_links: dict[int, int] = {}
        for link, counters in after.items():
            for name, count in counters.items():
                delta = count - before.get(link, {}).get(name, 0)
                during[name] += delta
                if delta:
                    worst_links[link] = worst_links.get(link, 0) + delta
        total = sum(during.values())
        value = {"during_run": during, "links_with_errors": sorted(worst_links)}
        if limit is not None and total > limit:
            links = ", ".join(map(str, sorted(worst_links)))
            return self._failed(
                "nvlink.errors",
                gpu,
                value,
                limit,
                f"{total} NVLink errors during the run on link(s) {links}, limit {limit}.",
            )
        return self._passed("nvlink.errors", gpu, value, limit, f"{total} NVLink errors during the run.")

    # --- XIDs -----------------------------------------------------------------------------------

    def _xid_result(self, gpu: int | None, xids: list[int]) -> list[CheckResult]:
        drain = self.th["drain_xids"] or []
        bad = sorted({x for x in xids if x in drain})
        described = ", ".join(f"XID {x} ({XID_MEANINGS.get(x, 'see the NVIDIA XID catalog')})" for x in bad)
        if bad:
            return self._failed(
                "xid.events", gpu, xids, drain, f"{described} during burn-in; drain the server."
            )
        if xids:
            app = [x for x in xids if x in APPLICATION_XIDS]
            note = " (application XIDs, not hardware faults)" if app else ""
            return self._passed("xid.events", gpu, xids, drain, f"XIDs {sorted(set(xids))} seen{note}.")
        return self._passed("xid.events", gpu, [], drain, "no XID errors during burn-in.")

    def check_xids(self, gpu: int) -> list[CheckResult]:
        if self.obs.xid_watch_error is not None:
            return self._failed(
                "xid.events",
                gpu,
                None,
                self.th["drain_xids"],
                f"XID events could not be watched ({self.obs.xid_watch_error}): a burn-in that cannot see "
                "XID errors cannot pass.",
            )
        if gpu in self.obs.unwatched_gpus:
            return self._not_supported(
                "xid.events", gpu, None, self.th["drain_xids"], "XID events could not be watched."
            )
        return self._xid_result(gpu, [e.xid for e in self.obs.xids if e.gpu == gpu])

    def check_xids_unknown_gpu(self) -> list[CheckResult]:
        """XIDs from a GPU that is no longer enumerated (it fell off the bus after the watch started)."""
        try:
            count = self.backend.device_count()
        except pynvml.NVMLError:
            count = 0
        orphans = [e.xid for e in self.obs.xids if e.gpu >= count or e.gpu < 0]
        return self._xid_result(None, orphans) if orphans else []

    # --- under load -----------------------------------------------------------------------------

    def _load_note(self) -> str:
        return "under load" if self.obs.load.ran else "at idle (no load ran)"

    def _sample_error(self, gpu: int, reading: str) -> str | None:
        for sample in self.obs.samples.get(gpu, []):
            if reading in sample.errors:
                return sample.errors[reading]
        return None

    def check_thermal_margin(self, gpu: int) -> list[CheckResult]:
        minimum = self.th["min_thermal_margin_c"]
        temps = [s.temperature_c for s in self.obs.samples.get(gpu, []) if s.temperature_c is not None]
        if not temps:
            error = self._sample_error(gpu, "temperature_c") or "no samples"
            return self._failed(
                "thermal.margin", gpu, None, minimum, f"temperature could not be read: {error}."
            )
        try:
            slowdown: int | None = self.backend.temperature_threshold_c(gpu, "slowdown")
        except pynvml.NVMLError_NotSupported:
            slowdown = None
        peak = max(temps)
        value = {
            "max_temperature_c": peak,
            "slowdown_c": slowdown,
            "margin_c": None if slowdown is None else slowdown - peak,
        }
        if slowdown is None:
            return self._not_supported(
                "thermal.margin", gpu, value, minimum, f"peak {peak} C; slowdown threshold not reported."
            )
        margin = slowdown - peak
        if minimum is not None and margin < minimum:
            return self._failed(
                "thermal.margin",
                gpu,
                value,
                minimum,
                f"peak {peak} C {self._load_note()}, only {margin} C below the slowdown threshold "
                f"{slowdown} C (need {minimum} C).",
            )
        return self._passed(
            "thermal.margin",
            gpu,
            value,
            minimum,
            f"peak {peak} C {self._load_note()}, {margin} C below the slowdown threshold.",
        )

    def check_power(self, gpu: int) -> list[CheckResult]:
        fraction = self.th["max_power_fraction_of_limit"]
        powers = [s.power_mw for s in self.obs.samples.get(gpu, []) if s.power_mw is not None]
        if not powers:
            error = self._sample_error(gpu, "power_mw")
            if error and "Not Supported" in error:
                return self._not_supported("power.draw", gpu, None, fraction, "power reading not supported.")
            return self._failed(
                "power.draw", gpu, None, fraction, f"power could not be read: {error or 'no samples'}."
            )
        limit_w = self.backend.power_limit_mw(gpu) / 1000
        peak_w = max(powers) / 1000
        mean_w = sum(powers) / len(powers) / 1000
        value = {"max_w": round(peak_w, 1), "mean_w": round(mean_w, 1), "limit_w": round(limit_w, 1)}
        threshold = {
            "max_fraction_of_limit": fraction,
            "max_w": None if fraction is None else round(limit_w * fraction, 1),
        }
        if fraction is not None and peak_w > limit_w * fraction:
            return self._failed(
                "power.draw",
                gpu,
                value,
                threshold,
                f"power draw {peak_w:.0f} W {self._load_note()}, above the enforced limit {limit_w:.0f} W.",
            )
        return self._passed(
            "power.draw",
            gpu,
            value,
            threshold,
            f"peak {peak_w:.0f} W of {limit_w:.0f} W {self._load_note()}.",
        )

    def check_clock_events(self, gpu: int) -> list[CheckResult]:
        bad_mask = self.th["bad_clock_event_reasons"] or 0
        seen = 0
        readings = [
            s.clock_event_reasons for s in self.obs.samples.get(gpu, []) if s.clock_event_reasons is not None
        ]
        for reasons in readings:
            seen |= reasons
        threshold = {"bad_mask": hex(bad_mask), "bad": _reasons_names(bad_mask)}
        if not readings:
            error = self._sample_error(gpu, "clock_event_reasons")
            if error and "Not Supported" in error:
                return self._not_supported(
                    "clocks.event_reasons", gpu, None, threshold, "clock event reasons not supported."
                )
            return self._failed(
                "clocks.event_reasons",
                gpu,
                None,
                threshold,
                f"clock event reasons could not be read: {error or 'no samples'}.",
            )
        value: dict[str, Any] = {"seen_mask": hex(seen), "seen": _reasons_names(seen)}
        # A slowdown shorter than the sampling interval is missed by the bit mask; the driver's cumulative
        # slowdown time (where it counts one) still grew during the run.
        grown = self._slowdown_during_run(gpu)
        if grown:
            value["slowdown_ms_during_run"] = {
                _reasons_names(bit)[0]: round(ns / 1e6, 1) for bit, ns in grown.items()
            }
        grown_mask = 0
        for bit in grown:
            grown_mask |= bit
        bad = (seen | grown_mask) & bad_mask
        if bad:
            timed = [
                f"{_reasons_names(bit)[0]} {ns / 1e6:.0f} ms" for bit, ns in grown.items() if bit & bad_mask
            ]
            detail = f" (slowed for {', '.join(timed)} during the run)" if timed else ""
            return self._failed(
                "clocks.event_reasons",
                gpu,
                value,
                threshold,
                f"clocks slowed by {', '.join(_reasons_names(bad))} {self._load_note()}{detail}.",
            )
        return self._passed(
            "clocks.event_reasons",
            gpu,
            value,
            threshold,
            f"no hardware or thermal slowdown {self._load_note()} "
            f"(seen: {', '.join(_reasons_names(seen)) or 'none'}).",
        )

    def _slowdown_during_run(self, gpu: int) -> dict[int, int]:
        """Nanoseconds of slowdown per reason bit that the driver counted during the run (only growth)."""
        before = self.obs.slowdown_ns_before.get(gpu)
        if not before:
            return {}
        try:
            after = self.backend.slowdown_ns(gpu)
        except pynvml.NVMLError:
            return {}
        return {bit: after[bit] - ns for bit, ns in before.items() if bit in after and after[bit] > ns}

    # --- modes ----------------------------------------------------------------------------------

    def check_persistence(self, gpu: int) -> list[CheckResult]:
        expected = self.expect.persistence_mode
        mode = self.backend.persistence_mode(gpu)
        words = "enabled" if mode else "disabled"
        if expected is None:
            return self._not_checked(
                "modes.persistence", gpu, mode, None, f"persistence mode {words} (not checked)."
            )
        if mode != expected:
            return self._failed(
                "modes.persistence",
                gpu,
                mode,
                expected,
                f"persistence mode {words}, expected {'enabled' if expected else 'disabled'}.",
            )
        return self._passed(
            "modes.persistence", gpu, mode, expected, f"persistence mode {words}, as expected."
        )

    def check_mig(self, gpu: int) -> list[CheckResult]:
        expected = self.expect.mig_mode
        try:
            current, pending = self.backend.mig_mode(gpu)
        except pynvml.NVMLError_NotSupported:
            current, pending = False, False  # GPUs without MIG cannot be in MIG mode
        value = {"current": current, "pending": pending}
        words = "enabled" if current else "disabled"
        if expected is None:
            return self._not_checked("modes.mig", gpu, value, None, f"MIG mode {words} (not checked).")
        if current != expected or pending != expected:
            return self._failed(
                "modes.mig",
                gpu,
                value,
                expected,
                f"MIG mode {words} (pending {'enabled' if pending else 'disabled'}), "
                f"expected {'enabled' if expected else 'disabled'}.",
            )
        return self._passed("modes.mig", gpu, value, expected, f"MIG mode {words}, as expected.")

    # --- load -----------------------------------------------------------------------------------

    def check_load(self) -> list[CheckResult]:
        load = self.obs.load
        required = bool(self.th["require_load"])
        value = {"kind": load.kind, "ran": load.ran, "error": load.error}
        if load.error:
            return self._failed(
                "load.ran",
                None,
                value,
                {"require_load": required},
                f"the {load.kind} load failed: {load.error}.",
            )
        if not load.ran:
            status = FAILED if required else NOT_CHECKED
            return self._result(
                "load.ran",
                None,
                status,
                value,
                {"require_load": required},
                "no load ran (none chosen, or neither torch nor dcgmi present): readings taken at idle.",
            )
        return self._passed("load.ran", None, value, {"require_load": required}, f"{load.kind} load ran.")
