"""Deploy, handover, wipe and burn-in as Ansible playbooks (playbooks/*.yml) run through ansible-runner.

These are the real paths: the BMC is driven through our drivers (the neocloud_bmc module), the node
network-boots and runs the real deploy agent, and handover and burn-in run over real SSH on the node.
What differs per node (its OS's Python, a simulated burn-in and its timings, as the lab's servers have) is
node data recorded at enrollment, its driver_info (see driver_info.py): the playbooks take it as variables.

Where SSH reaches a node is node data: its inventory SSH endpoint (a port forward on the site's gateway),
else its primary address on port 22. Provisioning waits for that endpoint, records it as the node's
ssh_address/ssh_port with known_hosts lines in OpenSSH's ``[host]:port`` form off port 22, and Ansible,
the handover's checks and the customer use what was recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import socket
import time
from typing import Any

from django.conf import settings
from django.utils import timezone

from provisioner.boot import fast_track
from provisioner.boot.cabling import MISMATCH, UNCONFIRMED, cabling_problem, describe_heard
from provisioner.boot.reports import ReportError, verify_deployed
from provisioner.boot.tickets import open_ticket
from provisioner.burnin.bundle import build_bundle
from provisioner.drivers.ansible.driver_info import AnsibleNodeInfo
from provisioner.drivers.ansible.runner import PlaybookFailed, local_host, run_playbook, ssh_host, untemplated
from provisioner.drivers.base import (
    BmcAccess,
    BurnInDriver,
    DeployDriver,
    DeployRequest,
    DeployResult,
    HandoverRequest,
    HandoverResult,
    PersonalizeRequest,
)
from provisioner.errors import (
    CablingMismatch,
    DeployFailed,
    DriverError,
    ImageChecksumMismatch,
    NvmlUnavailable,
)
from provisioner.models import BmcCallErrors, DeployTicket, Node, Operation
from provisioner.sshkeys import ssh_command

LAB_PREFIX = 15  # lab addresses live in 198.18.0.0/15


def _cancel_event(log: Any) -> Any:
    return getattr(log, "cancelled", None)


def _operation(request_extra: dict[str, Any]) -> Operation:
    return Operation.objects.get(pk=request_extra["operation_id"])


def _agent_failure(result: dict[str, Any]) -> DriverError:
    """The deploy agent's failed result as the engine's error (a checksum mismatch is not retried)."""
    if result.get("error_code") == "image_checksum_mismatch":
        return ImageChecksumMismatch(f"deploy agent: {result.get('message')}")
    if result.get("error_code") in (MISMATCH, UNCONFIRMED):
        # the boot service's own sentence, naming what LLDP heard and what is recorded: not retried
        return CablingMismatch(str(result.get("message")))
    return DeployFailed(f"deploy agent: {result.get('message')}", retryable=True)


def bmc_access_file(access: BmcAccess) -> str:
    """The BMC access (credentials included) for the neocloud_bmc module, as the private file it reads."""
    return json.dumps(dataclasses.asdict(access))


def _run_bmc_playbook(node: Node, playbook: str, ctx: Any) -> None:
    """netboot.yml, boot_disk.yml or power_off_disk.yml: BMC actions only, done in seconds."""
    access = node.bmc_access()
    try:
        run_playbook(
            playbook,
            host=node.name,
            hostvars=local_host(),
            files={"bmc": bmc_access_file(access)},
            secrets=[access.password],
            log=ctx,
            cancel=_cancel_event(ctx),
        )
    except PlaybookFailed as exc:
        for kind in exc.bmc_error_kinds:  # the module's failed BMC call, counted as the engine's own are
            BmcCallErrors.objects.add(access.protocol, kind)
        raise DeployFailed(str(exc), retryable=exc.retryable)
    # the modules report to us, not to the database: record that the BMC answered (it did, the run passed)
    now = timezone.now()
    Node.objects.filter(pk=node.pk).update(bmc_last_contact_at=now, power_checked_at=now)


def _netboot_with_ticket(node: Node, op: Operation, instructions: dict[str, Any], ctx: Any) -> DeployTicket:
    """Open this attempt's ticket (recorded in the step's data first, so that a wait finds it) and boot the
    node into the deploy ramdisk, which fetches the instructions and reports to the boot service."""
    ticket = open_ticket(node, op, instructions)
    ctx.save_data(ticket=ticket.pk, phase="agent")
    _netboot(node, ctx)
    ctx.log(f"{node.name} is booting the deploy ramdisk (ticket {ticket.pk})")
    return ticket


def _netboot(node: Node, ctx: Any) -> None:
    """Power cycle the node into the deploy ramdisk (an agent still up in it is killed: no fast-track)."""
    fast_track.end(node.pk)
    _run_bmc_playbook(node, "netboot.yml", ctx)


def _hand_to_running_agent(node: Node, op: Operation, instructions: dict[str, Any], ctx: Any) -> bool:
    """Fast-track: when the agent that wiped ``node`` still heartbeats, open this attempt's ticket for it to
    take at its next heartbeat, with no power cycle (no firmware self-test, no ramdisk boot). False (nothing
    done) when the node is not fast-tracked."""
    if not fast_track.is_fast_tracked(node):
        return False
    ticket = open_ticket(node, op, instructions)
    ctx.save_data(ticket=ticket.pk, phase="agent", fast_track=True)
    ctx.log(
        f"fast-track: the deploy agent on {node.name} is up and heartbeating; it takes ticket {ticket.pk} "
        "at its next heartbeat (no power cycle)"
    )
    return True


def _fall_back_to_netboot(node: Node, ctx: Any) -> None:
    """A fast-track deploy whose agent stopped heartbeating before it took the ticket: boot the node into
    the ramdisk the cold way; the open ticket is served to its PXE boot."""
    ticket = DeployTicket.objects.get(pk=ctx.data["ticket"])
    if ticket.script_served_at is not None or fast_track.is_fast_tracked(node):
        return
    ctx.log(f"fast-track: the agent on {node.name} stopped heartbeating; booting it into the ramdisk")
    ctx.save_data(fast_track=False)
    _netboot(node, ctx)


def _agent_result(
    ctx: Any, what: str, timeout: float, *, stall_timeout: float | None = None
) -> dict[str, Any]:
    """The agent's result for this attempt's ticket, or park until the agent reports (the boot service
    wakes the operation) or the recheck comes. With ``stall_timeout``, the wait fails once the agent has
    reported no new progress for that long (a wipe of a large disk may take hours while it progresses)."""
    ticket = DeployTicket.objects.get(pk=ctx.data["ticket"])
    if ticket.result_at is not None:
        result = ticket.result or {}
        if "lldp" in result:
            ctx.log(describe_heard(result["lldp"]))
        if result.get("status") == "ok":
            return result
        if result.get("status") == "superseded":
            raise DeployFailed("a newer deploy of this server replaced this one", retryable=True)
        raise _agent_failure(result)
    recheck = 30.0
    if stall_timeout is not None:
        now = time.time()
        progress = ticket.progress or {}
        if progress != ctx.data.get("progress"):
            ctx.save_data(progress=progress, progress_at=now)
        quiet = now - ctx.data.get("progress_at", now)
        if quiet > stall_timeout:
            raise DeployFailed(
                f"{what}: no progress reported for {quiet:.0f} s (last: {progress or 'none'})", retryable=True
            )
        recheck = min(60.0, stall_timeout / 4)
    if ctx.data.get("fast_track") and ticket.script_served_at is None:
        # looked at again when the agent would have missed its heartbeats (the fall-back to a netboot)
        recheck = min(recheck, fast_track.heartbeat_seconds() * 2)
    ctx.wait(what, timeout=timeout, recheck_every=recheck)
    raise AssertionError("ctx.wait returns only by raising")  # pragma: no cover


def ssh_server_answers(address: str, port: int, timeout: float = 2.0) -> bool:
    """Whether an SSH server answers at address:port with its banner (what Ansible's wait_for with
    search_regex OpenSSH checked): one TCP connection, closed at once."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(256).startswith(b"SSH-")
    except OSError:
        return False


