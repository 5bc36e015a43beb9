"""The ironic-python-agent environment of the deploy benchmark: a virtual environment of its own, never the
project's, with ironic-python-agent installed from PyPI at a pinned version.

    .venv/bin/python -m bench.ipa_env        # makes it (or finds it) and prints its python

It lives under ``~/.cache/neocloud/ipa-<version>`` (``$XDG_CACHE_HOME`` if set) and is made once: later runs
find it ready. Made with ``python3.11 -m venv`` (ironic-python-agent 13.0.0 supports 3.10-3.12; about 100 MB
installed). It is built in a temporary folder next to its place and renamed there when the install succeeded,
so a broken or interrupted install never looks ready.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

IPA_VERSION = "13.0.0"
IPA_REQUIREMENT = f"ironic-python-agent=={IPA_VERSION}"
PYTHON = "python3.11"


class IpaEnvError(Exception):
    """The environment cannot be made; the message is one sentence that says why."""


def ipa_env_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "neocloud" / f"ipa-{IPA_VERSION}"


def _installed_version(python: Path) -> str | None:
    if not python.exists():
        return None
    proc = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('ironic-python-agent'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("WARNING")]
    return lines[-1][:300] if lines else "no output"


def ensure_ipa_env() -> Path:
    """Make the environment unless it is there with the pinned version; return its python. Idempotent.

    :raises IpaEnvError: python3.11 is missing, or the venv or the install failed (pip's last line).
    """
    target = ipa_env_dir()
    python = target / "bin" / "python"
    if _installed_version(python) == IPA_VERSION:
        return python
    base = shutil.which(PYTHON)
    if base is None:
        raise IpaEnvError(
            f"cannot make the ironic-python-agent environment: {PYTHON} is not on the PATH "
            f"(ironic-python-agent {IPA_VERSION} needs Python 3.10-3.12)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        # renamed once installed: its python finds its packages from the pyvenv.cfg beside it, wherever the
        # folder is; only its bin/ scripts (pip) keep the temporary path, and the bench runs python alone
        shutil.rmtree(building)
        made = subprocess.run(
            [base, "-m", "venv", str(building)], capture_output=True, text=True, check=False
        )
        if made.returncode != 0:
            raise IpaEnvError(
                f"cannot make the ironic-python-agent environment: {PYTHON} -m venv failed: "
                f"{_last_line(made.stderr + made.stdout)}"
            )
        pip = subprocess.run(
            [str(building / "bin" / "python"), "-m", "pip", "install", "--quiet", IPA_REQUIREMENT],
            capture_output=True,
            text=True,
            check=False,
        )
        if pip.returncode != 0:
            raise IpaEnvError(
                f"cannot install {IPA_REQUIREMENT} into the benchmark's environment: "
                f"{_last_line(pip.stderr + pip.stdout)}"
            )
        shutil.rmtree(target, ignore_errors=True)  # a broken earlier one (wrong version, no python)
        os.replace(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    if _installed_version(python) != IPA_VERSION:
        raise IpaEnvError(
            f"the ironic-python-agent environment at {target} does not import version {IPA_VERSION}"
        )
    return python


if __name__ == "__main__":
    try:
        print(ensure_ipa_env())
    except IpaEnvError as exc:
        sys.exit(str(exc))
