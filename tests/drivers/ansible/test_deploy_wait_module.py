"""neocloud_deploy_wait against a boot service stand-in on loopback: it watches the agent's progress with
few requests while a long stage advances steadily, still sees the end within about a second, and stops
within a second of a cancel, however long its current wait."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.drivers.ansible.test_ansible_modules import _run_module

LIBRARY = Path(__file__).resolve().parents[3] / "playbooks" / "library" / "neocloud_deploy_wait.py"


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("neocloud_deploy_wait", LIBRARY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("progress", "first_seen", "now", "expected"),
    [
        ({"stage": "download", "percent": 20}, ("download", 0.0, 0.0), 10.0, 5.0),  # 40 s left: capped
        ({"stage": "download", "percent": 50}, ("download", 0.0, 0.0), 5.0, 2.5),  # 5 s left: half
        ({"stage": "download", "percent": 95}, ("download", 0.0, 0.0), 19.0, 1.0),  # nearly done: floor
        ({"stage": "download", "percent": 20}, None, 10.0, 1.0),  # no earlier report of this stage
        ({"stage": "verify", "percent": 50}, ("download", 0.0, 0.0), 10.0, 1.0),  # a new stage
        ({"stage": "download", "percent": 0}, ("download", 0.0, 0.0), 10.0, 1.0),  # no progress yet
        ({"stage": "download", "percent": 100}, ("download", 0.0, 0.0), 10.0, 1.0),
        ({"stage": "download", "percent": "soon"}, ("download", 0.0, 0.0), 10.0, 1.0),
        ({}, None, 10.0, 1.0),
    ],
)
def test_next_poll_follows_the_agents_pace(progress, first_seen, now, expected) -> None:
    assert _module().next_poll_in(progress, first_seen, now, 1.0, 5.0) == pytest.approx(expected)


class _Agent:
    """A deploy whose image stage runs 0 -> 100 % in ``seconds`` from the first poll (Ansible's start-up
    time varies), then finishes; records when each poll came."""

    def __init__(self, seconds: float, step: int = 5) -> None:
        self.seconds, self.step, self.polls, self.started = seconds, step, [], None

    def status(self) -> dict[str, Any]:
        self.started = self.started or time.monotonic()
        elapsed = time.monotonic() - self.started
        self.polls.append(elapsed)
        if elapsed >= self.seconds:
            return {"script_served": True, "finished": True, "progress": {},
                    "result": {"status": "ok", "bytes_written": 1, "sha256": "ab" * 32}}  # fmt: skip
        percent = int(100 * elapsed / self.seconds) // self.step * self.step  # the agent reports each step
        return {"script_served": True, "finished": False, "result": {},
                "progress": {"stage": "download", "percent": percent}}  # fmt: skip


@pytest.fixture
def boot_service():
    servers = []

    def start(agent: _Agent) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                assert self.headers["Authorization"] == "Bearer watch-key"
                body = json.dumps(agent.status()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/boot/api/tickets/1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _args(tmp_path: Path, url: str, **extra: Any) -> dict[str, Any]:
    key = tmp_path / "key"
    key.write_text("watch-key\n")
    return {"status_url": url, "key_path": str(key), "timeout": 60, **extra}


@pytest.mark.slow
def test_a_steady_image_write_is_watched_with_few_polls_and_its_end_seen_promptly(tmp_path, boot_service):
    agent = _Agent(seconds=12)
    result = _run_module(tmp_path, _args(tmp_path, boot_service(agent)), module="neocloud_deploy_wait")
    assert not result["failed"], result
    assert "image written and verified" in result["msg"]
    # one poll a second would be about 12; following the pace, about half as many
    assert len(agent.polls) <= 8, agent.polls
    assert agent.polls[-1] - agent.seconds < 1.5, agent.polls  # the end is seen within the floor interval


@pytest.mark.slow
def test_a_cancel_stops_the_wait_within_a_second_even_during_a_long_pause(tmp_path, boot_service):
    agent = _Agent(seconds=100, step=1)  # after two polls (0 %, 1 %) the module waits its longest, 30 s
    cancel = tmp_path / "cancel"
    args = _args(tmp_path, boot_service(agent), cancel_path=str(cancel), max_interval=30)
    cancelled_at: list[float] = []

    def cancel_once_waiting() -> None:  # after the module's first few polls, during one of its long waits
        while len(agent.polls) < 2:
            time.sleep(0.05)
        time.sleep(0.5)
        cancel.touch()
        cancelled_at.append(time.monotonic())

    canceller = threading.Thread(target=cancel_once_waiting, daemon=True)
    canceller.start()
    result = _run_module(tmp_path, args, module="neocloud_deploy_wait")
    assert result["failed"] and "cancelled" in result["msg"], result
    assert result.get("retryable") is True
    assert len(agent.polls) == 2, agent.polls  # no poll was needed to see it
    assert time.monotonic() - cancelled_at[0] < 3.0  # seen within a second, plus Ansible's own exit


class _StuckAgent(_Agent):
    """An erase that reaches 40 % and then reports nothing new (a hung disk)."""

    def status(self) -> dict[str, Any]:
        self.started = self.started or time.monotonic()
        self.polls.append(time.monotonic() - self.started)
        return {"script_served": True, "finished": False, "result": {},
                "progress": {"stage": "erase", "percent": 40}}  # fmt: skip


@pytest.mark.slow
def test_a_long_job_that_keeps_progressing_outlives_the_stall_timeout(tmp_path, boot_service):
    """A wipe of a large disk runs for hours: only a stall, not its length, ends the wait."""
    agent = _Agent(seconds=5, step=5)
    args = _args(tmp_path, boot_service(agent), stall_timeout=2, max_interval=1)
    result = _run_module(tmp_path, args, module="neocloud_deploy_wait")
    assert not result["failed"], result
    assert agent.polls[-1] >= 5  # it waited past the stall timeout, twice over


@pytest.mark.slow
def test_an_agent_that_stops_progressing_fails_after_the_stall_timeout(tmp_path, boot_service):
    agent = _StuckAgent(seconds=1000)
    started = time.monotonic()
    result = _run_module(
        tmp_path, _args(tmp_path, boot_service(agent), stall_timeout=2), module="neocloud_deploy_wait"
    )
    assert result["failed"]
    assert (
        result["msg"]
        == "the deploy agent reported no progress for 2 s (last progress: {'stage': 'erase', 'percent': 40})"
    )
    assert time.monotonic() - started < 30  # not the 60 s timeout
    assert not result.get("retryable")
