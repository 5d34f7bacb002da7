"""Check that the installed packages satisfy pyproject.toml, and say how they differ from a lock.

    python requirements/check.py dev                              # exit 1 if a requirement is unmet
    python requirements/check.py dev --lock requirements/dev.lock # also list versions unlike the lock

It reads the requirements of the installed ``agent-mesh`` (so install the project first), with
the given extras. An unmet requirement after installing a lock means the lock is stale: refresh
it with ``bash requirements/lock.sh`` (docs/DEVELOPING.md). Differences from the lock are only
reported: they are expected in ``bash .ci/run --latest`` and ``--lowest``.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def unmet(extras: list[str]) -> list[str]:
    """Every requirement of agent-mesh (with ``extras``) that the installed packages do not meet."""
    problems = []
    for line in requires("agent-mesh") or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": extra}) for extra in ["", *extras]):
            continue
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            problems.append(f"{requirement}: not installed")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement}: {installed} installed")
    return problems


def pins(lock: Path) -> dict[str, str]:
    """The pins of a lock, ``name==version`` lines, by canonical name."""
    found = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", lock.read_text(encoding="utf-8"), re.MULTILINE)
    return {canonicalize_name(name): pinned for name, pinned in found}


def unlike(lock: Path) -> list[str]:
    """The locked packages installed at another version (or not at all: another platform's)."""
    out = []
    for name, pinned in sorted(pins(lock).items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        if installed != pinned:
            out.append(f"{name} {installed} (lock: {pinned})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("extras", nargs="*", help="extras of agent-mesh to check, e.g. dev")
    parser.add_argument("--lock", type=Path, help="list installed versions that differ from this lock")
    args = parser.parse_args()
    if args.lock is not None:
        differ = unlike(args.lock)
        print(f"installed versions unlike {args.lock}: {len(differ)}")
        for line in differ:
            print(f"  {line}")
    problems = unmet(args.extras)
    for problem in problems:
        print(f"unmet requirement: {problem}", file=sys.stderr)
    if problems:
        print("if this environment came from a lock, refresh it: bash requirements/lock.sh", file=sys.stderr)
        return 1
    print(f"installed versions satisfy pyproject.toml ({', '.join(['base', *args.extras])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