# How long the deployed OS may take from the reset to its SSH server answering (a real GPU server's
# firmware self-test takes minutes), and how long the deploy agent may take to report.
OS_BOOT_TIMEOUT = 600
DEPLOY_AGENT_TIMEOUT = 900


# A wipe overwrites the whole disk: an 8 TB NVMe drive at 2 GB/s takes over an hour, so a wipe may run for
# hours as long as the agent keeps reporting progress (each percent, at least every few seconds), and fails
# after 10 minutes without any. The engine's wipe step allows a little more than the upper bound.
WIPE_TIMEOUT = 6 * 3600
WIPE_STALL_TIMEOUT = 600


class AnsibleDeployDriver(DeployDriver):
    def __init__(self, node: Node) -> None:
        self.node = node
        self.info = AnsibleNodeInfo.of(node)

    @property
    def python(self) -> str:
        return self.info.python

    def _address(self) -> str:
        address = self.node.primary_address
        if not address:
            raise DeployFailed(
                f"{self.node.name} has no primary address to configure (set it in the inventory)"
            )
        return address

    def _ssh_endpoint(self, address: str) -> tuple[str, int]:
        """Where SSH reaches the deployed node: its inventory endpoint (a gateway's port forward), else
        ``address`` (the one the agent configures), port 22."""
        return (self.node.ssh_endpoint_address or address, self.node.ssh_endpoint_port)

    @classmethod
    def validate(cls, node: Any) -> None:
        """Check a node's record (a ``drivers.base.NodeRecord``) for what this deploy needs besides the base
        rules: the primary address the deploy agent configures on the server (a wipe needs none). No I/O.

        :raises InvalidNodeData: naming the field.
        """
        from provisioner.errors import InvalidNodeData

        super().validate(node)
        if node.deploys and not node.primary_address:
            raise InvalidNodeData(
                node.name,
                "primary_address",
                "no primary address is recorded; the deploy configures the server's network with it "
                "(set the node's address in the inventory or NetBox)",
            )

    @classmethod
    def image_problem(cls, image: Any) -> str:
        """Besides the base rule: the deploy agent streams the image over HTTP(S), writes raw images only,
        and checks the size it wrote. Pure."""
        from urllib.parse import urlsplit

        problem = super().image_problem(image)
        if problem:
            return problem
        if urlsplit(image.url).scheme not in ("http", "https"):
            return "has no http(s) URL for the deploy agent to stream it from"
        if image.format != "raw":
            return f"is {image.format}; the deploy agent writes raw images only"
        if not image.size_bytes or image.size_bytes <= 0:
            return "has no size; the deploy agent checks the size it wrote"
        return ""

    def deploy(self, request: DeployRequest, log: Any) -> DeployResult:
        from provisioner.handover import known_hosts_name

        address = self._address()
        ssh_address, ssh_port = self._ssh_endpoint(address)
        instructions = {
            "action": "deploy",
            "node": request.node_name,
            "image": {
                "url": request.image_url,
                "sha256": request.image_sha256,
                "format": request.image_format,
                "size": request.extra.get("image_size"),
            },
            "config": {
                "hostname": request.hostname,
                "authorized_keys": [*request.authorized_keys, request.provisioning_public_key],
                "network": {"address": address, "prefix": LAB_PREFIX},
            },
        }
        if request.private_network:
            instructions["config"]["private_network"] = dict(request.private_network)  # type: ignore[index]
        ctx = log
        phase = ctx.data.get("phase")
        if phase is None:
            op = _operation(request.extra)
            if not _hand_to_running_agent(self.node, op, instructions, ctx):
                _netboot_with_ticket(self.node, op, instructions, ctx)
            phase = "agent"
        if phase == "agent":
            if ctx.data.get("fast_track"):
                _fall_back_to_netboot(self.node, ctx)
            result = _agent_result(ctx, "the deploy agent", DEPLOY_AGENT_TIMEOUT)
            # The boot service checked the cabling before the agent wrote; checked again here for an agent
            # that never asked (the node must not boot its OS, let alone reach handover, on the wrong port).
            mis_cabled = cabling_problem(Node.objects.get(pk=self.node.pk), result.get("lldp"))
            if mis_cabled is not None:
                raise CablingMismatch(mis_cabled[1])
            try:
                host_keys, fingerprints = verify_deployed(
                    result, request.image_sha256, request.extra.get("image_size")
                )
            except ReportError as exc:
                raise DeployFailed(f"the deploy agent on {self.node.name}: {exc}") from None
            ctx.save_data(phase="os", host_keys=host_keys, fingerprints=fingerprints)
            _run_bmc_playbook(self.node, "boot_disk.yml", ctx)
        if not ssh_server_answers(ssh_address, ssh_port):
            what = "the deployed OS's SSH server"
            # looked at often at first (a lab server boots in a second), then every 10 s at most
            since = ctx.data.get("_waits", {}).get(what)
            waited = (timezone.now() - dt.datetime.fromisoformat(since)).total_seconds() if since else 0
            ctx.wait(what, timeout=OS_BOOT_TIMEOUT, recheck_every=min(10.0, max(0.5, waited / 4)))
        host_keys, fingerprints = ctx.data["host_keys"], ctx.data["fingerprints"]
        host = known_hosts_name(ssh_address, ssh_port)
        known_hosts = "\n".join(f"{host} {line.split()[0]} {line.split()[1]}" for line in host_keys.values())
        return DeployResult(
            address=ssh_address,
            ssh_port=ssh_port,
            host_key_fingerprints=fingerprints,
            known_hosts=known_hosts,
        )

    def personalize(self, request: PersonalizeRequest, log: Any) -> DeployResult:
        """A warm server made its customer's over one SSH session (strict host-key checking against the
        warm-time keys): new host keys generated on the server over every ``HostKey`` its sshd reads, the
        customer's keys appended to the file sshd reads them from, sshd told to reload (SIGHUP: it
        re-executes and reads the new keys; the session it serves goes on). The new keys are then read
        back from outside and must be the ones generated."""
        import shlex

        from provisioner.boot.reports import ReportError, _host_key_blob
        from provisioner.handover import known_hosts_name, run_command, scan_host_keys
        from provisioner.sshkeys import fingerprint_sha256

        keys = "".join(f"printf '%s\\n' {shlex.quote(key)} >> \"$keys\"\n" for key in request.customer_keys)
        script = PERSONALIZE_SCRIPT.replace("@CUSTOMER_KEYS@", keys + _private_network_script(request))
        status, out, err = run_command(
            request.address,
            request.port,
            request.username,
            request.provisioning_private_key,
            request.expected_fingerprints,
            f"sh -c {shlex.quote(script)}",
            60,
        )
        if status != 0:
            raise DriverError(
                f"new host keys for {request.node_name} failed (exit {status}): {err.strip()[-300:]}",
                retryable=True,
            )
        publics = {line.split()[0]: line.strip() for line in out.splitlines() if line.strip()}
        try:
            prints = {kind: fingerprint_sha256(_host_key_blob(kind, line)) for kind, line in publics.items()}
        except ReportError as exc:
            raise DriverError(f"new host keys for {request.node_name}: {exc}") from None
        if not prints or set(prints.values()) & set(request.expected_fingerprints.values()):
            raise DriverError(f"{request.node_name} did not generate new host keys", retryable=True)
        deadline = time.monotonic() + 15
        while True:  # sshd re-executes on SIGHUP: the new keys are served a moment later
            try:
                scanned = scan_host_keys(request.address, request.port, prints)
                break
            except DriverError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if {k.fingerprint for k in scanned} != set(prints.values()):
            raise DriverError(
                f"{request.node_name} does not serve the host keys it generated", retryable=True
            )
        host = known_hosts_name(request.address, request.port)
        on_network = (
            f"; on its private network at {request.private_network['address']}"
            if request.private_network
            else ""
        )
        log(
            f"{request.node_name}: new host keys {', '.join(prints.values())}; the customer's keys installed"
            f"{on_network}"
        )
        return DeployResult(
            address=request.address,
            ssh_port=request.port,
            host_key_fingerprints=prints,
            known_hosts="\n".join(f"{host} {' '.join(line.split()[:2])}" for line in publics.values()),
        )

    def handover(self, request: HandoverRequest, log: Any) -> HandoverResult:
        host = ssh_host(
            request.address,
            request.port,
            request.username,
            self.python,
            customer_keys=untemplated(request.customer_keys),
            provisioning_public_key=untemplated(request.provisioning_public_key),
        )
        known_hosts = Node.objects.get(pk=self.node.pk).known_hosts
        try:
            run_playbook(
                "handover.yml",
                host=request.node_name,
                hostvars=host,
                files={
                    "provisioning_key": request.provisioning_private_key,
                    "known_hosts": known_hosts + "\n",
                },
                secrets=[request.provisioning_private_key],
                log=log,
                cancel=_cancel_event(log),
            )
        except PlaybookFailed as exc:
            if "Permission denied" in str(exc) and self._already_handed_over(request):
                log("the provisioning key was already removed by an earlier attempt; host keys verified")
            else:
                raise DriverError(f"handover of {request.node_name} failed: {exc}", retryable=exc.retryable)
        self._check_provisioning_key_refused(request)
        log(f"verified from outside: {request.address} refuses the provisioning key")
        return HandoverResult(
            host_key_fingerprints=request.expected_fingerprints,
            known_hosts=known_hosts,
            ssh_command=ssh_command(request.username, request.address, request.port),
        )

    @staticmethod
    def _check_provisioning_key_refused(request: HandoverRequest) -> None:
        """Prove from the control plane that the provisioning key no longer logs in (real SSH, strict
        host-key checking). In-process with paramiko: an ansible task for it cost ~0.5 s of CPU per node."""
        from provisioner.handover import SshAuthFailed, connect

        try:
            client = connect(
                request.address,
                request.port,
                request.username,
                request.provisioning_private_key,
                request.expected_fingerprints,
            )
        except SshAuthFailed:
            return
        client.close()
        raise DriverError(f"handover of {request.node_name} failed: the provisioning key still logs in")

    def _already_handed_over(self, request: HandoverRequest) -> bool:
        """A retried handover whose first attempt removed our key: the node must still show exactly the
        host keys generated at deploy (scan_host_keys raises on any other key)."""
        from provisioner.handover import scan_host_keys

        try:
            scanned = scan_host_keys(request.address, request.port, request.expected_fingerprints)
        except DriverError:
            return False
        return {k.fingerprint for k in scanned} == set(request.expected_fingerprints.values())

    def wipe(self, node_name: str, log: Any) -> None:
        op = Operation.objects.filter(node=self.node).order_by("-created_at").first()
        if op is None:
            raise DeployFailed(f"wiping {node_name} needs the operation that asked for it")
        ctx = log
        if ctx.data.get("phase") is None:
            instructions = fast_track.erase_instructions(node_name)
            if not _hand_to_running_agent(self.node, op, instructions, ctx):
                _netboot_with_ticket(self.node, op, instructions, ctx)
        if ctx.data["phase"] == "agent":
            if ctx.data.get("fast_track"):
                _fall_back_to_netboot(self.node, ctx)
            result = _agent_result(ctx, "the wipe", WIPE_TIMEOUT, stall_timeout=WIPE_STALL_TIMEOUT)
            erased = result.get("bytes_written")
            if not isinstance(erased, int) or erased <= 0:
                # an "ok" that overwrote nothing (a disk read as empty) is no wipe
                raise DeployFailed(f"the deploy agent on {node_name} reported erasing {erased or 0} bytes")
            ctx.save_data(phase="erased", erased=erased)
        node = Node.objects.get(pk=self.node.pk)
        if node.fast_track_ticket_id == ctx.data["ticket"] and fast_track.is_fast_tracked(node):
            # the agent stays up heartbeating: the next deploy streams without a power cycle
            log(f"{node_name}: {ctx.data['erased']} bytes overwritten; fast-track: its agent stays up")
            return
        _run_bmc_playbook(self.node, "power_off_disk.yml", ctx)
        log(f"{node_name}: {ctx.data['erased']} bytes overwritten")


