"""IPMI 2.0 (RMCP+ "lanplus") power driver on pyghmi, driven from pyghmi's own event loop.

Measured on this project's 2-core machine: a pyghmi login costs about 7 ms and a command on a logged-in
session under 1 ms when one thread drives pyghmi's event loop, while pyghmi used from several threads
stalls about a second per call and forking ``ipmitool`` costs about 28 ms per command. So:

* all pyghmi use in a process goes through ``run_jobs`` under one lock, never from several threads;
* ``run_jobs`` drives many BMCs at once: it starts logins asynchronously (``onlogon`` callbacks) and
  sends each job's next command from its own loop once the previous answer is in, all multiplexed on
  pyghmi's loop, with a deadline per job (``BmcAccess.timeout``), so one dead BMC costs its timeout
  and nobody else's time;
* nothing here lets pyghmi wait on its loop for one session: a command is sent only on a session with
  none in flight, and a session is let go (``_release``) without waiting for its unanswered command;
* sessions are kept (keyed by BMC and user) and reused until idle for ``SESSION_IDLE_LIMIT`` seconds,
  so the periodic power sync pays the login once, not every minute;
* logins are asynchronous to the end (``_LoopSession``): pyghmi's own last login step blocks the loop;
* pyghmi's I/O thread reads without ever waiting (``pyghmi_io``): its reader raced with its writer.

Errors: no answer before the deadline -> BmcUnreachable; password or user refused -> BmcAuthFailed;
completion code != 0 -> BmcCommandFailed; a boot device/mode the BMC refuses -> UnsupportedOperation.
Messages name the BMC by ``access.label`` and the user, never the password.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import pyghmi.exceptions as pyghmi_exc
import pyghmi.ipmi.private.session as ipmisession
import pyghmi.ipmi.private.util as ipmiutil

from provisioner.drivers import pyghmi_io
from provisioner.drivers.base import (
    BmcAccess,
    BootDevice,
    BootMode,
    BootSetting,
    NodeRecord,
    PowerDriver,
    PowerState,
)
from provisioner.drivers.limits import DEFAULT_LIMITS, BmcLimits
from provisioner.errors import (
    BmcAuthFailed,
    BmcCommandFailed,
    BmcTimeout,
    BmcUnreachable,
    DriverError,
    InvalidNodeData,
    UnsupportedOperation,
)

log = logging.getLogger(__name__)

pyghmi_io.install()

SESSION_IDLE_LIMIT = 25.0  # below the usual 30-60 s BMC session timeout and pyghmi's 29 s keepalive
LOOP_TICK = 0.05

NETFN_APP = 0x06
CMD_SET_SESSION_PRIVILEGE = 0x3B
CC_PRIVILEGE_REFUSED = (0x80, 0x81)  # "not available" / "exceeds the user's or channel's limit"
PRIV_ADMINISTRATOR, PRIV_OPERATOR = 4, 3
NETFN_CHASSIS = 0x00
CMD_CHASSIS_STATUS = 0x01
CMD_CHASSIS_CONTROL = 0x02
CMD_SET_BOOT_OPTIONS = 0x08
CMD_GET_BOOT_OPTIONS = 0x09
CONTROL_OFF, CONTROL_ON, CONTROL_RESET, CONTROL_SOFT_OFF = 0, 1, 3, 5
BOOT_PARAM_FLAGS = 5
BOOT_PARAM_VALID_BIT_CLEARING, KEEP_VALID_BIT = 3, 0x08  # "don't clear the valid bit on the 60 s timeout"
BOOT_FLAGS_VALID, BOOT_FLAGS_PERSISTENT, BOOT_FLAGS_EFI = 0x80, 0x40, 0x20
SELECTOR_BY_DEVICE = {BootDevice.PXE: 1, BootDevice.DISK: 2}
DEVICE_BY_SELECTOR = {v: k for k, v in SELECTOR_BY_DEVICE.items()}
CC_INVALID_DATA, CC_INVALID_COMMAND, CC_PARAM_UNSUPPORTED = 0xCC, 0xC1, 0x80

# one thread at a time drives pyghmi's process-global event loop
_LOOP_LOCK = threading.RLock()


class _LoopSession(ipmisession.Session):  # type: ignore[misc]
    """pyghmi's client session, with the last login step asynchronous like the others.

    After RAKP 4 pyghmi sends Set Session Privilege Level *synchronously*, from inside the packet
    handler: the shared event loop then serves that one session until it answers, and pyghmi's
    directed wait often misses an answer that arrived before it started waiting, so it sleeps out
    the retry timer (0.5-1 s). During a cold sweep of 200 BMCs these nested waits added up to 2-8 s,
    and up to 30 s once a BMC stopped answering; meanwhile the other logins' RAKP timers expired,
    pyghmi restarted those logins from the same UDP port, and (see lab/bmc_ipmi.py) the
    lab BMC process dropped every session from that port. Here the request goes out with a callback
    and the login completes when it answers, so one slow BMC delays nobody else.
    """

    privlevel: int  # set by pyghmi's __init__ and login
    logging: bool

    def _req_priv_level(self) -> None:
        self.logged = 1
        self.logoutexpiry = None
        self.maxtimeout = 4  # as pyghmi: recover by re-login quickly
        self.logontries = 1
        # the privilege request is this session's only command; a re-login resends it itself
        self.onlogpayload = None
        self._send_priv_request()

    def _send_priv_request(self) -> None:
        self.incommand = False
        self.raw_command(
            netfn=NETFN_APP,
            command=CMD_SET_SESSION_PRIVILEGE,
            data=[self.privlevel],
            callback=self._got_priv_level,
        )

    def _got_priv_level(self, response: dict[str, Any]) -> None:
        self.incommand = False
        while self.evq:
            self.evq.popleft().set()
        if not self.logging:  # a late or duplicate answer: the login already ended
            return
        code = response.get("code", 0)
        if "error" not in response and code in CC_PRIVILEGE_REFUSED and self.privlevel == PRIV_ADMINISTRATOR:
            self.privlevel = PRIV_OPERATOR  # as pyghmi: some BMCs only refuse administrator here
            self._send_priv_request()
            return
        if "error" in response or code:
            self.logged = 0
            self.logging = False
            suffix = f" while requesting privilege level {self.privlevel}"
            self.onlogon({"error": ipmiutil.get_ipmi_error(response, suffix=suffix)})
            return
        self.logging = False
        with ipmiutil.protect(ipmisession.KEEPALIVE_SESSIONS):
            ipmisession.Session.keepalive_sessions[self] = {
                "ipmisession": self,
                # pyghmi keeps its own clock (os.times), not time.monotonic
                "timeout": ipmiutil._monotonic_time() + ipmisession.MAX_IDLE - random.random() * 4.9,
            }
        # tell the waiters on the loop's next turn: pyghmi is still inside this answer's handler, and
        # after this callback returns it forgets the request entry of any command sent from it
        ipmisession.Session.iterwaiters.append(self.onlogon)


@dataclasses.dataclass(frozen=True)
class IpmiCommand:
    netfn: int
    command: int
    data: tuple[int, ...] = ()


@dataclasses.dataclass
class _KeptSession:
    session: Any
    last_used: float


_SESSIONS: dict[tuple[str, int, str, str], _KeptSession] = {}


def _session_key(access: BmcAccess) -> tuple[str, int, str, str]:
    # a digest, not the password: the key may end up in a debugger or a repr
    return (
        access.address,
        access.port,
        access.username,
        hashlib.sha256(access.password.encode()).hexdigest(),
    )


@dataclasses.dataclass(eq=False)
class IpmiJob:
    """Commands to run in order on one BMC. After ``run_jobs``: ``responses`` or ``error``."""

    access: BmcAccess
    commands: Sequence[IpmiCommand]
    responses: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    error: DriverError | None = None
    duration: float = 0.0
    _deadline: float = 0.0
    _started: float = 0.0
    _session: Any = None
    _done: bool = False
    # the session is logged in and the last answer is in: the loop sends the next command (or finishes)
    _due: bool = False

    def finish(self, error: DriverError | None = None) -> None:
        if not self._done:
            self._done = True
            self.error = error
            self.duration = time.monotonic() - self._started


def _login_error(access: BmcAccess, message: str) -> DriverError:
    lowered = message.lower()
    who = f"{access.label} (user {access.username!r})"
    if "password" in lowered or "unauthorized name" in lowered or "rakp" in lowered or "privilege" in lowered:
        return BmcAuthFailed(f"{who} refused the credentials ({message}); check the BMC user and password")
    if "cipher suite" in lowered:
        return BmcCommandFailed(
            f"{who} offers no cipher suite we support ({message}); enable cipher suite 3 or 17",
            retryable=False,
        )
    if "timeout" in lowered or "no longer connected" in lowered or "failed to initialize" in lowered:
        return _unreachable(access)
    return BmcCommandFailed(f"{who}: IPMI session failed ({message})")


def _unreachable(access: BmcAccess) -> BmcUnreachable:
    return BmcTimeout(
        f"{access.label} did not answer within {access.timeout:.1f} s; check the BMC's network and power "
        "(the node's power state is unknown until it answers)"
    )


def _cached_session(access: BmcAccess) -> Any:
    kept = _SESSIONS.get(_session_key(access))
    if kept is None:
        return None
    session = kept.session
    idle = time.monotonic() - kept.last_used
    if session.broken or not session.logged or idle > SESSION_IDLE_LIMIT:
        _drop_session(access)
        return None
    return session


def _forget(session: Any) -> None:
    """Remove a dead session from pyghmi's table of logins in progress.

    pyghmi adds each new session to ``Session.initting_sessions`` keyed with the password as given
    (str) but removes it with the password encoded (bytes), so the entry stays; the next Session() for
    the same BMC and user would then be handed the dead object and never log in.
    """
    for key, value in list(ipmisession.Session.initting_sessions.items()):
        if value is session:
            del ipmisession.Session.initting_sessions[key]


def _release(session: Any, label: str, *, logout: bool) -> None:
    """Let go of a pyghmi session without waiting: log out (``logout``) or just stop its retries.

    Both pyghmi paths send Close Session through ``raw_command``, which first waits on the shared loop
    until the session's command in flight is answered or its retries run out (``_cmdwait``): up to
    ~20 s for a BMC that went silent, during which no other BMC is served. Traced in a cold sweep of a
    group: the sweep took 24.5 s, 17.6 s of it inside _abandon -> _mark_broken -> logout -> _cmdwait
    for one silent BMC. Nobody waits for that command's answer any more, so forget it first.
    """
    _forget(session)
    if session.broken:
        return
    session.incommand = False
    session.lastpayload = None  # else Close Session queues behind the unanswered command, never sent
    while session.evq:
        session.evq.popleft().set()
    try:
        if logout and session.logged:
            session.logout()  # Close Session goes out once (retry=False); pyghmi drops the session
        else:
            session._mark_broken()
    except Exception:  # a session already half torn down by pyghmi: nothing left to release
        log.debug("ignoring error while closing the session with %s", label, exc_info=True)


def _drop_session(access: BmcAccess, *, logout: bool = True) -> None:
    kept = _SESSIONS.pop(_session_key(access), None)
    if kept is not None:
        _release(kept.session, access.label, logout=logout)


def _abandon(job: IpmiJob) -> None:
    """Stop pyghmi retrying for a job that ran past its deadline; its session is not reused."""
    _drop_session(job.access, logout=False)
    if job._session is not None:
        _release(job._session, job.access.label, logout=False)


def _send_next(job: IpmiJob) -> None:
    """Send the job's next command, or finish it after the last answer. Called from ``run_jobs``'s own
    loop only, on a session with no command in flight (see ``_send_due``)."""
    job._due = False
    index = len(job.responses)
    if index == len(job.commands):
        kept = _SESSIONS.get(_session_key(job.access))
        if kept is not None:
            kept.last_used = time.monotonic()
        job.finish()
        return
    cmd = job.commands[index]
    session = job._session

    def on_response(response: dict[str, Any]) -> None:
        # pyghmi leaves this to callers that pass a callback (see Session._keepalive_wrapper)
        session.incommand = False
        while session.evq:
            session.evq.popleft().set()
        if job._done:
            return
        if "error" in response and response.get("code") == 0xFFFF:
            job.finish(_unreachable(job.access))
            _abandon(job)
            return
        job.responses.append(response)
        # not _send_next here: this runs inside pyghmi's packet handler, which after we return drops
        # the request entry of whatever command is then current, so the next command's answer would
        # be discarded as unsolicited and the job would time out
        job._due = True

    try:
        session.raw_command(netfn=cmd.netfn, command=cmd.command, data=cmd.data, callback=on_response)
    except pyghmi_exc.IpmiException as err:
        _abandon(job)
        job.finish(_login_error(job.access, str(err)))


def _start(job: IpmiJob) -> None:
    job._started = time.monotonic()
    job._deadline = job._started + job.access.timeout
    session = _cached_session(job.access)
    if session is not None:
        job._session = session
        job._due = True
        return

    def on_logon(result: dict[str, Any]) -> None:
        if job._done:
            return
        if "error" in result:
            _forget(job._session)
            job.finish(_login_error(job.access, str(result["error"])))
            return
        _SESSIONS[_session_key(job.access)] = _KeptSession(job._session, time.monotonic())
        job._due = True

    try:
        job._session = _LoopSession(
            bmc=job.access.address,
            userid=job.access.username,
            password=job.access.password,
            port=job.access.port,
            onlogon=on_logon,
        )
    except pyghmi_exc.IpmiException as err:
        job.finish(_login_error(job.access, str(err)))
    except OSError as err:
        job.finish(BmcUnreachable(f"{job.access.label}: cannot send to the BMC ({err.strerror})"))


def _send_due(jobs: Sequence[IpmiJob]) -> None:
    """Send the next command of each job whose session is ready for it.

    A session still busy with another command (pyghmi's keepalive, or another job for the same BMC)
    waits for a later turn of the loop: pyghmi's raw_command would otherwise wait for it on the loop.
    """
    for job in jobs:
        if job._due and not job._done and not job._session._isincommand():
            _send_next(job)


def run_jobs(jobs: Sequence[IpmiJob], *, max_in_flight: int = 64) -> None:
    """Run every job, at most ``max_in_flight`` BMCs at a time, each bounded by its access.timeout.

    Never raises for a BMC's failure: each job ends with ``responses`` or a typed ``error``.
    """
    with _LOOP_LOCK:
        queue = list(jobs)
        queue.reverse()
        active: list[IpmiJob] = []
        while queue or active:
            while queue and len(active) < max_in_flight:
                job = queue.pop()
                _start(job)
                if not job._done:
                    active.append(job)
            if not active:
                continue
            _send_due(active)
            now = time.monotonic()
            for job in active:
                if not job._done and now >= job._deadline:
                    job.finish(_unreachable(job.access))
                    _abandon(job)
            active = [j for j in active if not j._done]
            if active:
                next_deadline = min(j._deadline for j in active)
                try:
                    ipmisession.Session.wait_for_rsp(
                        max(0.0, min(LOOP_TICK, next_deadline - time.monotonic()))
                    )
                except pyghmi_exc.IpmiException:
                    # raised from inside a login step; pyghmi has marked that session broken and told
                    # its job through on_logon, so the other BMCs carry on
                    log.debug("pyghmi login step failed", exc_info=True)
                active = [j for j in active if not j._done]


def _check(access: BmcAccess, response: dict[str, Any], what: str) -> dict[str, Any]:
    code = response.get("code", 0)
    if code:
        raise BmcCommandFailed(f"{access.label} refused {what} (IPMI completion code 0x{code:02x})")
    return response


class IpmiPowerDriver(PowerDriver):
    """PowerDriver over IPMI 2.0 lanplus (pyghmi). Thread-safe; calls are serialized per process."""

    def __init__(self, access: BmcAccess, limits: BmcLimits = DEFAULT_LIMITS) -> None:
        super().__init__(access)
        self.limits = limits

    # IPMI 2.0's session user name field (RAKP message 1) holds 16 bytes; pyghmi refuses a longer name only
    # once it tries to log in.
    MAX_USERNAME_BYTES = 16

    @classmethod
    def validate(cls, node: NodeRecord) -> None:
        """The BMC record (the base rules) and a user name IPMI can send. No I/O.

        :raises InvalidNodeData: naming the field.
        """
        super().validate(node)
        size = len((node.bmc_username or "").encode())
        if size > cls.MAX_USERNAME_BYTES:
            raise InvalidNodeData(
                node.name,
                "bmc_credential",
                f"the BMC user name has {size} bytes; IPMI sends at most {cls.MAX_USERNAME_BYTES}",
            )

    def _run(self, *commands: IpmiCommand) -> list[dict[str, Any]]:
        with self.limits.slot(self.access.label, self.access.timeout):
            job = IpmiJob(self.access, commands)
            run_jobs([job])
        if job.error is not None:
            raise job.error
        return job.responses

    def _control(self, directive: int, what: str) -> None:
        (response,) = self._run(IpmiCommand(NETFN_CHASSIS, CMD_CHASSIS_CONTROL, (directive,)))
        if response.get("code") in (CC_INVALID_DATA, CC_INVALID_COMMAND):
            raise UnsupportedOperation(f"{self.access.label} does not support {what}")
        _check(self.access, response, what)

    def get_power_state(self) -> PowerState:
        """Read the chassis power state. Idempotent.

        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        """
        (response,) = self._run(IpmiCommand(NETFN_CHASSIS, CMD_CHASSIS_STATUS))
        return parse_chassis_status(self.access, response)

    def power_on(self) -> None:
        """Chassis power on. Idempotent. :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:"""
        self._control(CONTROL_ON, "power on")

    def power_off(self, *, soft: bool = False) -> None:
        """Hard power off, or ACPI soft-off when ``soft``. Idempotent.

        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        :raises UnsupportedOperation: the BMC refuses soft-off.
        """
        self._control(CONTROL_SOFT_OFF if soft else CONTROL_OFF, "soft power off" if soft else "power off")

    def reset(self) -> None:
        """Hard reset when on, power on when off. Not idempotent (each call reboots).

        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        """
        if self.get_power_state() == PowerState.OFF:
            self.power_on()
        else:
            self._control(CONTROL_RESET, "power reset")

    def set_boot_device(self, setting: BootSetting) -> None:
        """Set boot flags (parameter 5): device, once or persistent, UEFI or legacy. Idempotent.

        :raises UnsupportedOperation: the BMC refuses the device or mode (completion code 0xcc).
        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        """
        selector = SELECTOR_BY_DEVICE.get(setting.device)
        if selector is None:
            raise UnsupportedOperation(f"IPMI has no boot device {setting.device!r}")
        flags = BOOT_FLAGS_VALID
        if setting.persistent:
            flags |= BOOT_FLAGS_PERSISTENT
        if setting.mode == BootMode.UEFI:
            flags |= BOOT_FLAGS_EFI
        data = (BOOT_PARAM_FLAGS, flags, selector << 2, 0, 0, 0)
        # First parameter 3: keep the flag past the BMC's 60 s timer (IPMI 2.0 sec. 28.12), as Ironic does:
        # a power command more than 60 s later (a slow step, a retry) would otherwise boot the old device.
        # A BMC without parameter 3 refuses it; the flag is then set all the same.
        keep, response = self._run(
            IpmiCommand(NETFN_CHASSIS, CMD_SET_BOOT_OPTIONS, (BOOT_PARAM_VALID_BIT_CLEARING, KEEP_VALID_BIT)),
            IpmiCommand(NETFN_CHASSIS, CMD_SET_BOOT_OPTIONS, data),
        )
        if keep.get("code") or "error" in keep:
            log.debug("%s keeps its 60 s boot flag timer: %s", self.access.label, keep)
        if response.get("code") in (CC_INVALID_DATA, CC_PARAM_UNSUPPORTED):
            raise UnsupportedOperation(
                f"{self.access.label} does not support booting {setting.device.value} in "
                f"{setting.mode.value} mode"
            )
        _check(self.access, response, "set boot device")

    def get_boot_device(self) -> BootSetting:
        """Read boot flags back. Idempotent.

        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        :raises UnsupportedOperation: the BMC reports a device this driver does not model.
        """
        (response,) = self._run(IpmiCommand(NETFN_CHASSIS, CMD_GET_BOOT_OPTIONS, (BOOT_PARAM_FLAGS, 0, 0)))
        data = _check(self.access, response, "get boot device")["data"]
        if len(data) < 4:
            raise BmcCommandFailed(f"{self.access.label} sent a short boot-flags answer")
        flags = data[2]
        device = DEVICE_BY_SELECTOR.get((data[3] >> 2) & 0x0F)
        if not flags & BOOT_FLAGS_VALID or device is None:
            raise UnsupportedOperation(
                f"{self.access.label} reports boot selector 0x{(data[3] >> 2) & 0x0F:x}, neither PXE nor disk"
            )
        return BootSetting(
            device,
            persistent=bool(flags & BOOT_FLAGS_PERSISTENT),
            mode=BootMode.UEFI if flags & BOOT_FLAGS_EFI else BootMode.LEGACY,
        )

    def close(self) -> None:
        """Log out of the kept session with this BMC. Idempotent."""
        with _LOOP_LOCK:
            _drop_session(self.access)


def parse_chassis_status(access: BmcAccess, response: dict[str, Any]) -> PowerState:
    data = _check(access, response, "chassis status")["data"]
    if not data:
        raise BmcCommandFailed(f"{access.label} sent an empty chassis status")
    return PowerState.ON if data[0] & 0x01 else PowerState.OFF


def ipmi_power_states(accesses: Sequence[BmcAccess], *, max_in_flight: int) -> list[IpmiJob]:
    """Read the power state of many IPMI BMCs concurrently on pyghmi's loop (see sweep.py)."""

    def status_jobs(targets: Sequence[BmcAccess]) -> list[IpmiJob]:
        return [IpmiJob(a, (IpmiCommand(NETFN_CHASSIS, CMD_CHASSIS_STATUS),)) for a in targets]

    jobs = status_jobs(accesses)
    run_jobs(jobs, max_in_flight=max_in_flight)
    # A BMC that silently dropped a kept session answers a fresh login: one more try for the silent ones
    # (their sessions were abandoned), so a stale session is never reported as an unreachable BMC.
    silent = [i for i, job in enumerate(jobs) if isinstance(job.error, BmcUnreachable)]
    if silent:
        retried = status_jobs([jobs[i].access for i in silent])
        run_jobs(retried, max_in_flight=max_in_flight)
        for i, job in zip(silent, retried, strict=True):
            jobs[i] = job
    return jobs
