"""Running playbooks through ansible-runner, with every event streamed into the operation's log.

One play, many hosts. Every playbook targets the inventory group ``nodes``, and a run for one node joins
the runs of the same playbook that other nodes start at the same moment (from any worker process on this
machine, with the same database and settings): N nodes that deploy together cost one ansible-playbook
start (about 1 s of CPU each: Ansible parses its configuration and plugin metadata every time it starts)
instead of N. The plays use the ``free`` strategy, so hosts do not wait for each other between tasks, and a
failing host leaves the play without stopping the others. Each caller still sees only its own node: its
events in its log, its task results, its failure.

How a batch forms, under ``VAR_DIR/ansible/<environment digest>/<playbook>/`` (every directory mode 0700):

1. A caller writes its request (host variables and private files such as SSH keys) into ``pending/<id>/``,
   then takes ``collect.lock``.
2. Holding the lock and finding its request still pending, it leads a new batch: it waits until no other
   request has arrived for the quiet period (bounded), moves all pending requests into
   ``batches/<batch>/hosts/<id>/``, releases the lock and runs Ansible in a thread, appending each host's
   events to that host's ``events.jsonl`` and finally writing its ``done.json``.
3. Holding the lock and finding its request gone, it was taken into a batch and only follows.

Every caller then follows its own host's events until the host is done. The leader holds the batch's
``running.lock`` while Ansible runs: a follower whose leader died (lock free, no result) fails with a
retryable error and the engine retries the step.

Secrets (BMC credentials, SSH private keys, a deploy ticket's watch key) are never Ansible variables: they
are private files (``files``, mode 0600 in 0700 directories, removed after the run) whose paths the tasks
get, and their values, passed in ``secrets``, are masked in every log line. Ansible gets no database URL.
Text that others chose (a customer's SSH key comment) goes in wrapped by ``untemplated``: Ansible renders
host variables as Jinja, and ``{{ lookup('pipe', ...) }}`` would run on the control plane.

``cancel`` (a threading.Event, set by the engine on a step timeout or a lost lease) stops the caller's
host: our long-running modules watch its cancel file, and a batch whose hosts are all cancelled is
stopped: ansible-playbook and every process it started (Ansible's workers lead sessions of their own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import secrets as _secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import ansible_runner
import ansible_runner.interface
from django.conf import settings

from provisioner.errors import DriverError
from webapp.env import database_url

log = logging.getLogger(__name__)

PLAYBOOK_DIR = Path(settings.BASE_DIR) / "playbooks"
LogFn = Callable[..., None]
# What a follower needs of each event; the rest (stdout rendering, uuids, timings) stays with the leader.
_EVENT_FIELDS = ("task", "host", "res", "ignore_errors", "processed", "failures", "dark")
_POLL_SECONDS = 0.1
# How long a cancelled caller waits for its host to stop before it gives up on the host.
CANCEL_GRACE_SECONDS = 30.0
# Age after which a batch nobody runs, or a request nobody took, is what a killed worker left behind.
STALE_SECONDS = 600.0


class PlaybookFailed(DriverError):
    """A playbook task failed; the message names the task and its output."""

    code = "playbook_failed"
    retryable = False

    def __init__(
        self, message: str, *, retryable: bool | None = None, bmc_error_kinds: Sequence[str] = ()
    ) -> None:
        super().__init__(message, retryable=retryable)
        # the kinds of the BMC calls that failed the run (the neocloud_bmc module says), for the metrics
        self.bmc_error_kinds = list(bmc_error_kinds)


@dataclasses.dataclass
class PlaybookResult:
    """A successful run for one host (a failed one raises PlaybookFailed)."""

    results: dict[str, list[dict[str, Any]]]  # task name -> results of that task for this host
    batch_size: int = 1  # how many hosts shared the ansible-playbook run

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
    # module_* : what a module that never produced its JSON result printed (a traceback, a missing import)
    for key in ("stderr", "stdout", "module_stderr", "module_stdout"):
        value = str(res.get(key) or "").strip()
        if value:
            parts.append(f"{key}: {value[-800:]}")
    return "; ".join(p for p in parts if p) or "no output"


def environment() -> dict[str, str]:
    """What ansible-playbook and our modules need. No database URL and no Django settings: our modules
    talk to BMCs and to the boot service only, with what the engine hands them in private files.
    Together with ``INHERITED_ENVIRONMENT`` this is all of Ansible's environment (see ``_own_environment``)."""
    return {
        "ANSIBLE_CONFIG": str(PLAYBOOK_DIR / "ansible.cfg"),
        # our modules import the drivers from this project
        "PYTHONPATH": str(settings.BASE_DIR),
        "NEOCLOUD_FAKE_HW_DIR": str(settings.NEOCLOUD_FAKE_HW_DIR),
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


# What ansible-playbook may take from the worker's own environment: the system's basics, proxies and CA
# bundles (Redfish and the boot service are reached over HTTP) and the drivers' BMC session limits.
# ansible-runner hands a child the whole environment of the process that starts it; the rest of that
# (DATABASE_URL, NEOCLOUD_CREDENTIAL_KEYS, NEOCLOUD_SECRET_KEY, ANSIBLE_VERBOSITY or ANSIBLE_LOG_PATH...)
# would reach ansible-playbook, every module, and ansible-runner's ``command`` artifact on disk.
INHERITED_ENVIRONMENT = frozenset(
    {
        *("HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR"),
        *("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"),
        *("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"),
        *("NEOCLOUD_BMC_SESSIONS_PER_BMC", "NEOCLOUD_BMC_SESSIONS_TOTAL", "NEOCLOUD_BMC_MIN_SPACING"),
    }
)


def _own_environment(prepared: dict[str, Any], envvars: dict[str, str]) -> dict[str, Any]:
    """``prepared`` (ansible-runner's environment for the child: this process's, ``envvars`` and its own
    settings) without what it only copied from this process's environment, unless listed as inherited."""
    return {
        name: value
        for name, value in prepared.items()
        if name in envvars
        or name in INHERITED_ENVIRONMENT
        or name not in os.environ
        or os.environ[name] != value  # set or changed by ansible-runner (its callback plugin, say)
    }


def local_host(**hostvars: Any) -> dict[str, Any]:
    """Host variables for a node whose tasks run on the control plane (BMC, boot service). ``hostvars``
    are data, never templates (see ``untemplated``)."""
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        **untemplated(hostvars),
    }


