"""``python -m provisioner.burnin``: run the GPU burn-in and print one JSON report on stdout.

Exit codes: 0 passed, 1 a check failed, 2 the burn-in could not run (the report says why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from provisioner.burnin.backend import GpuBackend
from provisioner.burnin.nvml import NvmlBackend
from provisioner.burnin.report import build_error_report
from provisioner.burnin.runner import run_burnin
from provisioner.burnin.simulated import FAULTS_ENV_VAR, PROFILES, SimulatedBackend, parse_faults
from provisioner.errors import NeocloudError

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_COULD_NOT_RUN = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m provisioner.burnin", description=__doc__)
    parser.add_argument("--expect", required=True, help="server type expectations as JSON")
    parser.add_argument("--thresholds", default=None, help="threshold overrides as JSON")
    parser.add_argument("--backend", choices=("nvml", "simulated"), default="nvml")
    parser.add_argument(
        "--faults",
        default=None,
        help=f"faults to inject into the simulated backend as JSON (or ${FAULTS_ENV_VAR})",
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default="h100-sxm-8x", help="simulated server type"
    )
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--xid-wait-seconds", type=float, default=5.0)
    parser.add_argument(
        "--sample-interval", type=float, default=1.0, help="seconds between samples under load"
    )
    parser.add_argument("--load", choices=("auto", "torch", "dcgmi", "none"), default="auto")
    parser.add_argument("--output", default=None, help="also write the report to this file")
    return parser


def _backend(args: argparse.Namespace) -> GpuBackend:
    faults = args.faults if args.faults is not None else os.environ.get(FAULTS_ENV_VAR)
    if args.backend == "simulated":
        return SimulatedBackend(args.profile, parse_faults(faults))
    if args.faults:
        raise NeocloudError("--faults can only be injected into the simulated backend.")
    return NvmlBackend()


def _emit(report: dict[str, Any], output: str | None) -> None:
    text = json.dumps(report, indent=2, sort_keys=False)
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code. Never raises for a burn-in problem: it reports it."""
    args = _parser().parse_args(argv)
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    try:
        report = run_burnin(
            _backend(args),
            args.expect,
            args.thresholds,
            load_seconds=args.load_seconds,
            xid_wait_seconds=args.xid_wait_seconds,
            sample_interval_s=args.sample_interval,
            load_preference=args.load,
        )
    except NeocloudError as err:
        _emit(
            build_error_report(backend=args.backend, started_at=started_at, code=err.code, message=str(err)),
            args.output,
        )
        return EXIT_COULD_NOT_RUN
    _emit(report, args.output)
    return EXIT_PASSED if report["passed"] else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
