"""The real NVML backend (provisioner.burnin.nvml) against a fake NVML library: no GPU exists here, so the
pynvml functions the backend calls are replaced by ones that answer like a healthy 2-GPU H100 host, with
real pynvml error objects and real ctypes device handles."""

from __future__ import annotations

import ctypes
import types
from typing import Any

import pynvml
import pytest

from provisioner.burnin import NvmlBackend, run_burnin

EXPECT = {"gpu_count": 2, "gpu_model": "NVIDIA H100 80GB HBM3", "gpu_memory_gib": 80, "pcie_gen": 5}


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeNvml:
    """Just enough of NVML for NvmlBackend, per GPU index; attributes tweak it per test."""

    def __init__(self, gpus: int = 2) -> None:
        self._structs = [pynvml.struct_c_nvmlDevice_t() for _ in range(gpus)]
        self.events: list[tuple[int, int]] = []  # (gpu, xid) delivered by nvmlEventSetWait
        self.event_set_create_error: int | None = None
        self.nvlinks = 0  # NVLinks per GPU: 0 answers NotSupported, past the last InvalidArgument
        self.field_return = pynvml.NVML_SUCCESS  # the recovery-action field's own return code
        self.brake_ns_per_read = 0  # HW power brake time the driver adds between two reads
        self._brake_reads = 0
        self.lost: set[int] = set()  # GPUs that fell off the bus: their calls raise GPU_IS_LOST

    def handle(self, gpu: int) -> Any:
        return ctypes.pointer(self._structs[gpu])

    def _gpu(self, handle: Any) -> int:
        address = ctypes.addressof(handle.contents)
        gpu = next(i for i, s in enumerate(self._structs) if ctypes.addressof(s) == address)
        if gpu in self.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def functions(self) -> dict[str, Any]:
        per_gpu = {
            "nvmlDeviceGetName": "NVIDIA H100 80GB HBM3",
            "nvmlDeviceGetSerial": "1651124070172",
            "nvmlDeviceGetMemoryInfo": types.SimpleNamespace(total=81559 * 2**20),
            "nvmlDeviceGetEccMode": [1, 1],
            "nvmlDeviceGetMemoryErrorCounter": 0,
            "nvmlDeviceGetRemappedRows": (0, 0, 0, 0),
            "nvmlDeviceGetCurrPcieLinkGeneration": 5,
            "nvmlDeviceGetCurrPcieLinkWidth": 16,
            "nvmlDeviceGetMaxPcieLinkGeneration": 5,
            "nvmlDeviceGetMaxPcieLinkWidth": 16,
            "nvmlDeviceGetPcieReplayCounter": 0,
            "nvmlDeviceGetTemperature": 60,
            "nvmlDeviceGetTemperatureThreshold": 89,
            "nvmlDeviceGetPowerUsage": 650_000,
            "nvmlDeviceGetEnforcedPowerLimit": 700_000,
            "nvmlDeviceGetCurrentClocksEventReasons": pynvml.nvmlClocksEventReasonSwPowerCap,
            "nvmlDeviceGetPersistenceMode": pynvml.NVML_FEATURE_ENABLED,
            "nvmlDeviceGetMigMode": [0, 0],
        }

        def reading(value: Any) -> Any:
            def read(handle: Any, *args: Any) -> Any:
                gpu = self._gpu(handle)
                return value(gpu) if callable(value) else value

            return read

        def not_supported(handle: Any, *args: Any) -> Any:
            self._gpu(handle)
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)

        def field_values(handle: Any, field_ids: list[int]) -> Any:
            self._gpu(handle)
            values = []
            for field_id in field_ids:
                returned, number = pynvml.NVML_SUCCESS, 0
                if field_id == pynvml.NVML_FI_DEV_GET_GPU_RECOVERY_ACTION:
                    returned = self.field_return
                elif field_id == pynvml.NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN:
                    number = self._brake_reads * self.brake_ns_per_read
                    self._brake_reads += 1
                values.append(
                    types.SimpleNamespace(
                        nvmlReturn=returned, value=types.SimpleNamespace(uiVal=number, ullVal=number)
                    )
                )
            return values

        def nvlink(answer: Any) -> Any:
            def read(handle: Any, link: int, *args: Any) -> Any:
                self._gpu(handle)
                if self.nvlinks == 0:
                    raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
                if link >= self.nvlinks:
                    raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
                return answer

            return read

        def event_set_create() -> Any:
            if self.event_set_create_error is not None:
                raise _error(self.event_set_create_error)
            return object()

        def event_set_wait(event_set: Any, timeout_ms: int) -> Any:
            if not self.events:
                raise _error(pynvml.NVML_ERROR_TIMEOUT)
            gpu, xid = self.events.pop(0)
            if xid == 79:
                self.lost.add(gpu)  # from now on the GPU answers nothing
            return types.SimpleNamespace(device=self.handle(gpu), eventData=xid)

        def get_index(handle: Any) -> int:
            return self._gpu(handle)

        functions: dict[str, Any] = {name: reading(value) for name, value in per_gpu.items()}
        functions.update(
            {
                "nvmlInit": lambda: None,
                "nvmlShutdown": lambda: None,
                "nvmlSystemGetDriverVersion": lambda: "580.159.04",
                "nvmlSystemGetCudaDriverVersion": lambda: 13000,
                "nvmlDeviceGetCount": lambda: len(self._structs),
                "nvmlDeviceGetHandleByIndex": self.handle,
                "nvmlDeviceGetUUID": reading(lambda gpu: f"GPU-0000000{gpu}-f5ae-d0cc-9838-df056ec6a35f"),
                "nvmlDeviceGetPciInfo": reading(
                    lambda gpu: types.SimpleNamespace(busId=f"00000000:{0x18 + gpu:02X}:00.0")
                ),
                "nvmlDeviceGetTotalEccErrors": reading(0),
                "nvmlDeviceGetRetiredPages": not_supported,
                "nvmlDeviceGetRetiredPagesPendingStatus": not_supported,
                "nvmlDeviceGetNvLinkState": nvlink(pynvml.NVML_FEATURE_ENABLED),
                "nvmlDeviceGetNvLinkErrorCounter": nvlink(0),
                "nvmlDeviceGetFieldValues": field_values,
                "nvmlEventSetCreate": event_set_create,
                "nvmlDeviceRegisterEvents": reading(None),
                "nvmlEventSetWait": event_set_wait,
                "nvmlEventSetFree": lambda event_set: None,
                "nvmlDeviceGetIndex": get_index,
            }
        )
        return functions


