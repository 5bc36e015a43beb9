"""The deploy agent's erase mode, used by the wipe playbook: every byte of the disk is overwritten."""

from __future__ import annotations

from bootservice import Deployment
from test_agent import MIB, boot, make_disk, run_agent  # noqa: F401 - fixture

from provisioner.pxe.configdrive import read_config_drive, write_config_drive

TOKEN = "erase-token-0123456789abcdef"


def test_erase_overwrites_the_whole_disk_and_its_config_drive(boot, tmp_path):  # noqa: F811
    disk = make_disk(tmp_path / "disk.img", size=8 * MIB, fill=b"\x5a")
    write_config_drive(str(disk), {"hostname": "old-tenant", "authorized_keys": ["ssh-ed25519 AAAA old"]})
    assert read_config_drive(str(disk)) is not None
    boot.deployments[TOKEN] = Deployment(
        "node-1", "52:54:00:00:00:01", TOKEN, {"action": "erase", "node": "node-1"}
    )
    proc = run_agent(boot, TOKEN, disk)
    assert proc.returncode == 0, proc.stderr
    data = disk.read_bytes()
    assert len(data) == 8 * MIB and not any(data)
    assert read_config_drive(str(disk)) is None
    result = boot.deployments[TOKEN].result
    assert result["status"] == "ok" and result["bytes_written"] == 8 * MIB
    assert boot.deployments[TOKEN].progress[0]["stage"] == "erase"


def test_erase_of_a_missing_disk_reports_failure(boot, tmp_path):  # noqa: F811
    boot.deployments[TOKEN] = Deployment(
        "node-2", "52:54:00:00:00:02", TOKEN, {"action": "erase", "node": "node-2"}
    )
    proc = run_agent(boot, TOKEN, tmp_path / "absent.img")
    assert proc.returncode == 1
    assert boot.deployments[TOKEN].result["status"] == "failed"
    assert "disk" in boot.deployments[TOKEN].result["message"]
