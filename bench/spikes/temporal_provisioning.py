"""One node's provisioning as a Temporal workflow, the worker that runs it and the client that signals it.

Part of the Temporal spike (issue 20), run by ``temporal_spike.py`` in its own virtual environment; not
product code and not imported by the project. The workflow has the shape of ours: power on + PXE (a BMC
call), wait for the deploy agent's report under a deadline, boot from disk, wait for SSH under a deadline,
handover. The workflow id is the node id, so the server refuses a second operation on a node that has one
running: the node's lock.

The spike runs ``run_worker`` and ``run_signaller`` each in a process of its own (``temporal_spike.py
--role worker|signaller``), importing this module by name: the sandbox re-imports a workflow's module by
name, which a class defined in ``__main__`` would not allow.

The module is re-imported inside the workflow sandbox for each workflow run, so its top level imports only
the standard library and the SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

# Stand-ins for the blocking calls of each step: a BMC round trip, a boot-device change, a handover.
POWER_ON_S = 0.020
BOOT_FROM_DISK_S = 0.010
HANDOVER_S = 0.010
ACTIVITY_TIMEOUT = timedelta(seconds=30)
ACTIVITY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)

SIGNAL_AGENT = "agent_reported"
SIGNAL_SSH = "ssh_up"


@dataclass
class Plan:
    """Deadlines of one node's waits, in seconds (durable timers on the server)."""

    agent_deadline_s: float = 900.0
    ssh_deadline_s: float = 600.0


_events_fd: int | None = None


def _record(step: str, node: str, started: float) -> None:
    """Append 'step node started ended' to the worker's events file: the spike waits on these lines.

    One write() per line on an O_APPEND descriptor, so two workers (before and after a crash) can share it.
    """
    if _events_fd is not None:
        os.write(_events_fd, f"{step} {node} {started:.6f} {time.time():.6f}\n".encode())


@activity.defn
async def power_on_pxe(node: str) -> float:
    """Set next boot to PXE and power on (a sleep standing for the BMC call). Returns when it started."""
    started = time.time()
    await asyncio.sleep(POWER_ON_S)
    _record("power_on_pxe", node, started)
    return started


@activity.defn
async def boot_from_disk(node: str) -> float:
    """Set boot to disk and reboot (a sleep standing for the BMC call). Returns when it started."""
    started = time.time()
    await asyncio.sleep(BOOT_FROM_DISK_S)
    _record("boot_from_disk", node, started)
    return started


@activity.defn
async def handover(node: str) -> float:
    """Remove our key, hand the server to its tenant (a sleep). Returns when it started."""
    started = time.time()
    await asyncio.sleep(HANDOVER_S)
    _record("handover", node, started)
    return started


@workflow.defn
class ProvisionNode:
    """Provision one node; its workflow id is the node id."""

    def __init__(self) -> None:
        self._agent_reported = False
        self._ssh_up = False

    @workflow.signal(name=SIGNAL_AGENT)
    def agent_reported(self) -> None:
        """The deploy agent wrote the image and called back."""
        self._agent_reported = True

    @workflow.signal(name=SIGNAL_SSH)
    def ssh_up(self) -> None:
        """The deployed OS booted and its SSH server answers."""
        self._ssh_up = True

    @workflow.run
    async def run(self, plan: Plan) -> dict[str, float]:
        """Run the steps; returns when each started (epoch seconds) so the spike can measure latencies."""
        node = workflow.info().workflow_id
        times: dict[str, float] = {}
        times["power_on_started"] = await workflow.execute_activity(
            power_on_pxe, node, start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=ACTIVITY_RETRY
        )
        times["agent_wait_began"] = workflow.now().timestamp()
        try:
            await workflow.wait_condition(
                lambda: self._agent_reported, timeout=plan.agent_deadline_s, timeout_summary="agent deadline"
            )
        except TimeoutError:
            raise ApplicationError(
                f"the deploy agent of {node} did not report within {plan.agent_deadline_s:g} s",
                type="AgentDeadline",
                non_retryable=True,
            )
        times["boot_started"] = await workflow.execute_activity(
            boot_from_disk, node, start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=ACTIVITY_RETRY
        )
        times["ssh_wait_began"] = workflow.now().timestamp()
        try:
            await workflow.wait_condition(
                lambda: self._ssh_up, timeout=plan.ssh_deadline_s, timeout_summary="ssh deadline"
            )
        except TimeoutError:
            raise ApplicationError(
                f"{node} did not answer on SSH within {plan.ssh_deadline_s:g} s",
                type="SshDeadline",
                non_retryable=True,
            )
        times["handover_started"] = await workflow.execute_activity(
            handover, node, start_to_close_timeout=ACTIVITY_TIMEOUT, retry_policy=ACTIVITY_RETRY
        )
        return times


async def run_worker(
    address: str, task_queue: str, events: str, max_cached: int, sticky_timeout_s: float = 10.0
) -> None:
    """Serve the task queue until killed; prints 'ready' once polling.

    `sticky_timeout_s`: how long the server keeps a cached workflow's next task for this worker before it
    offers it to any worker (the SDK's default is 10 s): after a kill -9, every workflow this worker had
    cached waits that long for its next step.
    """
    global _events_fd
    _events_fd = os.open(events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    client = await Client.connect(address)
    worker = Worker(
        client,
        task_queue=task_queue,
        workflows=[ProvisionNode],
        activities=[power_on_pxe, boot_from_disk, handover],
        max_cached_workflows=max_cached,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=sticky_timeout_s),
    )
    async with worker:
        print("ready", flush=True)
        await asyncio.Event().wait()


async def _send(client: Client, node: str, signal: str, sent: list[list], errors: list[str]) -> None:
    begun = time.time()
    try:
        await client.get_workflow_handle(node).signal(signal)
    except Exception as exc:  # any failure is counted and reported, the run goes on
        errors.append(f"{node}: {exc}")
        return
    sent.append([node, begun, time.time()])


async def run_signaller(address: str) -> None:
    """Read commands {"signal", "nodes", "rate"} as JSON lines; send each node its signal at that rate.

    Answers each command with one JSON line {"sent": [[node, t_send, t_ack], ...], "errors": [...]}.
    A rate of 0 sends as fast as the in-flight cap (200) allows.
    """
    client = await Client.connect(address)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    in_flight = asyncio.Semaphore(200)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        sent: list[list] = []
        errors: list[str] = []
        tasks = []
        began = time.monotonic()
        for index, node in enumerate(command["nodes"]):
            if command["rate"] > 0:
                await asyncio.sleep(max(0.0, began + index / command["rate"] - time.monotonic()))
            await in_flight.acquire()
            task = asyncio.create_task(_send(client, node, command["signal"], sent, errors))
            task.add_done_callback(lambda _task: in_flight.release())
            tasks.append(task)
        await asyncio.gather(*tasks)
        print(json.dumps({"sent": sent, "errors": errors}), flush=True)
