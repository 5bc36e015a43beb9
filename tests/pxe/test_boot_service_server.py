"""The README's web server (gunicorn with webapp/gunicorn.conf.py) takes a rack of servers PXE-booting at
once: 200 connections opened together to the boot service's iPXE endpoint all get an HTTP answer, none is
reset (runserver, with its listen backlog of 10, reset most of them)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, worker_env

CLIENTS = 200
README_COMMAND = re.compile(
    r"^\.venv/bin/gunicorn (-c webapp/gunicorn\.conf\.py webapp\.wsgi)\s", re.MULTILINE
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readme_gunicorn_args() -> list[str]:
    """The arguments the README's everyday commands give gunicorn."""
    found = README_COMMAND.search((ROOT / "README.md").read_text())
    assert found, "the README's everyday commands start no gunicorn with webapp/gunicorn.conf.py"
    return found.group(1).split()


def fetch_ipxe(port: int, start: threading.Barrier) -> str:
    """Open a connection when all clients are ready; what became of it: 'http' (an HTTP answer), 'reset'
    (refused, reset or closed without an answer) or another error's name."""
    start.wait()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
            conn.sendall(
                b"GET /boot/52:54:00:ff:ff:01.ipxe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            )
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError):
        return "reset"
    except OSError as exc:
        return type(exc).__name__
    return "http" if answer.startswith(b"HTTP/1.") else "reset"


@pytest.fixture
def gunicorn(settings, transactional_db, tmp_path: Path):
    port = free_port()
    log = tmp_path / "gunicorn.log"
    args = [*readme_gunicorn_args(), "--bind", f"127.0.0.1:{port}"]
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *args],
            cwd=ROOT,
            env=worker_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"gunicorn did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield port, log
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_200_pxe_clients_at_once_all_get_an_answer_from_the_readme_server(gunicorn):
    port, log = gunicorn
    start = threading.Barrier(CLIENTS)
    outcomes: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        outcome = fetch_ipxe(port, start)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    tally = Counter(outcomes)
    assert tally == {"http": CLIENTS}, f"{dict(tally)}\n{log.read_text()[-3000:]}"
