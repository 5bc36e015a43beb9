"""``python -m lab up|down|status``: the lab without Django (manage.py lab wraps the same)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lab import supervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab", description="Neocloud lab")
    parser.add_argument("--lab-dir", type=Path, default=Path(os.environ.get("LAB_DIR", "var/lab")))
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the lab (idempotent)")
    p_up.add_argument("--nodes", type=int, default=4)
    p_up.add_argument("--boot-url", default=os.environ.get("NEOCLOUD_BOOT_URL", "http://127.0.0.1:8000/boot"))
    p_up.add_argument("--protocols", choices=["mixed", "ipmi", "redfish"], default="mixed")
    p_up.add_argument(
        "--kind",
        choices=["simulated", "qemu"],
        default="simulated",
        help="qemu: every node an emulated computer (QEMU, TCG) powered by its BMC",
    )
    p_up.add_argument(
        "--switch", action="store_true", help="cable every node to the lab switch (lab.switched)"
    )
    sub.add_parser("down", help="stop every lab process")
    p_status = sub.add_parser("status", help="show nodes, BMCs and power")
    p_status.add_argument("--json", action="store_true", help="machine-readable, with BMC credentials")
    args = parser.parse_args(argv)

    try:
        if args.command == "up":
            specs = supervisor.up(
                args.nodes, args.lab_dir, args.boot_url, args.protocols, kind=args.kind, switch=args.switch
            )
            print(f"lab up: {len(specs)} nodes under {args.lab_dir}")
        elif args.command == "down":
            supervisor.down(args.lab_dir)
            print("lab down: no lab process left")
        else:
            rows = supervisor.status(args.lab_dir)
            if args.json:
                print(json.dumps(rows, indent=1))
            else:
                for r in rows:
                    print(
                        f"{r['name']:<14} {r['protocol']:<8} {r['address']}:{r['port']:<5} "
                        f"power={r['power']:<7} boot={r['boot_device']}/{r['boot_mode']} "
                        f"{'running pid ' + str(r['pid']) if r['alive'] else 'stopped'}"
                    )
    except supervisor.LabError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
