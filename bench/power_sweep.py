"""Benchmark the fleet power sweep against real lab IPMI BMCs and against ipmitool.

    .venv/bin/python bench/power_sweep.py --bmcs 200

Starts N lab IPMI BMCs (light mode: several per process, each on its own 127.0.20.x address, half of
them powered on through IPMI first), sweeps their power state with ``sweep_power`` (a cold sweep that
logs in, then the steady-state sweep of the periodic power sync, which reuses the kept sessions),
then runs ``ipmitool -I lanplus -E ... power status`` once per BMC, sequentially (password in the
IPMI_PASSWORD environment variable, never on the command line). Checks that both saw the same states,
stops every process it started and prints as its last line:

    power sweep: neocloud X s, ipmitool Y s, ratio Z
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from lab.spec import LabNodeSpec  # noqa: E402
from lab.supervisor import silent_ipmi_bmcs, start_ipmi_group  # noqa: E402
from provisioner.drivers.base import BmcAccess, PowerState  # noqa: E402
from provisioner.drivers.ipmi import IpmiPowerDriver  # noqa: E402
from provisioner.drivers.sweep import sweep_power  # noqa: E402

USERNAME = "bench"
BASE_PORT = 20000


def start_bmcs(
    n: int, per_process: int, workdir: Path
) -> tuple[list[subprocess.Popen[bytes]], list[BmcAccess]]:
    password = secrets.token_urlsafe(12)
    specs = [
        LabNodeSpec(
            name=f"bench-{i:03d}",
            index=i,
            server_type="bench",
            mac=f"52:54:00:20:{i >> 8:02x}:{i & 0xFF:02x}",
            bmc_protocol="ipmi",
            bmc_address=f"127.0.20.{i}" if i < 255 else f"127.0.21.{i - 254}",
            # pyghmi routes server packets by (client address, BMC port): BMCs sharing a process need
            # distinct ports as well as distinct addresses
            bmc_port=BASE_PORT + i,
            bmc_username=USERNAME,
            bmc_password=password,
        )
        for i in range(1, n + 1)
    ]
    procs = [
        start_ipmi_group(specs[start : start + per_process], workdir / f"group-{start}.json")
        for start in range(0, n, per_process)
    ]
    accesses = [BmcAccess("ipmi", s.bmc_address, s.bmc_port, USERNAME, password, timeout=5.0) for s in specs]
    silent = silent_ipmi_bmcs([(a.address, a.port) for a in accesses], timeout=60)
    if silent:
        raise SystemExit(f"{len(silent)} bench BMCs did not come up")
    return procs, accesses


def ipmitool_sweep(accesses: list[BmcAccess]) -> dict[BmcAccess, PowerState]:
    states = {}
    for access in accesses:
        out = subprocess.run(
            [
                "ipmitool",
                "-I",
                "lanplus",
                "-H",
                access.address,
                "-p",
                str(access.port),
                "-U",
                access.username,
                # ipmitool's own retry of a lost packet (1 s, 3 tries), as fleet scripts configure it
                "-N",
                "1",
                "-R",
                "3",
                "-E",
                "power",
                "status",
            ],
            env={**os.environ, "IPMI_PASSWORD": access.password},
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        states[access] = (
            PowerState.ON if "is on" in out else PowerState.OFF if "is off" in out else PowerState.UNKNOWN
        )
    return states


def main() -> None:
    parser = argparse.ArgumentParser(description="fleet power sweep benchmark")
    parser.add_argument("--bmcs", type=int, default=200)
    parser.add_argument("--per-process", type=int, default=25)
    parser.add_argument("--max-workers", type=int, default=64)
    args = parser.parse_args()

    # SIGTERM (timeout(1), CI) runs the cleanup below instead of leaving the BMC processes behind
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    def phase(what: str) -> None:  # on stderr, so that a run that stops somewhere says where
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="nc-bench-") as tmp:
        procs, accesses = start_bmcs(args.bmcs, args.per_process, Path(tmp))
        try:
            phase(f"{len(accesses)} BMCs up; powering half of them on")
            for access in accesses[::2]:  # half the fleet on, so a sweep that says "off" everywhere fails
                IpmiPowerDriver(access).power_on()
            phase("cold sweep")
            t0 = time.perf_counter()
            cold = sweep_power(accesses, timeout=5.0, max_workers=args.max_workers)
            cold_s = time.perf_counter() - t0
            phase("warm sweep")
            t0 = time.perf_counter()
            warm = sweep_power(accesses, timeout=5.0, max_workers=args.max_workers)
            ours_s = time.perf_counter() - t0
            phase("ipmitool, one BMC after the other")
            t0 = time.perf_counter()
            theirs = ipmitool_sweep(accesses)
            ipmitool_s = time.perf_counter() - t0
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    expected = {a: PowerState.ON if i % 2 == 0 else PowerState.OFF for i, a in enumerate(accesses)}
    for name, found in (
        ("cold sweep", {a: r.state for a, r in cold.items()}),
        ("sweep", {a: r.state for a, r in warm.items()}),
        ("ipmitool", theirs),
    ):
        wrong = [f"{a.address}={found.get(a)}" for a in accesses if found.get(a) != expected[a]]
        if wrong:
            errors = {r.error_code for r in cold.values() if r.error_code} if name == "cold sweep" else set()
            raise SystemExit(f"{name} disagrees on {len(wrong)} BMCs, e.g. {wrong[:3]} {sorted(errors)}")
    print(f"{args.bmcs} BMCs in {len(procs)} processes; states agree (neocloud and ipmitool)")
    print(f"cold sweep (logins included): {cold_s:.3f} s, ratio {ipmitool_s / cold_s:.1f}")
    print(
        f"power sweep: neocloud {ours_s:.3f} s, ipmitool {ipmitool_s:.3f} s, ratio {ipmitool_s / ours_s:.1f}"
    )


if __name__ == "__main__":
    main()