def untemplated(value: Any) -> Any:
    """``value`` (text, or lists and dicts of it) as host variables Ansible passes on verbatim and never
    renders as a template: the JSON inventory's form of ``!unsafe``. Pure; a value already wrapped stays
    as it is."""
    if isinstance(value, str):
        return {"__ansible_unsafe": value}
    if isinstance(value, dict) and set(value) == {"__ansible_unsafe"}:
        return value
    if isinstance(value, list | tuple):
        return [untemplated(item) for item in value]
    if isinstance(value, dict):
        return {key: untemplated(item) for key, item in value.items()}
    return value


def ssh_host(address: str, port: int, user: str, interpreter: str, **hostvars: Any) -> dict[str, Any]:
    """Host variables for a node reached over SSH with the provisioning key and strict host-key checking
    against the deploy's known_hosts (the run's files ``provisioning_key`` and ``known_hosts``).
    ``address``, ``user``, ``interpreter`` and ``hostvars`` are data, never templates (inventory text)."""
    return {
        "ansible_host": untemplated(address),
        "ansible_port": port,
        "ansible_user": untemplated(user),
        "ansible_ssh_private_key_file": "{{ provisioning_key_path }}",
        "ansible_ssh_common_args": "-o UserKnownHostsFile={{ known_hosts_path }} -o StrictHostKeyChecking=yes "
        "-o IdentitiesOnly=yes -o ConnectTimeout=10",
        "ansible_python_interpreter": untemplated(interpreter),
        # Files (the burn-in agent) go through `dd` on the server: any OS has it, also one without the sftp
        # subsystem or scp (a minimal image), and the "smart" default's failed sftp and scp tries are skipped.
        "ansible_ssh_transfer_method": "piped",
        **untemplated(hostvars),
    }


# What an unreachable host says when trying again cannot help: SSH refused our key, or the host is not the
# one whose key we hold (that must stop the step, never be tried again).
_NOT_TRANSIENT = (
    "Permission denied",
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
)


