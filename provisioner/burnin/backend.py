"""The readings the burn-in needs from a GPU host, as one small interface.

Two implementations exist: :mod:`provisioner.burnin.nvml` (the real NVIDIA Management Library through
nvidia-ml-py) and :mod:`provisioner.burnin.simulated` (a server type with injectable faults). Every
reading may raise a ``pynvml.NVMLError`` subclass; ``NVMLError_NotSupported`` means "this GPU has no
such feature" (NVLink on a PCIe card, row remapping before Ampere) and each check decides what that
means. Readings never change GPU settings.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType

import pynvml

# NVML_NVLINK_ERROR_DL_* counter ids (pynvml constants 0..4), named for the report.
NVLINK_ERROR_COUNTERS: dict[str, int] = {
    "replay": 0,
    "recovery": 1,
    "crc_flit": 2,
    "crc_data": 3,
    "ecc_data": 4,
}

# NVML_NVLINK_MAX_LINKS in nvidia-ml-py 13.x: the link indices to probe.
NVLINK_MAX_LINKS = 36

# The cumulative slowdown-time fields of nvmlDeviceGetFieldValues, by the clock event reason bit they count
# (NVML_FI_DEV_CLOCKS_EVENT_REASON_*: SW thermal 269, HW thermal 270, HW power brake 271).
SLOWDOWN_COUNTERS: dict[int, int] = {0x20: 269, 0x40: 270, 0x80: 271}

# What the driver answers for a link (or a link counter) the GPU does not have: NotSupported on a GPU
# without NVLink, InvalidArgument for an index past the last link of one with NVLink (an 18-link H100 SXM
# asked for link 18). Either means "no such link", never a fault.
NVLINK_ABSENT: tuple[type[Exception], ...] = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument)


@dataclass(frozen=True)
class RemappedRows:
    """``nvmlDeviceGetRemappedRows``: rows remapped for correctable/uncorrectable errors, and flags."""

    corrected: int
    uncorrected: int
    pending: bool
    failure: bool


@dataclass(frozen=True)
class RetiredPages:
    """Pre-Ampere page retirement: pages retired per cause and whether a retirement awaits a reset."""

    single_bit: int
    double_bit: int
    pending: bool


@dataclass(frozen=True)
class PcieLink:
    """Current and maximum PCIe generation and width of one GPU."""

    gen: int
    width: int
    max_gen: int
    max_width: int


@dataclass(frozen=True)
class XidEvent:
    """One critical XID reported by the driver for the GPU with index ``gpu``."""

    gpu: int
    xid: int


class GpuBackend(abc.ABC):
    """Read-only access to the GPUs of one host.

    Use as a context manager: ``open()`` on enter, ``close()`` on exit. GPU indices are NVML indices.
    """

    #: Short name that appears in the report ("nvml", "simulated").
    name: str = "abstract"

    def __enter__(self) -> GpuBackend:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abc.abstractmethod
    def open(self) -> None:
        """Connect to the GPUs. Not idempotent: call once per ``close()``.

        :raises NvmlUnavailable: no driver, no library or no GPU.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection and any XID watch. Idempotent; never raises."""

    # --- host-wide ------------------------------------------------------------------------------

    @abc.abstractmethod
    def driver_version(self) -> str:
        """Kernel driver version, e.g. ``"550.90.07"``."""

    @abc.abstractmethod
    def cuda_driver_version(self) -> int:
        """CUDA version the driver supports, NVML-encoded (``12040`` is 12.4)."""

    @abc.abstractmethod
    def device_count(self) -> int:
        """Number of GPUs the driver sees."""

    # --- identity -------------------------------------------------------------------------------

    @abc.abstractmethod
    def device_name(self, gpu: int) -> str: ...

    @abc.abstractmethod
    def uuid(self, gpu: int) -> str: ...

    @abc.abstractmethod
    def serial(self, gpu: int) -> str: ...

    @abc.abstractmethod
    def pci_bus_id(self, gpu: int) -> str:
        """PCI address of the GPU, e.g. ``"00000000:18:00.0"``: the slot an operator pulls the board from."""

    @abc.abstractmethod
    def memory_total_bytes(self, gpu: int) -> int: ...

    # --- memory health --------------------------------------------------------------------------

    @abc.abstractmethod
    def ecc_mode(self, gpu: int) -> tuple[bool, bool]:
        """ECC ``(current, pending)``."""

    @abc.abstractmethod
    def uncorrectable_ecc(self, gpu: int, *, aggregate: bool) -> int:
        """Uncorrectable ECC errors since the driver loaded (volatile) or over the GPU's life (aggregate)."""

    @abc.abstractmethod
    def sram_uncorrectable_aggregate(self, gpu: int) -> int:
        """Lifetime uncorrectable ECC errors in on-chip SRAM."""

    @abc.abstractmethod
    def correctable_ecc_aggregate(self, gpu: int, location: str) -> int:
        """Lifetime correctable ECC errors in ``location`` ("sram" or "dram"); NotSupported where the GPU
        does not count them."""

    @abc.abstractmethod
    def remapped_rows(self, gpu: int) -> RemappedRows:
        """Row remapper state (Ampere and newer; NotSupported before)."""

    @abc.abstractmethod
    def retired_pages(self, gpu: int) -> RetiredPages:
        """Dynamic page retirement state (pre-Ampere; NotSupported on GPUs with row remapping)."""

    @abc.abstractmethod
    def recovery_action(self, gpu: int) -> int:
        """``NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`` (0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, ...)."""

    # --- links ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def pcie_link(self, gpu: int) -> PcieLink: ...

    @abc.abstractmethod
    def pcie_replay_counter(self, gpu: int) -> int: ...

    @abc.abstractmethod
    def nvlink_state(self, gpu: int, link: int) -> bool:
        """Whether NVLink ``link`` is active; NotSupported when the link does not exist."""

    @abc.abstractmethod
    def nvlink_error_counter(self, gpu: int, link: int, counter: int) -> int:
        """One of the ``NVLINK_ERROR_COUNTERS`` of one link."""

    # --- thermal, power, clocks -----------------------------------------------------------------

    @abc.abstractmethod
    def temperature_c(self, gpu: int) -> int: ...

    @abc.abstractmethod
    def temperature_threshold_c(self, gpu: int, kind: str) -> int:
        """``kind`` is ``"slowdown"`` or ``"shutdown"``."""

    @abc.abstractmethod
    def power_usage_mw(self, gpu: int) -> int: ...

    @abc.abstractmethod
    def power_limit_mw(self, gpu: int) -> int:
        """The enforced power limit in milliwatts."""

    @abc.abstractmethod
    def clock_event_reasons(self, gpu: int) -> int:
        """Bit mask of the current clock event (throttle) reasons."""

    @abc.abstractmethod
    def slowdown_ns(self, gpu: int) -> dict[int, int]:
        """Nanoseconds the clocks have spent slowed down since the driver loaded, per reason bit of
        ``SLOWDOWN_COUNTERS`` the driver counts: a slowdown between two samples of the bit mask still
        shows here. NotSupported where it counts none (drivers before the fields existed)."""

    # --- modes ----------------------------------------------------------------------------------

    @abc.abstractmethod
    def persistence_mode(self, gpu: int) -> bool: ...

    @abc.abstractmethod
    def mig_mode(self, gpu: int) -> tuple[bool, bool]:
        """MIG ``(current, pending)``."""

    # --- XID events -----------------------------------------------------------------------------

    @abc.abstractmethod
    def start_xid_watch(self) -> list[int]:
        """Register for critical XID events on every GPU; returns the GPUs that could not be watched."""

    @abc.abstractmethod
    def wait_xid(self, timeout_s: float) -> XidEvent | None:
        """Wait up to ``timeout_s`` for the next critical XID; ``None`` when none came."""
