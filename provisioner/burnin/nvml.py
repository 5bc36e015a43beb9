"""The real backend: NVIDIA's NVML through nvidia-ml-py (``import pynvml``).

Only read calls are made: nothing here changes clocks, power limits, persistence, ECC or MIG mode, and
nothing resets a GPU. Function names were checked against nvidia-ml-py 13.x.
"""

from __future__ import annotations

import contextlib
import ctypes
from typing import Any

import pynvml

from provisioner.burnin.backend import (
    SLOWDOWN_COUNTERS,
    GpuBackend,
    PcieLink,
    RemappedRows,
    RetiredPages,
    XidEvent,
)
from provisioner.errors import NvmlUnavailable

_THRESHOLD_KINDS = {
    "slowdown": pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
    "shutdown": pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN,
}


class NvmlBackend(GpuBackend):
    """Reads the GPUs of this host through NVML."""

    name = "nvml"

    def __init__(self) -> None:
        self._handles: dict[int, Any] = {}
        self._event_set: Any = None
        self._initialised = False

    def open(self) -> None:
        """Load NVML. Not idempotent (pairs with ``close``).

        :raises NvmlUnavailable: the library is missing, the driver is not loaded, or NVML failed to start.
        """
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            # Never a silent pass: a host without NVML cannot be burnt in.
            raise NvmlUnavailable(
                f"NVML not available: {err} (is the NVIDIA driver installed and a GPU present?)"
            ) from err
        self._initialised = True

    def close(self) -> None:
        if self._event_set is not None:
            # The set dies with the NVML session anyway: a failure to free it is harmless.
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlEventSetFree(self._event_set)
            self._event_set = None
        if self._initialised:
            # Shutting down a broken session must not hide the report.
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()
            self._initialised = False
        self._handles.clear()

    def _handle(self, gpu: int) -> Any:
        if gpu not in self._handles:
            self._handles[gpu] = pynvml.nvmlDeviceGetHandleByIndex(gpu)
        return self._handles[gpu]

    def driver_version(self) -> str:
        return str(pynvml.nvmlSystemGetDriverVersion())

    def cuda_driver_version(self) -> int:
        return int(pynvml.nvmlSystemGetCudaDriverVersion())

    def device_count(self) -> int:
        return int(pynvml.nvmlDeviceGetCount())

    def device_name(self, gpu: int) -> str:
        return str(pynvml.nvmlDeviceGetName(self._handle(gpu)))

    def uuid(self, gpu: int) -> str:
        return str(pynvml.nvmlDeviceGetUUID(self._handle(gpu)))

    def serial(self, gpu: int) -> str:
        return str(pynvml.nvmlDeviceGetSerial(self._handle(gpu)))

    def pci_bus_id(self, gpu: int) -> str:
        return str(pynvml.nvmlDeviceGetPciInfo(self._handle(gpu)).busId)

    def memory_total_bytes(self, gpu: int) -> int:
        return int(pynvml.nvmlDeviceGetMemoryInfo(self._handle(gpu)).total)

    def ecc_mode(self, gpu: int) -> tuple[bool, bool]:
        current, pending = pynvml.nvmlDeviceGetEccMode(self._handle(gpu))
        return bool(current), bool(pending)

    def uncorrectable_ecc(self, gpu: int, *, aggregate: bool) -> int:
        counter = pynvml.NVML_AGGREGATE_ECC if aggregate else pynvml.NVML_VOLATILE_ECC
        return int(
            pynvml.nvmlDeviceGetTotalEccErrors(
                self._handle(gpu), pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, counter
            )
        )

    def sram_uncorrectable_aggregate(self, gpu: int) -> int:
        return int(
            pynvml.nvmlDeviceGetMemoryErrorCounter(
                self._handle(gpu),
                pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                pynvml.NVML_AGGREGATE_ECC,
                pynvml.NVML_MEMORY_LOCATION_SRAM,
            )
        )

    def correctable_ecc_aggregate(self, gpu: int, location: str) -> int:
        where = {"sram": pynvml.NVML_MEMORY_LOCATION_SRAM, "dram": pynvml.NVML_MEMORY_LOCATION_DRAM}[location]
        return int(
            pynvml.nvmlDeviceGetMemoryErrorCounter(
                self._handle(gpu), pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_AGGREGATE_ECC, where
            )
        )

    def remapped_rows(self, gpu: int) -> RemappedRows:
        corrected, uncorrected, pending, failure = pynvml.nvmlDeviceGetRemappedRows(self._handle(gpu))
        return RemappedRows(int(corrected), int(uncorrected), bool(pending), bool(failure))

    def retired_pages(self, gpu: int) -> RetiredPages:
        handle = self._handle(gpu)
        single = pynvml.nvmlDeviceGetRetiredPages(
            handle, pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
        )
        double = pynvml.nvmlDeviceGetRetiredPages(
            handle, pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
        )
        pending = pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle)
        return RetiredPages(len(single), len(double), bool(pending))

    def recovery_action(self, gpu: int) -> int:
        values = pynvml.nvmlDeviceGetFieldValues(
            self._handle(gpu), [pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION]
        )
        if values[0].nvmlReturn != pynvml.NVML_SUCCESS:
            raise pynvml.NVMLError(values[0].nvmlReturn)
        return int(values[0].value.uiVal)

    def pcie_link(self, gpu: int) -> PcieLink:
        handle = self._handle(gpu)
        # nvmlDeviceGetMaxPcieLinkGeneration is the maximum of GPU and slot together, which is what the
        # link should train to; nvmlDeviceGetGpuMaxPcieLinkGeneration would be the GPU's alone.
        return PcieLink(
            gen=int(pynvml.nvmlDeviceGetCurrPcieLinkGeneration(handle)),
            width=int(pynvml.nvmlDeviceGetCurrPcieLinkWidth(handle)),
            max_gen=int(pynvml.nvmlDeviceGetMaxPcieLinkGeneration(handle)),
            max_width=int(pynvml.nvmlDeviceGetMaxPcieLinkWidth(handle)),
        )

    def pcie_replay_counter(self, gpu: int) -> int:
        return int(pynvml.nvmlDeviceGetPcieReplayCounter(self._handle(gpu)))

    def nvlink_state(self, gpu: int, link: int) -> bool:
        return pynvml.nvmlDeviceGetNvLinkState(self._handle(gpu), link) == pynvml.NVML_FEATURE_ENABLED

    def nvlink_error_counter(self, gpu: int, link: int, counter: int) -> int:
        return int(pynvml.nvmlDeviceGetNvLinkErrorCounter(self._handle(gpu), link, counter))

    def temperature_c(self, gpu: int) -> int:
        return int(pynvml.nvmlDeviceGetTemperature(self._handle(gpu), pynvml.NVML_TEMPERATURE_GPU))

    def temperature_threshold_c(self, gpu: int, kind: str) -> int:
        return int(pynvml.nvmlDeviceGetTemperatureThreshold(self._handle(gpu), _THRESHOLD_KINDS[kind]))

    def power_usage_mw(self, gpu: int) -> int:
        return int(pynvml.nvmlDeviceGetPowerUsage(self._handle(gpu)))

    def power_limit_mw(self, gpu: int) -> int:
        return int(pynvml.nvmlDeviceGetEnforcedPowerLimit(self._handle(gpu)))

    def clock_event_reasons(self, gpu: int) -> int:
        handle = self._handle(gpu)
        try:
            return int(pynvml.nvmlDeviceGetCurrentClocksEventReasons(handle))
        except pynvml.NVMLError_FunctionNotFound:
            # Drivers older than the "clocks event" rename only export the throttle name.
            return int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle))

    def slowdown_ns(self, gpu: int) -> dict[int, int]:
        values = pynvml.nvmlDeviceGetFieldValues(self._handle(gpu), list(SLOWDOWN_COUNTERS.values()))
        counted = {
            bit: int(value.value.ullVal)
            for bit, value in zip(SLOWDOWN_COUNTERS, values, strict=True)
            if value.nvmlReturn == pynvml.NVML_SUCCESS
        }
        if not counted:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return counted

    def persistence_mode(self, gpu: int) -> bool:
        return pynvml.nvmlDeviceGetPersistenceMode(self._handle(gpu)) == pynvml.NVML_FEATURE_ENABLED

    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        current, pending = pynvml.nvmlDeviceGetMigMode(self._handle(gpu))
        return bool(current), bool(pending)

    def start_xid_watch(self) -> list[int]:
        self._event_set = pynvml.nvmlEventSetCreate()
        unwatched = []
        for gpu in range(self.device_count()):
            try:
                pynvml.nvmlDeviceRegisterEvents(
                    self._handle(gpu), pynvml.nvmlEventTypeXidCriticalError, self._event_set
                )
            except pynvml.NVMLError_NotSupported:
                unwatched.append(gpu)
        return unwatched

    def wait_xid(self, timeout_s: float) -> XidEvent | None:
        if self._event_set is None:
            raise RuntimeError("start_xid_watch() must be called before wait_xid()")
        try:
            data = pynvml.nvmlEventSetWait(self._event_set, max(0, int(timeout_s * 1000)))
        except pynvml.NVMLError_Timeout:
            return None
        return XidEvent(gpu=self._event_gpu(data.device), xid=int(data.eventData))

    def _event_gpu(self, device: Any) -> int:
        """The index of the GPU an event came from; -1 when it cannot be told.

        The GPU behind an XID 79 has fallen off the bus and may answer ``nvmlDeviceGetIndex`` with
        GPU_IS_LOST: the event must not be dropped for that, so the handle is matched against the handles
        this backend registered for events (same device, same address).
        """
        try:
            return int(pynvml.nvmlDeviceGetIndex(device))
        except pynvml.NVMLError:
            address = ctypes.cast(device, ctypes.c_void_p).value
            for gpu, handle in self._handles.items():
                if ctypes.cast(handle, ctypes.c_void_p).value == address:
                    return gpu
            return -1  # reported as an XID of a GPU that is no longer enumerated