def _retryable(kind: str, res: dict[str, Any]) -> bool:
    """Whether a failed task's result says a retry may help: our modules say so themselves; an unreachable
    host (a timed-out or reset SSH connection: "Connection timed out during banner exchange") is transient
    unless SSH refused the login or the host key."""
    if kind == "runner_on_unreachable":
        message = str(res.get("msg", ""))
        return not any(marker in message for marker in _NOT_TRANSIENT)
    return bool(res.get("retryable"))


class _HostEvents:
    """One host's Ansible events turned into log lines and task results, secrets masked."""

    def __init__(self, host: str, log: LogFn, secrets: list[str]) -> None:
        self.host = host
        self.log = log
        self.secrets = secrets
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.failures: list[str] = []
        self.retryable: list[bool] = []  # whether each failed task said a retry may help
        self.bmc_error_kinds: list[str] = []  # the kind of each failed BMC call (the neocloud_bmc module)
        self.finished = False  # Ansible reported this host processed (stats) or out of the play (failed)

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        task = data.get("task", "")
        host = data.get("host", "")
        res = data.get("res") or {}
        if kind == "runner_on_start":
            # per host (not playbook_on_task_start): under strategy free hosts reach tasks at their own pace
            self.log(_mask(f"TASK [{task}]", self.secrets), data={"ansible_event": kind, "task": task})
        elif kind == "runner_on_ok":
            self.results.setdefault(task, []).append(res)
            status = "changed" if res.get("changed") else "ok"
            message = f"{status}: [{host}] {task}"
            if res.get("msg") and not res.get("_ansible_no_log"):
                message += f" — {res['msg']}"
            self.log(_mask(message, self.secrets), data={"ansible_event": kind, "task": task, "host": host})
        elif kind in ("runner_on_failed", "runner_on_unreachable"):
            if data.get("ignore_errors"):
                self.log(_mask(f"failed (ignored): [{host}] {task}", self.secrets), level="warning")
                return
            self.results.setdefault(task, []).append(res)
            what = "unreachable" if kind == "runner_on_unreachable" else "failed"
            detail = _mask(_describe_failure(res), self.secrets)
            self.failures.append(f"task '{task}' {what} on {host}: {detail}")
            self.retryable.append(_retryable(kind, res))
            if res.get("bmc_error_kind"):
                self.bmc_error_kinds.append(str(res["bmc_error_kind"]))
            self.log(
                f"{what}: [{host}] {task} — {detail}",
                level="error",
                data={"ansible_event": kind, "task": task},
            )
            # a failed host leaves the play: nothing more will run for it
            self.finished = host == self.host
        elif kind == "runner_item_on_failed":
            detail = _mask(_describe_failure(res), self.secrets)
            self.log(f"item failed: [{host}] {task} — {detail}", level="error")
        elif kind == "playbook_on_stats":
            self.finished = self.finished or self.host in (data.get("processed") or {})


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _held(path: Path) -> bool:
    """Whether some process holds the lock on ``path`` (our leader, while Ansible runs)."""
    try:
        with open(path) as fh:  # read-only: never creates the file (nor touches its directory)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _spool(playbook: str, env: dict[str, str]) -> Path:
    """Batches form only among runs of one playbook for one control plane (same environment and database:
    test runs side by side never share a batch)."""
    scope = {**env, "database": database_url(settings.DATABASES["default"])}
    digest = hashlib.sha256(json.dumps(scope, sort_keys=True).encode()).hexdigest()[:16]
    root = _private_dir(Path(settings.VAR_DIR) / "ansible")
    spool = _private_dir(_private_dir(root / digest) / Path(playbook).stem)
    _private_dir(spool / "pending")
    _private_dir(spool / "batches")
    return spool


def _write_request(
    spool: Path, host: str, hostvars: dict[str, Any], files: dict[str, str | bytes], timeout: float | None
) -> Path:
    request_id = f"{time.time_ns()}-{_secrets.token_hex(4)}"
    staging = _private_dir(spool / f"staging-{request_id}")
    for name, content in files.items():
        path = staging / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(content if isinstance(content, bytes) else content.encode())
    request = {"host": host, "hostvars": hostvars, "files": sorted(files), "timeout": timeout}
    (staging / "request.json").write_text(json.dumps(request))
    pending = spool / "pending" / request_id
    os.rename(staging, pending)  # appears whole to a collecting leader
    return pending


