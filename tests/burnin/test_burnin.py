"""The burn-in agent against the simulated backend (every fault kind), the real NVML backend on this
GPU-less machine, the CLI, and the report of a real H100 once one is committed."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from provisioner.burnin import (
    DEFAULT_THRESHOLDS,
    FAULT_KINDS,
    NvmlBackend,
    SimulatedBackend,
    parse_expectations,
    parse_faults,
    resolve_thresholds,
    run_burnin,
)
from provisioner.errors import InvalidRequest, NvmlUnavailable

REPO = Path(__file__).resolve().parents[2]
# The lead commits this report from a real H100 (scripts/gpu_burnin_device.sh); the variable points the
# test at another copy before it is committed.
REAL_REPORT = Path(
    os.environ.get("NEOCLOUD_BURNIN_REAL_REPORT", REPO / "tests" / "data" / "burnin_real_h100.json")
)
# The same H100 burned in against an 8x H200 server type's expectations (EXPECT in the script): the real
# NVML data must fail exactly the checks that the expectations get wrong.
REAL_WRONG_REPORT = REPO / "tests" / "data" / "burnin_real_h100_wrong_expectations.json"

H100_8X = {
    "gpu_count": 8,
    "gpu_model": "NVIDIA H100 80GB HBM3",
    "gpu_memory_gib": 80,
    "pcie_gen": 5,
    "pcie_width": 16,
    "nvlink_links": 18,
    "persistence_mode": True,
    "mig_mode": False,
}
V100_8X = {
    **H100_8X,
    "gpu_model": "Tesla V100-SXM2-32GB",
    "gpu_memory_gib": 32,
    "pcie_gen": 3,
    "nvlink_links": 6,
}
H100_1X_VM = {
    "gpu_count": 1,
    "gpu_model": "NVIDIA H100 80GB HBM3",
    "gpu_memory_gib": 80,
    "pcie_gen": 5,
    "pcie_width": 16,
    "nvlink_links": None,
    "persistence_mode": None,
    "mig_mode": False,
}

# Every fault kind, and the one check (name, gpu) it must fail. GPU 3 carries the fault.
FAULT_CASES: list[tuple[str, str, tuple[str, int | None], str, dict[str, Any]]] = [
    ("ecc_uncorrectable", "ecc_uncorrectable", ("memory.ecc_errors", 3), "h100-sxm-8x", H100_8X),
    ("sram_uncorrectable", "sram_uncorrectable", ("memory.ecc_errors", 3), "h100-sxm-8x", H100_8X),
    ("sram_correctable", "sram_correctable", ("memory.ecc_errors", 3), "h100-sxm-8x", H100_8X),
    ("dram_correctable", "dram_correctable", ("memory.ecc_errors", 3), "h100-sxm-8x", H100_8X),
    ("row_remap_pending", "row_remap_pending", ("memory.remapping", 3), "h100-sxm-8x", H100_8X),
    ("row_remap_failure", "row_remap_failure", ("memory.remapping", 3), "h100-sxm-8x", H100_8X),
    ("retired_pages_pending", "retired_pages_pending", ("memory.remapping", 3), "v100-sxm-8x", V100_8X),
    ("recovery_action", "recovery_action", ("memory.recovery_action", 3), "h100-sxm-8x", H100_8X),
    ("ecc_off", "ecc_off", ("memory.ecc_mode", 3), "h100-sxm-8x", H100_8X),
    ("nvlink_down", "nvlink_down:5", ("nvlink.links", 3), "h100-sxm-8x", H100_8X),
    ("nvlink_errors", "nvlink_errors", ("nvlink.errors", 3), "h100-sxm-8x", H100_8X),
    ("pcie_width", "pcie_width:8", ("pcie.link", 3), "h100-sxm-8x", H100_8X),
    ("pcie_gen", "pcie_gen:4", ("pcie.link", 3), "h100-sxm-8x", H100_8X),
    ("pcie_replays", "pcie_replays", ("pcie.replays", 3), "h100-sxm-8x", H100_8X),
    ("xid", "xid:79", ("xid.events", 3), "h100-sxm-8x", H100_8X),
    ("thermal_throttle", "thermal_throttle", ("clocks.event_reasons", 3), "h100-sxm-8x", H100_8X),
    ("power_brake", "power_brake", ("clocks.event_reasons", 3), "h100-sxm-8x", H100_8X),
    ("brief_power_brake", "brief_power_brake", ("clocks.event_reasons", 3), "h100-sxm-8x", H100_8X),
    ("overheat", "overheat", ("thermal.margin", 3), "h100-sxm-8x", H100_8X),
    ("power_over_limit", "power_over_limit", ("power.draw", 3), "h100-sxm-8x", H100_8X),
    ("gpu_missing", "gpu_missing", ("inventory.gpu_count", None), "h100-sxm-8x", H100_8X),
    ("wrong_model", "wrong_model", ("inventory.model", 3), "h100-sxm-8x", H100_8X),
    ("memory_small", "memory_small", ("inventory.memory", 3), "h100-sxm-8x", H100_8X),
    ("persistence_off", "persistence_off", ("modes.persistence", 3), "h100-sxm-8x", H100_8X),
    ("mig_on", "mig_on", ("modes.mig", 3), "h100-sxm-8x", H100_8X),
]


def simulated_run(
    faults: Any = None,
    expectations: Any = None,
    thresholds: Any = None,
    profile: str = "h100-sxm-8x",
    load: str = "auto",
) -> dict[str, Any]:
    backend = SimulatedBackend(profile, faults, thermal_time_constant_s=0.05)
    return run_burnin(
        backend,
        H100_8X if expectations is None else expectations,
        thresholds,
        load_seconds=0.3,
        xid_wait_seconds=0.05,
        sample_interval_s=0.05,
        load_preference=load,
    )


def failed(report: dict[str, Any]) -> set[tuple[str, int | None]]:
    return {(c["name"], c["gpu"]) for c in report["checks"] if not c["passed"]}


def check(report: dict[str, Any], name: str, gpu: int | None) -> dict[str, Any]:
    (found,) = [c for c in report["checks"] if c["name"] == name and c["gpu"] == gpu]
    return found


def test_fault_cases_cover_every_fault_kind() -> None:
    assert {kind for kind, *_ in FAULT_CASES} == set(FAULT_KINDS)


def test_clean_simulated_h100_8x_passes_every_check_under_load() -> None:
    report = simulated_run()
    assert report["passed"] is True, report["summary"]
    assert failed(report) == set()
    assert report["load"]["kind"] == "simulated" and report["load"]["ran"] is True
    names = {c["name"] for c in report["checks"]}
    assert names >= {
        "inventory.driver",
        "inventory.gpu_count",
        "inventory.model",
        "inventory.memory",
        "inventory.identity",
        "memory.ecc_mode",
        "memory.ecc_errors",
        "memory.remapping",
        "memory.recovery_action",
        "pcie.link",
        "pcie.replays",
        "nvlink.links",
        "nvlink.errors",
        "xid.events",
        "thermal.margin",
        "power.draw",
        "clocks.event_reasons",
        "modes.persistence",
        "modes.mig",
        "load.ran",
    }
    assert {c["gpu"] for c in report["checks"]} == {None, *range(8)}
    # Under load the power rises towards the limit and the SW power cap (normal) shows up.
    power = check(report, "power.draw", 0)["value"]
    assert 500 < power["max_w"] <= power["limit_w"]
    assert "sw_power_cap" in check(report, "clocks.event_reasons", 0)["value"]["seen"]
    assert report["summary"].startswith("PASSED")


@pytest.mark.parametrize(
    ("kind", "fault", "failing", "profile", "expectations"), FAULT_CASES, ids=[c[0] for c in FAULT_CASES]
)
def test_single_fault_fails_exactly_its_check(
    kind: str, fault: str, failing: tuple[str, int | None], profile: str, expectations: dict[str, Any]
) -> None:
    assert simulated_run(profile=profile, expectations=expectations)["passed"] is True
    report = simulated_run({"3": [fault]}, expectations, profile=profile)
    assert report["passed"] is False
    assert failed(report) == {failing}, report["summary"]
    name, gpu = failing
    message = check(report, name, gpu)["message"]
    assert message.startswith("GPU 3: " if gpu is not None else "Host: ")
    assert report["summary"].startswith("FAILED: 1 of ")
    assert message in report["summary"]


def test_failure_messages_are_sentences_an_operator_understands() -> None:
    assert check(simulated_run({"3": ["pcie_width:8"]}), "pcie.link", 3)["message"] == (
        "GPU 3: PCIe link x8, expected x16 (under load)."
    )
    assert check(simulated_run({"1": ["xid:79"]}), "xid.events", 1)["message"] == (
        "GPU 1: XID 79 (GPU has fallen off the bus) during burn-in; drain the server."
    )
    assert check(simulated_run({"0": ["gpu_missing"]}), "inventory.gpu_count", None)["message"] == (
        "Host: 7 GPU(s) visible, expected 8."
    )
    assert check(simulated_run({"2": ["nvlink_down:7"]}), "nvlink.links", 2)["message"] == (
        "GPU 2: NVLink 7 down (17 active, expected 18)."
    )


def test_every_check_reports_value_and_threshold() -> None:
    report = simulated_run({"3": ["xid:79"], "5": ["ecc_uncorrectable"]})
    for key in ("version", "host", "started_at", "finished_at", "backend", "load", "expectations", "passed"):
        assert key in report
    for entry in report["checks"]:
        assert set(entry) >= {"name", "gpu", "passed", "value", "threshold", "message"}
        assert entry["message"]
    assert check(report, "memory.ecc_errors", 5)["value"]["volatile"] == 1
    assert check(report, "memory.ecc_errors", 5)["threshold"]["volatile"] == 0
    assert check(report, "xid.events", 3)["value"] == [79]
    assert 79 in check(report, "xid.events", 3)["threshold"]
    assert check(report, "thermal.margin", 0)["value"]["slowdown_c"] == 89
    json.dumps(report)  # the whole report is JSON


def test_pcie_is_judged_under_load_because_links_train_down_at_idle() -> None:
    idle = simulated_run(load="none")
    assert failed(idle) == {("pcie.link", gpu) for gpu in range(8)}
    assert (
        check(idle, "pcie.link", 0)["message"]
        == "GPU 0: PCIe link Gen1, expected Gen5 (at idle (no load ran))."
    )
    assert check(idle, "load.ran", None)["status"] == "not_checked"


def test_threshold_overrides_change_outcomes() -> None:
    assert simulated_run(thresholds={"min_thermal_margin_c": 60})["passed"] is False
    assert failed(simulated_run(thresholds={"min_thermal_margin_c": 60})) == {
        ("thermal.margin", gpu) for gpu in range(8)
    }
    assert simulated_run({"3": ["xid:79"]}, thresholds={"drain_xids": [48]})["passed"] is True
    assert simulated_run({"3": ["ecc_uncorrectable"]}, thresholds={"max_volatile_uncorrectable_ecc": 1})[
        "passed"
    ]
    assert simulated_run({"3": ["pcie_replays"]}, thresholds={"max_pcie_replays": None})["passed"] is True
    # Require a load: the idle run now also fails on load.ran.
    assert ("load.ran", None) in failed(simulated_run(thresholds={"require_load": True}, load="none"))
    report = simulated_run(thresholds='{"max_power_fraction_of_limit": 0.5}')
    assert failed(report) == {("power.draw", gpu) for gpu in range(8)}
    assert check(report, "power.draw", 0)["threshold"]["max_fraction_of_limit"] == 0.5


def test_application_xids_alone_do_not_fail() -> None:
    report = simulated_run({"4": ["xid:13"], "5": ["xid:43"]})
    assert report["passed"] is True
    assert check(report, "xid.events", 4)["value"] == [13]
    assert "application XIDs" in check(report, "xid.events", 4)["message"]


def test_null_expectation_means_not_checked_and_says_so() -> None:
    report = simulated_run(expectations=H100_1X_VM, profile="h100-pcie-1x")
    # The simulated 1x profile is an "H100 PCIe"; only the model differs from the VM expectation.
    assert failed(report) == {("inventory.model", 0)}
    links = check(report, "nvlink.links", 0)
    assert links["status"] == "not_checked" and links["passed"] is True
    assert "not checked" in links["message"]
    assert set(report["not_checked"]) == {"nvlink_links", "persistence_mode"}


def test_pcie_card_without_nvlink_passes_with_zero_links_expected() -> None:
    expect = {**H100_1X_VM, "gpu_model": "NVIDIA H100 PCIe", "nvlink_links": 0}
    report = simulated_run(expectations=expect, profile="h100-pcie-1x")
    assert report["passed"] is True, report["summary"]
    assert check(report, "nvlink.links", 0)["value"] == {"active": 0, "down_links": []}


def test_invalid_inputs_are_rejected_with_a_clear_error() -> None:
    with pytest.raises(InvalidRequest, match="Unknown threshold 'max_temp'"):
        resolve_thresholds({"max_temp": 80})
    with pytest.raises(InvalidRequest, match="Unknown expectation 'gpus'"):
        parse_expectations({"gpus": 8})
    with pytest.raises(InvalidRequest, match="wrong type"):
        parse_expectations({"gpu_count": "8"})
    with pytest.raises(InvalidRequest, match="Unknown fault 'melted'"):
        parse_faults({"1": ["melted"]})
    with pytest.raises(InvalidRequest, match="needs a number"):
        parse_faults('{"1": "xid"}')
    with pytest.raises(InvalidRequest, match="profile has 8 GPUs"):
        SimulatedBackend("h100-sxm-8x", {"9": ["ecc_off"]})
    assert parse_faults({"1": ["ecc_uncorrectable"], "3": "xid:79"}) == {
        1: [("ecc_uncorrectable", None)],
        3: [("xid", 79)],
    }


def test_every_default_threshold_cites_a_source() -> None:
    source = (REPO / "provisioner" / "burnin" / "thresholds.py").read_text()
    block = source[source.index("DEFAULT_THRESHOLDS: dict") :]
    for key in DEFAULT_THRESHOLDS:
        before = block[: block.index(f'"{key}"')].rstrip().splitlines()
        comment_lines = [line for line in before[-4:] if line.strip().startswith("#")]
        assert comment_lines, f"threshold {key} has no source comment"


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this host has an NVML library")
def test_real_backend_without_a_gpu_raises_nvml_unavailable() -> None:
    with pytest.raises(NvmlUnavailable, match=r"^NVML not available: NVML Shared Library Not Found"):
        NvmlBackend().open()


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provisioner.burnin", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this host has an NVML library")
def test_cli_exits_2_with_an_error_report_without_nvml() -> None:
    result = run_cli("--backend", "nvml", "--expect", json.dumps(H100_8X), "--load-seconds", "1")
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is False
    assert report["error"]["code"] == "nvml_unavailable"
    assert report["error"]["message"].startswith("NVML not available")
    assert report["checks"] == []


def test_cli_simulated_clean_exits_0_and_faults_from_env_exit_1() -> None:
    common = ["--backend", "simulated", "--expect", json.dumps(H100_8X), "--load-seconds", "0.3"]
    common += ["--xid-wait-seconds", "0.05", "--sample-interval", "0.05"]
    clean = run_cli(*common)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["passed"] is True
    faulty = run_cli(*common, env={"NEOCLOUD_BURNIN_FAULTS": '{"6": ["pcie_width:8"]}'})
    assert faulty.returncode == 1
    report = json.loads(faulty.stdout)
    assert failed(report) == {("pcie.link", 6)}
    flag = run_cli(*common, "--faults", '{"2": ["mig_on"]}')
    assert flag.returncode == 1
    assert failed(json.loads(flag.stdout)) == {("modes.mig", 2)}
    bad = run_cli(*common, "--faults", '{"2": ["nonsense"]}')
    assert bad.returncode == 2
    assert json.loads(bad.stdout)["error"]["code"] == "invalid_request"


def test_burnin_package_imports_without_django() -> None:
    code = (
        "import sys, provisioner.burnin, provisioner.burnin.__main__, provisioner.burnin.load;"
        "sys.exit(any(m == 'django' or m.startswith('django.') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60).returncode == 0


def test_real_gpu_report_passes_h100() -> None:
    if not REAL_REPORT.exists():
        pytest.skip("no real GPU report committed yet")
    report = json.loads(REAL_REPORT.read_text())
    assert report["backend"] == "nvml"
    assert report["passed"] is True, report["summary"]
    assert report["expectations"]["gpu_model"] == "NVIDIA H100 80GB HBM3"
    assert report["load"]["kind"] == "torch-matmul" and report["load"]["ran"] is True
    names = {c["name"] for c in report["checks"]}
    assert {"inventory.model", "memory.ecc_errors", "pcie.link", "thermal.margin", "power.draw"} <= names
    assert all(c["passed"] for c in report["checks"])
    assert check(report, "inventory.model", 0)["value"] == "NVIDIA H100 80GB HBM3"
    power = check(report, "power.draw", 0)["value"]
    assert power["max_w"] > 300  # the matmul load really loaded the GPU


def test_real_gpu_report_fails_wrong_expectations() -> None:
    report = json.loads(REAL_WRONG_REPORT.read_text())
    assert report["backend"] == "nvml" and report["load"]["ran"] is True
    assert report["passed"] is False
    failed = {(c["name"], c["gpu"]) for c in report["checks"] if c["status"] == "failed"}
    assert failed == {
        ("inventory.gpu_count", None),
        ("inventory.model", 0),
        ("inventory.memory", 0),
        ("nvlink.links", 0),
    }
    assert check(report, "inventory.gpu_count", None)["value"] == 1
    assert report["summary"].startswith("FAILED: 4 of ")
    assert "expected NVIDIA H200" in report["summary"]


def test_nvlink_errors_fail_even_when_the_server_type_leaves_the_link_count_unchecked() -> None:
    # A null nvlink_links only says "do not check how many links are up"; errors counted on the links
    # that exist are still a hardware fault (NVIDIA XID 74 territory).
    expect = {**H100_8X, "nvlink_links": None}
    report = simulated_run({"3": ["nvlink_errors"]}, expect)
    assert failed(report) == {("nvlink.errors", 3)}
    assert check(report, "nvlink.errors", 3)["message"] == (
        "GPU 3: 200 NVLink errors during the run on link(s) 2, limit 0."
    )
    assert check(report, "nvlink.errors", 0)["status"] == "passed"


def test_a_link_that_is_down_fails_even_when_the_server_type_leaves_the_link_count_unchecked() -> None:
    report = simulated_run({"0": ["nvlink_down:3"]}, {**H100_8X, "nvlink_links": None})
    assert failed(report) == {("nvlink.links", 0)}
    assert check(report, "nvlink.links", 0)["message"] == "GPU 0: NVLink 3 down (17 active)."
    assert check(report, "nvlink.links", 1)["status"] == "not_checked"
    with_count = simulated_run({"0": ["nvlink_down:3"]})
    assert check(with_count, "nvlink.links", 0)["message"] == "GPU 0: NVLink 3 down (17 active, expected 18)."


def test_correctable_ecc_counts_over_azures_limits_fail_and_say_which() -> None:
    report = simulated_run({"3": ["sram_correctable"], "5": ["dram_correctable"]})
    assert failed(report) == {("memory.ecc_errors", 3), ("memory.ecc_errors", 5)}
    assert check(report, "memory.ecc_errors", 3)["message"] == (
        "GPU 3: 10001 lifetime correctable SRAM ECC errors (limit 10000)."
    )
    assert check(report, "memory.ecc_errors", 5)["message"] == (
        "GPU 5: 20000001 lifetime correctable DRAM ECC errors (limit 20000000)."
    )
    healthy = check(report, "memory.ecc_errors", 0)
    assert healthy["value"]["sram_correctable_aggregate"] == 3 and healthy["passed"] is True
    relaxed = simulated_run(
        {"3": ["sram_correctable"]}, thresholds={"max_aggregate_sram_correctable_ecc": None}
    )
    assert relaxed["passed"] is True


def test_pcie_generation_and_width_are_judged_from_one_sample_not_combined() -> None:
    from provisioner.burnin.backend import PcieLink
    from provisioner.burnin.checks import CheckSuite, LoadSummary, RunObservation, Sample

    def link(gen: int, width: int) -> PcieLink:
        return PcieLink(gen=gen, width=width, max_gen=5, max_width=16)

    def judged(*links: PcieLink) -> dict[str, Any]:
        observation = RunObservation(
            load=LoadSummary(kind="simulated", ran=True),
            samples={0: [Sample(at_s=i, pcie=one) for i, one in enumerate(links)]},
            xids=[],
            unwatched_gpus=[],
            pcie_replays_before={},
            nvlink_errors_before={},
        )
        backend = SimulatedBackend("h100-sxm-8x")
        suite = CheckSuite(backend, parse_expectations(H100_8X), resolve_thresholds(None), observation)
        (result,) = suite.check_pcie_link(0)
        return result.to_dict()

    mixed = judged(link(5, 8), link(1, 16))  # two bad links, never a good Gen5 x16
    assert mixed["passed"] is False
    assert mixed["value"]["gen"] == 5 and mixed["value"]["width"] == 8
    trained_up = judged(link(1, 16), link(5, 16), link(2, 16))
    assert trained_up["passed"] is True and trained_up["value"]["gen"] == 5


@pytest.mark.parametrize(
    ("profile", "fault"),
    [
        ("h100-sxm-8x", "retired_pages_pending"),  # H100 remaps rows, it retires no pages
        ("v100-sxm-8x", "row_remap_pending"),  # V100 retires pages, it has no row remapper
        ("v100-sxm-8x", "row_remap_failure"),
        ("h100-pcie-1x", "nvlink_down"),  # a PCIe card has no NVLink
        ("h100-pcie-1x", "nvlink_errors"),
        ("h100-sxm-8x", "nvlink_down:18"),  # links 0..17
        ("h100-sxm-8x", "pcie_gen:5"),  # the link's own generation is no fault
        ("h100-sxm-8x", "pcie_width:16"),
        ("h100-sxm-8x", "recovery_action:0"),  # 0 is "no recovery needed"
    ],
)
def test_a_fault_the_profile_cannot_show_is_rejected_not_silently_ignored(profile: str, fault: str) -> None:
    # Otherwise a lab test that injects it sees a clean pass and believes the check works.
    gpu = "0"
    with pytest.raises(InvalidRequest, match=f"Fault {fault.split(':')[0]!r} .*{profile}"):
        SimulatedBackend(profile, {gpu: [fault]})


def test_summary_names_the_failed_gpus_board_by_serial_and_pci_address() -> None:
    # With physical GPU 0 off the bus NVML renumbers the rest: "GPU 3" is the fifth board (serial ...004).
    report = simulated_run({"0": ["gpu_missing"], "4": ["ecc_uncorrectable"]})
    assert failed(report) == {("inventory.gpu_count", None), ("memory.ecc_errors", 3)}
    assert check(report, "inventory.identity", 3)["value"]["pci_bus_id"] == "00000000:9A:00.0"
    assert report["summary"].endswith(
        "GPU 3: 1 volatile uncorrectable ECC errors (limit 0). GPU 3 is serial 1653223000004 at PCI "
        "00000000:9A:00.0."
    )
