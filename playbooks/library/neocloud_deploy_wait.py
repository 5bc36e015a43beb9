#!/usr/bin/python
"""Ansible module: wait for the deploy agent of one deploy ticket to report its result.

The agent (running in the node's deploy ramdisk) posts progress and a result to Neocloud's boot service;
this module polls the ticket's status there (``GET /boot/api/tickets/<id>``) with the ticket's watch key,
read from a private file, and fails with the agent's own message on failure. It starts no Django and
opens no database connection: a poll costs the boot service one indexed row read.

Polls follow the agent's pace: while a stage reports a rising percentage, the next poll comes after half
the time the stage still needs at its rate so far (between ``interval`` and ``max_interval``), so a long
image write is watched with a handful of requests instead of one a second, and the end is still seen
within ``interval``. A cancel is seen within a second whatever the wait.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: neocloud_deploy_wait
short_description: Wait for a Neocloud deploy agent's result
options:
  status_url: {description: The ticket's status URL on the boot service, required: true, type: str}
  key_path: {description: File holding the ticket's watch key, required: true, type: path}
  timeout: {description: Seconds to wait, type: float, default: 600}
  stall_timeout: {description: With it, the wait also ends (failed) once the agent has reported no new
                  progress for this many seconds, and timeout is only the upper bound for a long job
                  that keeps progressing (a wipe of a large disk), type: float}
  interval: {description: Seconds between polls, at least, type: float, default: 1.0}
  max_interval: {description: Seconds between polls, at most, while the agent reports steady progress,
                 type: float, default: 5.0}
  cancel_path: {description: Stop waiting (failed, retryable) as soon as this file exists, type: path}
"""

import json
import os
import time
import urllib.error
import urllib.request

from ansible.module_utils.basic import AnsibleModule


def poll(url, key):
    """(status document, None) or (None, why it could not be read)."""
    headers = {"Authorization": f"Bearer {key}"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) only, checked in main()
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - as above
            return json.loads(response.read()), None
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 404):
            raise PermissionError(f"the boot service refused the ticket status (HTTP {exc.code})")
        return None, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return None, str(exc)


def next_poll_in(progress, first_seen, now, interval, max_interval):
    """Seconds to wait before the next poll. ``progress`` is the agent's latest report ({stage, percent});
    ``first_seen`` is (stage, percent, time) of the first report of that stage seen here, or None."""
    try:
        percent = float(progress.get("percent"))
    except (TypeError, ValueError):
        return interval
    if not first_seen or first_seen[0] != progress.get("stage") or not 0 < percent < 100:
        return interval
    done, elapsed = percent - first_seen[1], now - first_seen[2]
    if done <= 0 or elapsed <= 0:
        return interval
    remaining = (100 - percent) * elapsed / done
    return max(interval, min(max_interval, remaining / 2))


def main():
    module = AnsibleModule(
        argument_spec={
            "status_url": {"type": "str", "required": True},
            "key_path": {"type": "path", "required": True},
            "timeout": {"type": "float", "default": 600.0},
            "interval": {"type": "float", "default": 1.0},
            "max_interval": {"type": "float", "default": 5.0},
            "cancel_path": {"type": "path"},
            "stall_timeout": {"type": "float"},
        }
    )
    params = module.params
    if not params["status_url"].startswith(("http://", "https://")):
        module.fail_json(msg=f"status_url must be an http(s) URL, not {params['status_url']!r}")
    try:
        with open(params["key_path"]) as fh:
            key = fh.read().strip()
    except OSError as exc:
        module.fail_json(msg=f"cannot read the ticket's watch key: {exc.strerror}")
    deadline = time.monotonic() + params["timeout"]
    stall = params["stall_timeout"]
    status, last_error, first_seen = {}, None, None
    last_progress, advanced_at = None, time.monotonic()
    while True:
        try:
            document, error = poll(params["status_url"], key)
        except PermissionError as exc:
            module.fail_json(msg=str(exc))
        if document is not None:
            status, last_error = document, None
            if status.get("finished"):
                break
            progress = status.get("progress") or {}
            reported = (progress.get("stage"), progress.get("percent"))
            if progress and reported != last_progress:
                last_progress, advanced_at = reported, time.monotonic()
            if not first_seen or first_seen[0] != progress.get("stage"):
                try:
                    first_seen = (progress.get("stage"), float(progress.get("percent")), time.monotonic())
                except (TypeError, ValueError):
                    first_seen = None
        else:
            last_error = error  # the boot service restarting: keep waiting until the deadline
        if params["cancel_path"] and os.path.exists(params["cancel_path"]):
            module.fail_json(msg="cancelled while waiting for the deploy agent", retryable=True)
        stalled = stall is not None and time.monotonic() - advanced_at > stall
        if time.monotonic() > deadline or stalled:
            if last_error:
                module.fail_json(msg=f"the boot service did not answer: {last_error}", retryable=True)
            if not status.get("script_served"):
                module.fail_json(msg="the node never fetched its iPXE script (did it PXE boot?)")
            if time.monotonic() <= deadline:
                module.fail_json(
                    msg=f"the deploy agent reported no progress for {stall:.0f} s "
                    f"(last progress: {status.get('progress') or {}})"
                )
            module.fail_json(
                msg=f"the deploy agent did not finish in time (last progress: {status.get('progress') or {}})"
            )
        wait = params["interval"]
        if document is not None:
            wait = next_poll_in(
                status.get("progress") or {}, first_seen, time.monotonic(), wait, params["max_interval"]
            )
        wake = min(time.monotonic() + wait, deadline + 0.01)
        if stall is not None:
            wake = min(wake, advanced_at + stall + 0.01)
        while (rest := wake - time.monotonic()) > 0:  # a cancel is seen within a second
            if params["cancel_path"] and os.path.exists(params["cancel_path"]):
                module.fail_json(msg="cancelled while waiting for the deploy agent", retryable=True)
            time.sleep(min(rest, 1.0))
    result = status.get("result") or {}
    if result.get("status") != "ok":
        module.fail_json(
            msg=f"deploy agent failed: {result.get('message', 'no message')}",
            error_code=result.get("error_code") or "deploy_failed",
        )
    written, sha = result.get("bytes_written", 0), str(result.get("sha256", ""))[:12]
    module.exit_json(
        changed=True,
        # a deploy reports the image's sha256; an erase only how much it overwrote
        msg=f"image written and verified ({written} bytes, sha256 {sha}…)"
        if sha
        else f"{written} bytes written",
        host_key_fingerprints=result.get("host_key_fingerprints", {}),
    )


if __name__ == "__main__":
    main()