def _wait_quiet(pending: Path) -> None:
    quiet = settings.NEOCLOUD_ANSIBLE_BATCH_QUIET_SECONDS
    if quiet <= 0:
        return
    deadline = time.monotonic() + settings.NEOCLOUD_ANSIBLE_BATCH_MAX_WAIT_SECONDS
    seen = len(os.listdir(pending))
    while (left := deadline - time.monotonic()) > 0 and seen < settings.NEOCLOUD_ANSIBLE_BATCH_MAX_HOSTS:
        time.sleep(min(quiet, left))
        now = len(os.listdir(pending))
        if now == seen:
            return
        seen = now


def _sweep_stale(spool: Path) -> None:
    """Remove what killed workers left behind (their private files included): batches nobody runs any
    more and requests nobody took, once older than ``STALE_SECONDS``."""
    cutoff = time.time() - STALE_SECONDS
    batches = [b for b in (spool / "batches").iterdir() if not _held(b / "running.lock")]
    requests = [*spool.glob("staging-*"), *(spool / "pending").iterdir()]
    for path in [*batches, *requests]:
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)


def sweep_stale_spools() -> int:
    """Sweep every playbook's spool (see ``_sweep_stale``): a batch or request a killed worker left holds
    BMC credentials and the provisioning key in clear (0600), and a spool is otherwise swept only when its
    own playbook runs again, which may be never. Returns how many were removed. For the scheduler."""
    root = Path(settings.VAR_DIR) / "ansible"
    if not root.is_dir():
        return 0
    removed = 0
    for spool in root.glob("*/*"):
        if not (spool / "batches").is_dir():
            continue
        before = len(list((spool / "batches").iterdir())) + len(list((spool / "pending").iterdir()))
        with _flock(spool / "collect.lock"):  # not while a leader collects requests into a new batch
            _sweep_stale(spool)
        removed += (
            before - len(list((spool / "batches").iterdir())) - len(list((spool / "pending").iterdir()))
        )
    return removed


def _join(spool: Path, pending: Path, playbook: str, env: dict[str, str]) -> Path:
    """Lead a new batch with the requests pending now, or find the batch a leader took ours into."""
    with _flock(spool / "collect.lock"):
        if not pending.exists():
            found = list((spool / "batches").glob(f"*/hosts/{pending.name}"))
            if not found:
                raise PlaybookFailed(f"{playbook}: the run request vanished from {spool}", retryable=True)
            return found[0]
        batch = _private_dir(spool / "batches" / f"{time.time_ns()}-{_secrets.token_hex(3)}")
        hosts = _private_dir(batch / "hosts")
        running = open(batch / "running.lock", "a")  # noqa: SIM115 - held by the leader thread until done
        fcntl.flock(running, fcntl.LOCK_EX)
        _sweep_stale(spool)
        _wait_quiet(spool / "pending")
        others = sorted(p for p in (spool / "pending").iterdir() if p != pending)
        claimed: dict[Path, dict[str, Any]] = {}  # host directory in the batch -> its request
        for path in [pending, *others]:
            if len(claimed) >= settings.NEOCLOUD_ANSIBLE_BATCH_MAX_HOSTS:
                break
            request = json.loads((path / "request.json").read_text())
            # one inventory entry per host: a second request for a host waits for the next batch
            if all(r["host"] != request["host"] for r in claimed.values()):
                os.rename(path, hosts / path.name)
                claimed[hosts / path.name] = request
    threading.Thread(
        target=_lead, args=(batch, claimed, playbook, env, running), name=f"ansible-{batch.name}", daemon=True
    ).start()
    return hosts / pending.name


def _process_tree() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the command name may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(entry))
    return children


def _stop_ansible_processes(private_data_dir: Path) -> None:
    """Kill the ansible-playbook this process started for ``private_data_dir``, and all its descendants:
    first stopped (SIGSTOP, so none can start another or be orphaned out of reach), then killed."""
    marker = str(private_data_dir).encode()
    roots = []
    for pid in _process_tree().get(os.getpid(), []):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                roots.append(pid)
    stopped: set[int] = set()
    while True:
        tree = _process_tree()
        found, todo = set(), list(roots)
        while todo:
            pid = todo.pop()
            found.add(pid)
            todo.extend(tree.get(pid, []))
        if found <= stopped:
            break
        for pid in found - stopped:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        stopped |= found
    for pid in stopped:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    """Atomically, and quietly if the follower already left (its directory is gone)."""
    try:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(document))
        os.rename(tmp, path)
    except OSError:
        pass


