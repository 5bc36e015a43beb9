"""Package the burn-in agent as one zip application, so that a playbook copies a single file to a server
(copying the package file by file over SSH cost ~50 s per server) and runs ``python3 burnin.pyz ...``.
The agent needs only the standard library and nvidia-ml-py (torch optional) on the server."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # provisioner/
MAIN = "import sys\nfrom provisioner.burnin.__main__ import main\nsys.exit(main())\n"


def build_bundle() -> bytes:
    """The zip application's bytes: provisioner/{__init__,errors}.py, provisioner/burnin/*.py, __main__.py.
    Pure apart from reading the source files; deterministic for the same sources."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr(zipfile.ZipInfo("__main__.py", date_time=(2020, 1, 1, 0, 0, 0)), MAIN)
        sources = [
            PACKAGE_ROOT / "__init__.py",
            PACKAGE_ROOT / "errors.py",
            *sorted((PACKAGE_ROOT / "burnin").glob("*.py")),
        ]
        for path in sources:
            name = f"provisioner/{path.relative_to(PACKAGE_ROOT)}"
            bundle.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), path.read_bytes())
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()