class AnsibleBurnInDriver(BurnInDriver):
    def __init__(self, node: Node) -> None:
        self.node = node

    def run(self, node_name: str, expectations: Any, log: Any) -> dict[str, Any]:
        node = Node.objects.get(pk=self.node.pk)
        info = AnsibleNodeInfo.of(node)
        load_seconds, xid_wait = info.load_seconds, info.burnin_xid_wait_seconds
        if expectations.get("profile") == "short":
            # a warm server's health re-check before handover: every NVML check, under a brief load
            load_seconds, xid_wait = (
                min(load_seconds, SHORT_LOAD_SECONDS),
                min(xid_wait, SHORT_XID_WAIT_SECONDS),
            )
        host = ssh_host(
            node.ssh_address,
            node.ssh_port,
            node.ssh_user,
            info.python,
            python=info.python,
            backend=info.burnin_backend,
            # the server type's facts are operators' text: data, never templates (as the customer's keys)
            expect=untemplated(expectations["expect"]),
            thresholds=untemplated(expectations.get("thresholds") or {}),
            faults=info.faults(),
            load_seconds=load_seconds,
            xid_wait_seconds=xid_wait,
            sample_interval=min(info.burnin_sample_interval, load_seconds),
        )
        private_key = expectations["provisioning_private_key"]
        files: dict[str, str | bytes] = {
            "provisioning_key": private_key,
            "known_hosts": node.known_hosts + "\n",
        }
        runs_for = load_seconds + xid_wait
        if runs_for > settings.NEOCLOUD_BURNIN_DETACH_AFTER_SECONDS:
            return self._run_detached(node, host, files, private_key, runs_for, log)
        result = self._playbook(
            "burnin.yml", node, host, {**files, "burnin_agent": build_bundle()}, private_key, log
        )
        return self._report(node_name, result.last("Run the burn-in checks under load"))

    @staticmethod
    def _could_not_run(node_name: str, exc: PlaybookFailed) -> DriverError:
        if "nvml_unavailable" in str(exc) or "NVML not available" in str(exc):
            return NvmlUnavailable(f"{node_name}: NVML not available on the server; burn-in cannot run")
        return DriverError(f"burn-in on {node_name} could not run: {exc}", retryable=exc.retryable)

    @staticmethod
    def _report(node_name: str, res: dict[str, Any]) -> dict[str, Any]:
        stdout = res.get("stdout", "")
        try:
            return json.loads(stdout)
        except ValueError:
            stderr = str(res.get("stderr", "")).strip()
            raise DriverError(
                f"burn-in on {node_name} printed no JSON report (stdout begins {stdout.strip()[:120]!r}; "
                f"stderr ends {stderr[-300:]!r})"
            )

    def _run_detached(
        self,
        node: Node,
        host: dict[str, Any],
        files: dict[str, str | bytes],
        private_key: str,
        runs_for: float,
        ctx: Any,
    ) -> dict[str, Any]:
        """A long burn-in (a real GPU server's minutes to hours of load): started on the server as an Ansible
        async job, then the step waits (parked, no worker held) and collects the report when it has finished,
        looking again every few minutes at most. The job id is kept in the step's data, so the step run
        again after its wait collects the same run instead of starting another."""
        if "jid" not in ctx.data:
            dest = f"/tmp/neocloud-burnin-{ctx.operation.pk}-{ctx.step.pk}-{ctx.step.attempts}.pyz"
            started = self._playbook(
                "burnin_start.yml",
                node,
                {**host, "burnin_dest": dest, "burnin_timeout": int(runs_for + BURNIN_DETACHED_MARGIN)},
                {**files, "burnin_agent": build_bundle()},
                private_key,
                ctx,
            )
            jid = started.last("Start the burn-in checks under load, detached").get("ansible_job_id")
            if not jid:
                raise DriverError(f"burn-in on {node.name} did not start (no job id)", retryable=True)
            ctx.save_data(jid=jid, dest=dest)
            ctx.log(f"burn-in started on {node.name}, running for about {runs_for:.0f} s (job {jid})")
        collected = self._playbook(
            "burnin_collect.yml",
            node,
            {**host, "burnin_jid": ctx.data["jid"], "burnin_dest": ctx.data["dest"]},
            files,
            private_key,
            ctx,
        ).last("Collect the burn-in report")
        if not collected.get("finished"):
            ctx.wait(
                "the burn-in",
                timeout=runs_for + BURNIN_DETACHED_MARGIN,
                recheck_every=min(300.0, max(5.0, runs_for / 10)),
            )
        return self._report(node.name, collected)

    def _playbook(
        self,
        playbook: str,
        node: Node,
        host: dict[str, Any],
        files: dict[str, str | bytes],
        private_key: str,
        ctx: Any,
    ) -> Any:
        try:
            return run_playbook(
                playbook,
                host=node.name,
                hostvars=host,
                files=files,
                secrets=[private_key],
                log=ctx,
                cancel=_cancel_event(ctx),
            )
        except PlaybookFailed as exc:
            raise self._could_not_run(node.name, exc)