def _lead(
    batch: Path, requests: dict[Path, dict[str, Any]], playbook: str, env: dict[str, str], running: IO[str]
) -> None:
    """Run the batch's hosts in one ansible-playbook and fan their events out. Runs in its own thread.
    ``requests``: each host's directory in the batch and the request the caller wrote there."""
    inventory_hosts: dict[str, dict[str, Any]] = {}
    sinks: dict[str, IO[str]] = {}
    for directory, request in requests.items():
        hostvars = dict(request["hostvars"])
        for name in request["files"]:
            hostvars[f"{name}_path"] = str(directory / name)
        hostvars["neocloud_cancel_path"] = str(directory / "cancel")
        inventory_hosts[request["host"]] = hostvars
        sinks[request["host"]] = open(directory / "events.jsonl", "a", buffering=1)  # noqa: SIM115
    timeouts = [r["timeout"] for r in requests.values() if r["timeout"]]
    timeout = int(max(timeouts)) if timeouts else 0

    def fan_out(event: dict[str, Any]) -> bool:
        data = event.get("event_data", {})
        slim = {"event": event.get("event"), "event_data": {k: data[k] for k in _EVENT_FIELDS if k in data}}
        line = json.dumps(slim, default=str) + "\n"
        host = data.get("host")
        # events without a host (stats) or for a host outside the batch concern everyone
        for sink in [sinks[host]] if host in sinks else sinks.values():
            with contextlib.suppress(OSError, ValueError):
                sink.write(line)
        return False  # handled: ansible-runner need not also keep the event in its artifact directory

    private_data_dir = batch / "run"

    def all_cancelled() -> bool:
        if not all((d / "cancel").exists() or not d.exists() for d in requests):
            return False
        # ansible-runner then kills ansible-playbook's process group only; Ansible's workers each lead a
        # session of their own (setsid), and their modules (and ssh) would run on.
        _stop_ansible_processes(private_data_dir)
        return True

    status, rc, output = "failed", -1, ""
    try:
        inventory = {
            "all": {
                "hosts": {"localhost": local_host()},
                "children": {"nodes": {"hosts": inventory_hosts}},
            }
        }
        envvars = {**env, "ANSIBLE_FORKS": str(max(5, len(inventory_hosts)))}
        runner = ansible_runner.interface.init_runner(
            private_data_dir=str(_private_dir(private_data_dir)),
            project_dir=str(PLAYBOOK_DIR),
            playbook=playbook,
            inventory=inventory,
            envvars=envvars,
            event_handler=fan_out,
            cancel_callback=all_cancelled,
            quiet=True,
            timeout=timeout or None,
            settings={"suppress_ansible_output": True, "job_timeout": timeout},
        )
        runner.config.env = _own_environment(runner.config.env, envvars)
        runner.run()
        status, rc = runner.status, runner.rc
        if status not in ("successful", "failed", "canceled", "timeout") or rc not in (0, 2):
            output = runner.stdout.read() if runner.stdout else ""
    except Exception as exc:  # the followers must hear of it, whatever it is
        log.exception("ansible batch %s crashed", batch.name)
        output = f"running ansible-playbook failed: {exc}"
    finally:
        for sink in sinks.values():
            with contextlib.suppress(OSError):
                sink.close()
        # ansible-runner's run directory (inventory, env, artifacts) is gone before any caller has its result
        shutil.rmtree(batch / "run", ignore_errors=True)
        done = {"status": status, "rc": rc, "output": output[-1500:], "batch_size": len(inventory_hosts)}
        for d in requests:
            _write_json(d / "done.json", done)
        running.close()
        # each follower removes its own directory once it has read its result
        deadline = time.monotonic() + 120
        while any(d.exists() for d in requests) and time.monotonic() < deadline:
            time.sleep(0.5)
        shutil.rmtree(batch, ignore_errors=True)


