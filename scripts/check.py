#!/usr/bin/env python3
"""Static checks, run by .ci/run before the tests: ruff over the whole tree, then
mypy over the durakv packages (configuration for both in pyproject.toml).

    python scripts/check.py

mypy finds modules by their paths, and the folders (log/, shards/, server/,
snapshotter/) are installed as durakv.* by a mapping that only the import system
follows; so mypy reads them through build/typecheck/durakv/<folder>, links this
script makes to the folders themselves. Exits non-zero if either tool finds
anything.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("log", "shards", "server", "snapshotter")
TYPECHECK_TREE = os.path.join(ROOT, "build", "typecheck", "durakv")


def link_packages() -> None:
    """build/typecheck/durakv/<folder> -> ../../../<folder>, for mypy_path."""
    os.makedirs(TYPECHECK_TREE, exist_ok=True)
    for name in PACKAGES:
        link = os.path.join(TYPECHECK_TREE, name)
        target = os.path.join("..", "..", "..", name)
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(target, link)


def run(argv: list[str]) -> int:
    print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, cwd=ROOT).returncode


def main() -> int:
    failed = run([sys.executable, "-m", "ruff", "check", "."]) != 0
    link_packages()
    failed |= run([sys.executable, "-m", "mypy"]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