# Run on a warm server as root by DeployDriver.personalize: fresh host keys over the ones sshd reads (its
# HostKey lines, else OpenSSH's defaults), printed; the customer's keys appended to the file sshd reads them
# from (NEOCLOUD_AUTHORIZED_KEYS_FILE where the server says so, as in provisioner.handover); sshd reloaded.
PERSONALIZE_SCRIPT = r"""set -eu
conf="${NEOCLOUD_SSHD_CONFIG:-/etc/ssh/sshd_config}"
keys="${NEOCLOUD_AUTHORIZED_KEYS_FILE:-$HOME/.ssh/authorized_keys}"
paths=$(awk 'tolower($1)=="hostkey"{print $2}' "$conf")
[ -n "$paths" ] || paths="/etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ecdsa_key /etc/ssh/ssh_host_rsa_key"
for path in $paths; do
  case "$path" in
    *ed25519*) set -- -t ed25519 ;;
    *ecdsa*) set -- -t ecdsa -b 256 ;;
    *rsa*) set -- -t rsa -b 3072 ;;
    *) continue ;;
  esac
  rm -f "$path.new" "$path.new.pub"
  ssh-keygen -q -N '' "$@" -C "root@$(hostname)" -f "$path.new" >/dev/null
  mv -f "$path.new.pub" "$path.pub"
  mv -f "$path.new" "$path"
  cat "$path.pub"
done
if [ -s "$keys" ] && [ -n "$(tail -c1 "$keys")" ]; then echo >> "$keys"; fi
@CUSTOMER_KEYS@pidfile=$(awk 'tolower($1)=="pidfile"{print $2}' "$conf")
kill -HUP "$(cat "${pidfile:-/run/sshd.pid}")"
"""

