"""A small real lab (one IPMI and one Redfish node process) shared by the driver tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import supervisor
from lab.spec import LabNodeSpec


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[LabNodeSpec]]]:
    if shutil.which("ipmitool") is None:
        pytest.skip("ipmitool is not installed")
    lab_dir = tmp_path_factory.mktemp("lab")
    try:
        specs = supervisor.up(2, lab_dir, "http://127.0.0.1:1/boot", protocols="mixed")
        yield lab_dir, specs
    finally:
        supervisor.down(lab_dir)