@pytest.fixture
def nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    for name, function in fake.functions().items():
        monkeypatch.setattr(pynvml, name, function)
    return fake


def nvml_run(**kwargs: Any) -> dict[str, Any]:
    return run_burnin(
        NvmlBackend(),
        EXPECT,
        load_seconds=0.1,
        xid_wait_seconds=0.05,
        sample_interval_s=0.05,
        load_preference="none",
        **kwargs,
    )


def by_name(report: dict[str, Any], name: str, gpu: int | None) -> dict[str, Any]:
    (found,) = [c for c in report["checks"] if c["name"] == name and c["gpu"] == gpu]
    return found


def test_fake_nvml_host_passes_every_check_but_the_idle_load(nvml: FakeNvml) -> None:
    report = nvml_run()
    assert [c["message"] for c in report["checks"] if not c["passed"]] == []
    assert by_name(report, "inventory.driver", None)["value"]["cuda_driver_version"] == "13.0"
    assert by_name(report, "power.draw", 1)["value"] == {"max_w": 650.0, "mean_w": 650.0, "limit_w": 700.0}


def test_a_failed_xid_watch_reports_instead_of_crashing_the_agent(nvml: FakeNvml) -> None:
    # nvmlEventSetCreate can fail (some VM passthrough setups, a driver in trouble); the XID wait that
    # follows must not turn into a traceback without a report.
    nvml.event_set_create_error = pynvml.NVML_ERROR_NOT_SUPPORTED
    report = nvml_run()
    assert report["passed"] is True, report["summary"]
    for gpu in (0, 1):
        xid = by_name(report, "xid.events", gpu)
        assert xid["status"] == "not_supported"
        assert xid["message"] == f"GPU {gpu}: XID events could not be watched."