# A warm server's OS booted on the provisioning network before any reservation had it: its tenant address goes
# on the NIC that holds its provisioning address, as the first boot would have put it (lab.os_firstboot): kept
# in the OS's own network configuration first (netplan's directory, NEOCLOUD_NETPLAN_DIR where the server says
# so: the file a cold-deployed server's first boot writes from its config drive, so a reboot brings it up
# again), then applied live: the address with its prefix, the default route via the tenant gateway; the old
# gateway keeps a host route so that this session and the handover after it still reach the server until its
# port moves.
PRIVATE_NETWORK_SCRIPT = r"""dev=$(ip -o -4 addr show | awk -v a=@PROVISIONING@ '{split($4, x, "/"); if (x[1] == a) {print $2; exit}}')
[ -n "$dev" ] || { echo "no interface holds @PROVISIONING@" >&2; exit 3; }
netplan="${NEOCLOUD_NETPLAN_DIR:-/etc/netplan}"
mkdir -p "$netplan"
printf '{"network": {"version": 2, "ethernets": {"%s": {"addresses": ["%s"], "routes": [{"to": "default", "via": "%s"}]}}}}\n' "$dev" @ADDRESS@ @GATEWAY@ > "$netplan/@FILE@.tmp"
chmod 600 "$netplan/@FILE@.tmp"
mv -f "$netplan/@FILE@.tmp" "$netplan/@FILE@"
old=$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "via") {print $(i + 1); exit}}')
[ -z "$old" ] || ip route replace "$old" dev "$dev"
ip addr replace @ADDRESS@ dev "$dev"
ip route replace default via @GATEWAY@ dev "$dev" src @IP@
"""
# The netplan file a deployed OS keeps its private network in (lab.os_firstboot.NETPLAN_FILE: the lab's OS
# reads it back at boot; the product does not import the lab).
PRIVATE_NETPLAN_FILE = "60-neocloud-private.yaml"


