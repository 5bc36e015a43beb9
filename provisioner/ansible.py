"""Running playbooks through ansible-runner, with every event streamed into the operation's log.

- Each run gets a private data directory of its own (mode 0700), removed afterwards: SSH keys handed to
  Ansible live there only for the run.
- No BMC secret ever enters Ansible: our modules (playbooks/library/) look credentials up themselves
  from the database by node name. Anything else secret is passed in ``secrets`` and masked in every
  log line; tasks that touch secrets also set ``no_log``.
- ``cancel`` (a threading.Event) stops the run: the engine sets it on a step timeout or a lost lease.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import ansible_runner
from django.conf import settings

from provisioner.errors import DriverError
from webapp.env import database_url

PLAYBOOK_DIR = Path(settings.BASE_DIR) / "playbooks"
LogFn = Callable[..., None]


class PlaybookFailed(DriverError):
    """A playbook task failed; the message names the task and its output."""

    code = "playbook_failed"
    retryable = False


@dataclasses.dataclass
class PlaybookResult:
    status: str
    rc: int
    results: dict[str, list[dict[str, Any]]]  # task name -> results of that task (per host)
    failures: list[str]

    def last(self, task: str) -> dict[str, Any]:
        items = self.results.get(task) or []
        if not items:
            raise PlaybookFailed(f"task {task!r} produced no result")
        return items[-1]


def _mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text


def _describe_failure(res: dict[str, Any]) -> str:
    parts = [str(res.get("msg") or "")]
    for key in ("stderr", "stdout"):
        value = str(res.get(key) or "").strip()
        if value:
            parts.append(f"{key}: {value[-800:]}")
    return "; ".join(p for p in parts if p) or "no output"


def _base_settings_module() -> str:
    name = os.environ.get("DJANGO_SETTINGS_MODULE", "webapp.settings")
    return (
        os.environ.get("NEOCLOUD_BASE_SETTINGS", "webapp.settings")
        if name == "webapp.settings_helper"
        else name
    )


def environment() -> dict[str, str]:
    """What our modules need to reach the database (the same one this process uses)."""
    env = {
        "NEOCLOUD_ROOT": str(settings.BASE_DIR),
        # our modules start Django with only the engine's apps, on top of this process's settings
        "DJANGO_SETTINGS_MODULE": "webapp.settings_helper",
        "NEOCLOUD_BASE_SETTINGS": _base_settings_module(),
        "ANSIBLE_CONFIG": str(PLAYBOOK_DIR / "ansible.cfg"),
        "DATABASE_URL": database_url(settings.DATABASES["default"]),
        "NEOCLOUD_FAKE_HW_DIR": str(settings.NEOCLOUD_FAKE_HW_DIR),
        "PYTHONPATH": str(settings.BASE_DIR),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        # one SSH round trip per remote task instead of put + exec + cleanup
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        # ansible-playbook and our modules run from this virtual environment
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    for name in ("NEOCLOUD_VAR_DIR", "NEOCLOUD_CREDENTIAL_KEYS", "NEOCLOUD_SECRET_KEY"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def run_playbook(
    playbook: str,
    *,
    extravars: dict[str, Any],
    log: LogFn,
    hosts: dict[str, dict[str, Any]] | None = None,
    files: dict[str, str | bytes] | None = None,
    secrets: Iterable[str] = (),
    cancel: threading.Event | None = None,
    timeout: float | None = None,
) -> PlaybookResult:
    """Run ``playbooks/<playbook>`` and return per-task results.

    ``hosts`` become the inventory (group ``nodes``; ``localhost`` is implicit). ``files`` are written
    into the run's private directory (mode 0600) and their paths passed as extra vars ``<name>_path``.

    :raises PlaybookFailed: a task failed or a host was unreachable (message: task and output).
    """
    secrets = [s for s in secrets if s]
    private = Path(tempfile.mkdtemp(prefix="neocloud-ansible-"))
    os.chmod(private, 0o700)
    results: dict[str, list[dict[str, Any]]] = {}
    failures: list[str] = []
    # whether every failed task said a retry may help (our modules pass the driver error's ``retryable``)
    retryable_failures: list[bool] = []

    def handle(event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        task = data.get("task", "")
        host = data.get("host", "")
        res = data.get("res") or {}
        if kind == "playbook_on_task_start":
            log(_mask(f"TASK [{task}]", secrets), data={"ansible_event": kind, "task": task})
        elif kind == "runner_on_ok":
            results.setdefault(task, []).append(res)
            status = "changed" if res.get("changed") else "ok"
            message = f"{status}: [{host}] {task}"
            if res.get("msg") and not res.get("_ansible_no_log"):
                message += f" — {res['msg']}"
            log(_mask(message, secrets), data={"ansible_event": kind, "task": task, "host": host})
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            if data.get("ignore_errors"):
                log(_mask(f"failed (ignored): [{host}] {task}", secrets), level="warning")
                return True
            results.setdefault(task, []).append(res)
            what = "unreachable" if kind == "runner_on_unreachable" else "failed"
            detail = _mask(_describe_failure(res), secrets)
            failures.append(f"task '{task}' {what} on {host}: {detail}")
            retryable_failures.append(bool(res.get("retryable")))
            log(
                f"{what}: [{host}] {task} — {detail}",
                level="error",
                data={"ansible_event": kind, "task": task},
            )
        elif kind == "runner_item_on_failed":
            detail = _mask(_describe_failure(res), secrets)
            log(f"item failed: [{host}] {task} — {detail}", level="error")
        return True

    try:
        extra = dict(extravars)
        for name, content in (files or {}).items():
            path = private / name
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
            path.chmod(0o600)
            extra[f"{name}_path"] = str(path)
        inventory = {
            "all": {
                "hosts": {
                    "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
                },
                "children": {"nodes": {"hosts": hosts or {}}},
            }
        }
        runner = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(PLAYBOOK_DIR),
            playbook=playbook,
            inventory=inventory,
            extravars=extra,
            envvars=environment(),
            event_handler=handle,
            cancel_callback=(lambda: bool(cancel and cancel.is_set())),
            quiet=True,
            timeout=int(timeout) if timeout else None,
            settings={"suppress_ansible_output": True, "job_timeout": int(timeout) if timeout else 0},
        )
        status, rc = runner.status, runner.rc
        if status not in ("successful", "canceled", "timeout") and not failures:
            # Ansible stopped before any task ran (syntax error, missing module): keep its own words.
            output = runner.stdout.read() if runner.stdout else ""
            failures.append(
                _mask(output.strip()[-1500:] or f"ansible exited with status {status} (rc {rc})", secrets)
            )
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if status != "successful":
        if status == "canceled":
            raise PlaybookFailed(f"{playbook} was cancelled (step timeout or lost lease)", retryable=True)
        if status == "timeout":
            raise PlaybookFailed(f"{playbook} ran longer than {timeout:.0f} s", retryable=True)
        reason = failures[0] if failures else f"ansible exited with status {status} (rc {rc})"
        retryable = bool(retryable_failures) and all(retryable_failures)
        raise PlaybookFailed(f"{playbook}: {reason}", retryable=retryable)
    return PlaybookResult(status=status, rc=rc, results=results, failures=failures)