def test_an_xid_watch_that_fails_for_another_reason_fails_the_burn_in(nvml: FakeNvml) -> None:
    # Not supported is the platform (some VMs); a permission error means this run saw no XIDs at all.
    nvml.event_set_create_error = pynvml.NVML_ERROR_NO_PERMISSION
    report = nvml_run()
    assert report["passed"] is False
    xid = by_name(report, "xid.events", 0)
    assert xid["status"] == "failed"
    assert xid["message"] == (
        "GPU 0: XID events could not be watched (Insufficient Permissions): a burn-in that cannot see XID "
        "errors cannot pass."
    )


def test_a_slowdown_between_two_samples_fails_by_the_drivers_cumulative_time(nvml: FakeNvml) -> None:
    # The clock event bit mask, read once a second, never shows the power brake; the driver's cumulative
    # slowdown time (field 271) grew by 40 ms between the reads before and after the run.
    nvml.brake_ns_per_read = 20_000_000
    report = nvml_run()
    clocks = by_name(report, "clocks.event_reasons", 0)
    assert clocks["status"] == "failed"
    assert clocks["value"]["seen"] == ["sw_power_cap"]
    assert clocks["value"]["slowdown_ms_during_run"] == {"hw_power_brake_slowdown": 40.0}
    assert "hw_power_brake_slowdown 40 ms during the run" in clocks["message"]


def test_an_sxm_gpu_answers_invalid_argument_past_its_last_nvlink(nvml: FakeNvml) -> None:
    # An 18-link H100 SXM asked for link 18..35 answers InvalidArgument: no such link, not a fault.
    nvml.nvlinks = 18
    report = run_burnin(
        NvmlBackend(),
        {**EXPECT, "nvlink_links": 18},
        load_seconds=0.1,
        xid_wait_seconds=0.05,
        sample_interval_s=0.05,
        load_preference="none",
    )
    for gpu in (0, 1):
        links = by_name(report, "nvlink.links", gpu)
        assert links["status"] == "passed", links["message"]
        assert links["value"] == {"active": 18, "down_links": []}
        errors = by_name(report, "nvlink.errors", gpu)
        assert errors["status"] == "passed", errors["message"]


def test_a_driver_without_the_recovery_action_field_is_not_supported_not_failed(nvml: FakeNvml) -> None:
    nvml.field_return = pynvml.NVML_ERROR_INVALID_ARGUMENT  # a driver older than the field (565)
    report = nvml_run()
    action = by_name(report, "memory.recovery_action", 0)
    assert action["status"] == "not_supported" and action["passed"] is True


def test_xid_79_from_a_gpu_that_fell_off_the_bus_is_reported_not_dropped(nvml: FakeNvml) -> None:
    # The GPU that raised XID 79 answers every NVML call with GPU_IS_LOST, nvmlDeviceGetIndex included:
    # the event must still reach the report, on the GPU whose handle it came with.
    nvml.events.append((1, 79))
    report = nvml_run()
    assert report["xids"] == [{"gpu": 1, "xid": 79}]
    xid = by_name(report, "xid.events", 1)
    assert xid["status"] == "failed"
    assert xid["message"] == "GPU 1: XID 79 (GPU has fallen off the bus) during burn-in; drain the server."
    assert by_name(report, "xid.events", 0)["status"] == "passed"
    # The lost GPU's other readings fail with the NVML error in words; the agent does not crash.
    assert by_name(report, "memory.ecc_mode", 1)["message"] == (
        "GPU 1: memory.ecc_mode could not be read: GPU is lost."
    )


def test_identity_carries_the_pci_bus_id_nvml_reports(nvml: FakeNvml) -> None:
    identity = by_name(nvml_run(), "inventory.identity", 1)
    assert identity["value"]["pci_bus_id"] == "00000000:19:00.0"
    assert identity["message"].endswith("serial 1651124070172, PCI 00000000:19:00.0.")
