"""lab up / status / down: node processes, lab.json, disks, and nothing left behind."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from lab import supervisor


def test_up_status_down_leaves_no_process_behind(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    try:
        specs = supervisor.up(3, lab_dir, "http://127.0.0.1:1/boot")
        assert [s.bmc_protocol for s in specs] == ["ipmi", "redfish", "ipmi"]
        assert [s.bmc_address for s in specs] == ["127.0.10.1", "127.0.10.2", "127.0.10.3"]
        assert specs[0].mac == "52:54:00:00:00:01" and specs[1].ssh_address == "198.18.0.3"
        assert specs[2].netns == "nclab-3"
        assert len({s.bmc_password for s in specs}) == 3
        lab_json = lab_dir / "lab.json"
        assert stat.S_IMODE(lab_json.stat().st_mode) == 0o600
        assert len(json.loads(lab_json.read_text())["nodes"]) == 3
        disk = Path(specs[0].disk_path)
        # allocated like a real disk's blocks (fallocate), so the agent's O_DIRECT writes never allocate
        assert disk.stat().st_size == specs[0].disk_size
        assert disk.stat().st_blocks * 512 >= specs[0].disk_size

        rows = supervisor.status(lab_dir)
        assert all(r["alive"] and r["power"] == "off" for r in rows)
        pids = [r["pid"] for r in rows]
        assert all(supervisor.bmc_answers(s) for s in specs)

        # the provisioning relay carries the boot service's port and the image server's to 198.18.0.1, and
        # the nodes' firmware is told the boot service is there
        relay = json.loads((lab_dir / "relay.json").read_text())
        assert relay["address"] == "198.18.0.1" and relay["ports"] == [1, 8090]
        assert sorted(supervisor.lab_processes(lab_dir)) == sorted([*pids, relay["pid"]])
        assert json.loads(lab_json.read_text())["boot_url"] == "http://127.0.0.1:1/boot"
        node_argv = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")
        assert node_argv[node_argv.index(b"--boot-url") + 1] == b"http://198.18.0.1:1/boot"

        again = supervisor.up(3, lab_dir, "http://127.0.0.1:1/boot")  # idempotent: same nodes, same processes
        assert [s.bmc_password for s in again] == [s.bmc_password for s in specs]
        assert [r["pid"] for r in supervisor.status(lab_dir)] == pids
        assert json.loads((lab_dir / "relay.json").read_text())["pid"] == relay["pid"]

        # a second lab would take the same addresses and namespaces: refused, naming the running one
        other = tmp_path / "other-lab"
        with pytest.raises(
            supervisor.LabError, match=f"another lab runs from {lab_dir.resolve()} \\(4 process"
        ):
            supervisor.up(1, other, "http://127.0.0.1:1/boot")
        assert supervisor.lab_processes(other) == [] and not (other / "lab.json").exists()
        assert [r["pid"] for r in supervisor.status(lab_dir)] == pids and all(
            r["alive"] for r in supervisor.status(lab_dir)
        )
        assert {k: sorted(v) for k, v in supervisor.other_labs(other).items()} == {
            lab_dir.resolve(): sorted([*pids, relay["pid"]])
        }
    finally:
        supervisor.down(lab_dir)
    assert supervisor.lab_processes(lab_dir) == []
    for pid in [*pids, relay["pid"]]:
        assert not Path(f"/proc/{pid}").exists() or not supervisor._is_node_process(pid, lab_dir)
    assert not any(r["alive"] for r in supervisor.status(lab_dir))
    assert os.path.exists(lab_dir / "lab.json")