def _follow(host_dir: Path, events: _HostEvents, cancel: threading.Event | None) -> dict[str, Any]:
    """Feed this host's events to ``events`` until the host is done; return the run's outcome."""
    stream = host_dir / "events.jsonl"
    done = host_dir / "done.json"
    running = host_dir.parent.parent / "running.lock"
    fh: IO[str] | None = None
    partial = ""
    cancel_deadline: float | None = None
    next_alive_check = time.monotonic() + 1.0

    def drain() -> None:
        nonlocal fh, partial
        if fh is None:
            if not stream.exists():
                return
            fh = open(stream)  # noqa: SIM115 - closed below
        for line in fh:
            partial += line
            if partial.endswith("\n"):
                events.handle(json.loads(partial))
                partial = ""

    try:
        while True:
            finished = done.exists()  # read before draining: every event precedes done.json
            drain()
            if finished:
                return dict(json.loads(done.read_text()))
            if events.finished and events.failures:
                return {"status": "failed", "rc": 2, "output": ""}  # out of the play; others go on
            now = time.monotonic()
            if cancel is not None and cancel.is_set() and cancel_deadline is None:
                (host_dir / "cancel").touch()
                cancel_deadline = now + CANCEL_GRACE_SECONDS
            if cancel_deadline is not None and now > cancel_deadline:
                return {"status": "canceled", "rc": -1, "output": ""}
            if now > next_alive_check:
                next_alive_check = now + 1.0
                if not _held(running) and not done.exists():
                    return {"status": "lost", "rc": -1, "output": ""}
            time.sleep(_POLL_SECONDS)
    finally:
        if fh is not None:
            fh.close()


def run_playbook(
    playbook: str,
    *,
    host: str,
    hostvars: dict[str, Any],
    log: LogFn,
    files: dict[str, str | bytes] | None = None,
    secrets: Iterable[str] = (),
    cancel: threading.Event | None = None,
    timeout: float | None = None,
) -> PlaybookResult:
    """Run ``playbooks/<playbook>`` for one host (in the group ``nodes``) and return its task results.

    The run may share its ansible-playbook process with other hosts' runs of the same playbook (see the
    module's docstring); ``log`` gets this host's events only. ``files`` are written into the request's
    private directory (mode 0600) and their paths given to the host as variables ``<name>_path``.

    :raises PlaybookFailed: a task failed or the host was unreachable (message: task and output), the run
        was cancelled or timed out (retryable), or the process running it died (retryable).
    """
    secrets = [s for s in secrets if s]
    env = environment()
    spool = _spool(playbook, env)
    pending = _write_request(spool, host, hostvars, files or {}, timeout)
    events = _HostEvents(host, log, secrets)
    host_dir = pending
    try:
        host_dir = _join(spool, pending, playbook, env)
        with contextlib.suppress(OSError):  # every host of the batch is in place once _join returns
            shared = len(os.listdir(host_dir.parent))
            log(f"{playbook}: one ansible-playbook run for {shared} node{'s' if shared != 1 else ''}")
        outcome = _follow(host_dir, events, cancel)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
        shutil.rmtree(pending, ignore_errors=True)
    status = outcome["status"]
    if events.failures:
        retryable = all(events.retryable)
        raise PlaybookFailed(
            f"{playbook}: {events.failures[0]}", retryable=retryable, bmc_error_kinds=events.bmc_error_kinds
        )
    if status == "canceled":
        raise PlaybookFailed(f"{playbook} was cancelled (step timeout or lost lease)", retryable=True)
    if status == "timeout":
        raise PlaybookFailed(f"{playbook} ran longer than {timeout or 0:.0f} s", retryable=True)
    if status == "lost":
        raise PlaybookFailed(
            f"{playbook}: the process running Ansible for {host} stopped without a result", retryable=True
        )
    if not events.finished:
        # Ansible stopped before this host ran (syntax error, missing module): keep its own words.
        reason = (
            outcome.get("output", "").strip() or f"ansible exited with status {status} (rc {outcome['rc']})"
        )
        raise PlaybookFailed(f"{playbook}: {_mask(reason, secrets)}")
    return PlaybookResult(results=events.results, batch_size=int(outcome.get("batch_size", 1)))
