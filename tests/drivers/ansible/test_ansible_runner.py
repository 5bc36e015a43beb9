"""Playbooks through ansible-runner: task events reach the log, and a driver error's ``retryable`` crosses
the Ansible boundary so the engine retries what a retry can fix (a silent BMC) and nothing else. Runs
for several nodes that start together share one ansible-playbook, and each caller sees only its node."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest

from provisioner.drivers.ansible import runner as ansible
from provisioner.drivers.ansible.drivers import bmc_access_file
from provisioner.drivers.ansible.runner import PlaybookFailed, PlaybookResult, local_host, run_playbook
from provisioner.drivers.base import BmcAccess
from provisioner.drivers.fake import read_fake_bmc, write_fake_bmc
from provisioner.models import Node

pytestmark = pytest.mark.slow


def _access(node: Node) -> BmcAccess:
    return BmcAccess(
        protocol="fake", address=node.bmc_address, port=node.bmc_port, username="admin", password=""
    )


def _run(node: Node, action: str, lines: list[str]) -> PlaybookResult:
    access = node.bmc_access()
    return run_playbook(
        "power.yml",
        host=node.name,
        hostvars=local_host(action=action),
        files={"bmc": bmc_access_file(access)},
        secrets=[access.password],
        log=lambda message, **_: lines.append(message),
    )


def _run_together(nodes: list[Node], action: str) -> dict[str, Any]:
    """Start the same playbook for several nodes at once, each from its own thread (as workers do)."""
    outcomes: dict[str, Any] = {}
    logs: dict[str, list[str]] = {node.name: [] for node in nodes}

    def one(node: Node) -> None:
        try:
            outcomes[node.name] = _run(node, action, logs[node.name])
        except PlaybookFailed as exc:
            outcomes[node.name] = exc

    threads = [threading.Thread(target=one, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return {"outcomes": outcomes, "logs": logs}


def test_power_playbook_drives_the_bmc_and_streams_task_events(inventory, fake_hw_dir, transactional_db):
    node = Node.objects.get(name="node-h100-8x-01")
    lines: list[str] = []
    _run(node, "power_on", lines)
    assert read_fake_bmc(_access(node))["power"] == "on"
    assert lines[0] == "power.yml: one ansible-playbook run for 1 node"
    assert lines[1] == "TASK [Power action]" and "power on" in lines[-1]


def test_silent_bmc_fails_the_playbook_as_retryable(inventory, fake_hw_dir, transactional_db, settings):
    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.2
    node = Node.objects.get(name="node-h100-8x-02")
    write_fake_bmc(_access(node), fault="timeout")
    with pytest.raises(PlaybookFailed, match="did not answer") as err:
        _run(node, "status", [])
    assert err.value.retryable
    assert err.value.bmc_error_kinds == ["timeout"]  # what the engine counts (neocloud_bmc_call_errors)


def test_refused_credentials_fail_the_playbook_as_final(inventory, fake_hw_dir, transactional_db):
    node = Node.objects.get(name="node-h100-8x-03")
    write_fake_bmc(_access(node), fault="auth")
    with pytest.raises(PlaybookFailed) as err:
        _run(node, "status", [])
    assert not err.value.retryable
    assert "secret-bmc-pw" not in str(err.value)
    assert err.value.bmc_error_kinds == ["auth"]


def test_runs_started_together_share_one_ansible_playbook(inventory, fake_hw_dir, transactional_db):
    nodes = list(Node.objects.filter(name__in=["node-h100-8x-01", "node-h100-8x-02", "node-a100-8x-01"]))
    run = _run_together(nodes, "power_on")
    for node in nodes:
        result = run["outcomes"][node.name]
        assert isinstance(result, PlaybookResult), result
        assert result.batch_size == 3
        assert read_fake_bmc(_access(node))["power"] == "on"
        # each caller's log holds its own host's events only
        lines = run["logs"][node.name]
        assert lines[0] == "power.yml: one ansible-playbook run for 3 nodes"
        assert lines[1] == "TASK [Power action]"
        assert any(f"[{node.name}]" in line for line in lines)
        assert not any(f"[{other.name}]" in line for other in nodes if other != node for line in lines)


def test_a_failing_host_leaves_the_others_in_its_batch_alone(inventory, fake_hw_dir, transactional_db):
    bad, good = Node.objects.get(name="node-h100-8x-03"), Node.objects.get(name="node-h100-8x-04")
    write_fake_bmc(_access(bad), fault="auth")
    run = _run_together([bad, good], "power_on")
    assert isinstance(run["outcomes"][bad.name], PlaybookFailed)
    assert not run["outcomes"][bad.name].retryable
    assert isinstance(run["outcomes"][good.name], PlaybookResult)
    assert run["outcomes"][good.name].batch_size == 2
    assert read_fake_bmc(_access(good))["power"] == "on"
    assert read_fake_bmc(_access(bad))["power"] != "on"


# the stand-in leader must itself run cleanly, or the test would pass on a crashed thread
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_caller_whose_ansible_process_died_fails_as_retryable(
    inventory, fake_hw_dir, transactional_db, monkeypatch
):
    """The leader holds the batch's running lock while Ansible runs; without it and without a result the
    followers (the leader's own caller included) must not wait forever."""

    def die(batch, requests, playbook, env, running) -> None:
        running.close()  # what the kernel does when the leading worker is killed

    monkeypatch.setattr(ansible, "_lead", die)
    node = Node.objects.get(name="node-h100-8x-01")
    with pytest.raises(PlaybookFailed, match="stopped without a result") as err:
        _run(node, "status", [])
    assert err.value.retryable


def test_batch_files_are_private_and_removed_after_the_run(
    inventory, fake_hw_dir, transactional_db, settings
):
    node = Node.objects.get(name="node-h100-8x-02")
    root = settings.VAR_DIR / "ansible"
    spool = ansible._spool("power.yml", ansible.environment())
    # what a worker killed mid-run 20 minutes ago left behind, its BMC access file included
    stale = spool / "batches" / "stale-batch" / "hosts" / "stale-request"
    stale.mkdir(parents=True)
    (stale / "bmc").write_text("old secret")
    os.utime(spool / "batches" / "stale-batch", (time.time() - 1200, time.time() - 1200))
    modes: dict[str, int] = {}

    def spy(message: str, **_: Any) -> None:  # called while the run is under way
        for path in spool.rglob("secret"):
            modes[path.name] = path.stat().st_mode & 0o777
            for parent in path.relative_to(root).parents:
                modes[str(parent)] = (root / parent).stat().st_mode & 0o777

    files = {"bmc": bmc_access_file(node.bmc_access()), "secret": "x"}
    run_playbook("power.yml", host=node.name, hostvars=local_host(action="status"), log=spy, files=files)
    assert modes.pop("secret") == 0o600
    assert len(modes) >= 4 and set(modes.values()) == {0o700}, modes
    # the batch leader may still be removing the (by now empty) batch directory: walk, tolerating that
    left = [name for _, dirs, files in os.walk(spool) for name in dirs + files if name in ("secret", "bmc")]
    assert not left


def test_two_runs_for_the_same_node_never_share_a_batch(inventory, fake_hw_dir, transactional_db):
    """One inventory entry per host: a second request for a node waits for the next batch."""
    node = Node.objects.get(name="node-h100-8x-01")
    results: list[Any] = []

    def one() -> None:
        results.append(_run(node, "status", []))

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [r.batch_size for r in results] == [1, 1]


@pytest.mark.parametrize(
    ("message", "retryable"),
    [
        ("Failed to connect to the host via ssh: Connection timed out during banner exchange", True),
        ("Failed to connect to the host via ssh: Connection reset by peer", True),
        ("Failed to connect to the host via ssh: root@198.18.0.5: Permission denied (publickey).", False),
        ("Failed to connect to the host via ssh: Host key verification failed.", False),
        ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@", False),
    ],
)
def test_an_unreachable_host_is_retried_unless_ssh_refused_the_login_or_the_host_key(message, retryable):
    """A transient SSH failure during handover or burn-in no longer fails the step on its first attempt; a
    refused key or a changed host key still stops it."""
    events = ansible._HostEvents("n1", lambda *args, **kwargs: None, secrets=[])
    events.handle(
        {
            "event": "runner_on_unreachable",
            "event_data": {"task": "Gathering", "host": "n1", "res": {"msg": message, "unreachable": True}},
        }
    )
    assert events.retryable == [retryable]
    assert "unreachable on n1" in events.failures[0]


def test_the_scheduler_sweeps_what_killed_workers_left_in_every_spool(settings, tmp_path):
    """A worker killed mid-run leaves its request (BMC credentials, the provisioning key: 0600 files) in its
    playbook's spool; a spool was swept only when its own playbook ran again, which may be never."""
    import fcntl

    settings.VAR_DIR = tmp_path
    spool = tmp_path / "ansible" / "0123456789abcdef" / "wipe"
    old = time.time() - ansible.STALE_SECONDS - 60

    def leftover(path, *, stale=True):
        (path / "hosts" / "node-1").mkdir(parents=True)
        (path / "hosts" / "node-1" / "bmc").write_text('{"password": "hunter2"}')
        if stale:
            os.utime(path, (old, old))
        return path

    dead = leftover(spool / "batches" / "1-dead")
    fresh = leftover(spool / "batches" / "2-fresh", stale=False)
    running = leftover(spool / "batches" / "3-running")
    (spool / "pending").mkdir()
    orphan = spool / "pending" / "node-2"
    orphan.mkdir()
    os.utime(orphan, (old, old))
    with open(running / "running.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a leader still runs this batch, however old it is
        os.utime(running, (old, old))
        assert ansible.sweep_stale_spools() == 2
    assert not dead.exists() and not orphan.exists()
    assert fresh.exists() and running.exists()
    # its leader gone (the lock released with its process), the old batch goes on the next pass
    assert ansible.sweep_stale_spools() == 1
    assert not running.exists() and fresh.exists()


def test_a_bmc_playbook_that_failed_on_the_bmc_counts_the_failed_call(
    inventory, fake_hw_dir, transactional_db
):
    from provisioner.drivers.ansible.drivers import _run_bmc_playbook
    from provisioner.errors import DeployFailed
    from provisioner.models import BmcCallErrors

    node = Node.objects.get(name="node-h100-8x-03")
    write_fake_bmc(_access(node), fault="auth")
    with pytest.raises(DeployFailed):
        _run_bmc_playbook(node, "power_off_disk.yml", lambda message, **_: None)
    assert dict(BmcCallErrors.objects.values_list("kind", "count")) == {"auth": 1}
