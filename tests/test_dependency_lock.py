"""requirements/lock.txt, what scripts/bootstrap.sh installs with --require-hashes, keeps up with pyproject.toml:
every dependency (the dev extra included) and build tool is pinned to a version its specifier allows, with at
least one sha256. A dependency added to pyproject.toml without running scripts/lock.sh fails here, not on a
fresh machine's bootstrap."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?: ; (?P<marker>[^\\]+?))?\s*\\?$"
)


@dataclass
class Pin:
    version: Version
    marker: str | None
    hashes: int = 0


def locked() -> dict[str, list[Pin]]:
    """Each locked name's entries (a universal lock may pin one name twice, for different Pythons)."""
    entries: dict[str, list[Pin]] = {}
    current: Pin | None = None
    for line in LOCK.read_text().splitlines():
        match = ENTRY.match(line)
        if match:
            current = Pin(Version(match["version"]), match["marker"])
            entries.setdefault(canonicalize_name(match["name"]), []).append(current)
        elif current is not None and line.strip().startswith("--hash=sha256:"):
            current.hashes += 1
    return entries


def wanted() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    build = [
        line.split("#")[0].strip()
        for line in (ROOT / "requirements" / "build.in").read_text().splitlines()
        if line.split("#")[0].strip()
    ]
    return [
        Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"], *build]
    ]


def test_every_dependency_and_build_tool_is_locked_with_hashes_within_its_specifier():
    pins = locked()
    env = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.2"}
    problems = []
    for requirement in wanted():
        name = canonicalize_name(requirement.name)
        applicable = [
            pin for pin in pins.get(name, []) if pin.marker is None or Marker(pin.marker).evaluate(env)
        ]
        if not applicable:
            problems.append(f"{requirement}: not in the lock")
        for pin in applicable:
            if not requirement.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{requirement}: locked at {pin.version}")
            if pin.hashes == 0:
                problems.append(f"{requirement}: locked without a hash")
    assert problems == [], "run scripts/lock.sh: " + "; ".join(problems)


def test_every_locked_package_has_a_hash():
    unhashed = [name for name, pins in locked().items() for pin in pins if pin.hashes == 0]
    assert locked() and unhashed == []
