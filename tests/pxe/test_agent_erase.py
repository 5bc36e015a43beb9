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


class _Api:
    """The boot service as the erase sees it, in process."""

    timeout = 1.0

    def __init__(self, accept_result: bool = True) -> None:
        self.accept_result = accept_result
        self.results: list[dict] = []

    def post_progress(self, stage: str, percent: int, message: str) -> None:
        return None

    def post_result(self, result: dict) -> None:
        from provisioner.pxe.agent import AgentError

        if not self.accept_result:
            raise AgentError("result_not_accepted", "the boot service did not accept the result: HTTP 503")
        self.results.append(result)


def test_an_erase_that_fails_part_way_still_removes_the_config_drive(tmp_path, monkeypatch):
    import errno

    from provisioner.pxe import agent

    disk = make_disk(tmp_path / "disk.img", size=12 * MIB, fill=b"\x5a")
    write_config_drive(str(disk), {"hostname": "old-tenant", "authorized_keys": ["ssh-ed25519 AAAA old"]})
    real_pwrite = agent.os.pwrite

    def bad_sector_at_4_mib(fd, data, offset):
        if offset == 4 * MIB and len(data) == agent.ERASE_CHUNK:
            raise OSError(errno.EIO, "Input/output error")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(agent.os, "pwrite", bad_sector_at_4_mib)
    api = _Api()

    assert agent.erase(api, str(disk)) == agent.EXIT_DEPLOY_FAILED  # type: ignore[arg-type]

    assert api.results[-1]["status"] == "failed" and api.results[-1]["error_code"] == "disk_write_failed"
    assert read_config_drive(str(disk)) is None


def test_an_erase_whose_result_is_not_accepted_exits_with_report_failed_not_a_traceback(tmp_path):
    from provisioner.pxe import agent

    disk = make_disk(tmp_path / "disk.img", size=4 * MIB)

    assert agent.erase(_Api(accept_result=False), str(disk)) == agent.EXIT_REPORT_FAILED  # type: ignore[arg-type]
    assert not any(disk.read_bytes())
