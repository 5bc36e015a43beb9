"""The burn-in agent as one zip application: what the burn-in playbook copies to a server and runs."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

from provisioner.burnin.bundle import build_bundle

EXPECT = json.dumps(
    {
        "gpu_count": 8,
        "gpu_model": "NVIDIA H100 80GB HBM3",
        "gpu_memory_gib": 80,
        "pcie_gen": 5,
        "pcie_width": 16,
        "nvlink_links": 18,
    }
)


def _run(path, *extra):
    return subprocess.run(
        [
            sys.executable,
            str(path),
            "--backend",
            "simulated",
            "--expect",
            EXPECT,
            "--load-seconds",
            "0.3",
            "--xid-wait-seconds",
            "0.05",
            "--sample-interval",
            "0.1",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        check=False,
    )


def test_bundle_runs_alone_and_reports(tmp_path):
    path = tmp_path / "burnin.pyz"
    path.write_bytes(build_bundle())
    names = zipfile.ZipFile(path).namelist()
    assert "__main__.py" in names and "provisioner/burnin/checks.py" in names
    assert not any("__pycache__" in n or "django" in n for n in names)
    ok = _run(path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True
    bad = _run(path, "--faults", json.dumps({"2": ["nvlink_down:4"]}))
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert [c["name"] for c in report["checks"] if c["status"] == "failed"] == ["nvlink.links"]


def test_bundle_is_deterministic():
    assert build_bundle() == build_bundle()