def _private_network_script(request: PersonalizeRequest) -> str:
    """PRIVATE_NETWORK_SCRIPT for ``request`` ("" without a private network). Raises DriverError for a
    malformed network (never sent to the server)."""
    import ipaddress
    import shlex

    network = request.private_network
    if not network:
        return ""
    try:
        address = ipaddress.IPv4Interface(f"{network['address']}/{int(network['prefix'])}")
        gateway = ipaddress.IPv4Address(network["gateway"])
        provisioning = ipaddress.IPv4Address(request.address)
    except (KeyError, TypeError, ValueError) as exc:
        raise DriverError(f"{request.node_name}'s private network is malformed: {exc}") from None
    return (
        PRIVATE_NETWORK_SCRIPT.replace("@PROVISIONING@", shlex.quote(str(provisioning)))
        .replace("@ADDRESS@", shlex.quote(address.with_prefixlen))
        .replace("@GATEWAY@", shlex.quote(str(gateway)))
        .replace("@IP@", shlex.quote(str(address.ip)))
        .replace("@FILE@", PRIVATE_NETPLAN_FILE)
    )


# The short profile of a warm server's re-check (its full burn-in ran when it joined the warm pool).
SHORT_LOAD_SECONDS = 5.0
SHORT_XID_WAIT_SECONDS = 1.0

# A detached burn-in may run this much longer than its load and Xid wait before its wait fails.
BURNIN_DETACHED_MARGIN = 600
