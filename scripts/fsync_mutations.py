"""Show that the suite notices a lost fsync: apply each fsync mutation to a copy of
the tree and run the durability tests on it; each mutation must make tests fail.

    python scripts/fsync_mutations.py [--tests PATH ...] [--skip-baseline]

Mutations (log/writer.py):
  no-segment-fdatasync   the segment fdatasync in Log.sync() is deleted
  fsync-before-write     that fdatasync runs before the write instead of after
  no-dir-fsync           a new segment's directory fsync is deleted

Each runs in a fresh copy under a temp dir (PYTHONPATH and the working directory
point at the copy, importable as durakv.* through DIR/.import, so the servers the
tests start run the mutated code too). Exit status 0 only if the unmutated copy
passes and every mutation fails at least one test. Takes a few minutes per mutation on 2 cores, so CI does not run it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WRITER = "log/writer.py"
DEFAULT_TESTS = ["tests/test_log_basic.py", "tests/test_log_concurrency.py",
                 "tests/test_log_recovery.py", "tests/test_log_faults.py",
                 "tests/test_durability.py", "tests/test_replay_property.py"]
RUN_TIMEOUT_S = 3600

_SYNC_WRITE = """\
                self._disk.write_all(self._active_fd, data, self._active_size)
                self._active_size += len(data)
                started = time.perf_counter_ns()
                self._disk.fdatasync(self._active_fd)
"""
MUTATIONS: dict[str, tuple[str, str]] = {
    "no-segment-fdatasync": (_SYNC_WRITE, """\
                self._disk.write_all(self._active_fd, data, self._active_size)
                self._active_size += len(data)
                started = time.perf_counter_ns()
"""),
    "fsync-before-write": (_SYNC_WRITE, """\
                started = time.perf_counter_ns()
                self._disk.fdatasync(self._active_fd)
                self._disk.write_all(self._active_fd, data, self._active_size)
                self._active_size += len(data)
"""),
    "no-dir-fsync": ("""\
            self._disk.fsync(fd)
            self._disk.fsync_dir(self.path)
        except BaseException:
""", """\
            self._disk.fsync(fd)
        except BaseException:
"""),
}


PACKAGES = ("server", "shards", "log", "snapshotter")
IMPORT_ROOT = ".import"


def make_copy(dest: Path) -> None:
    """A copy of the tree, importable as durakv.*: DEST/.import/durakv/<package>
    links to DEST/<package>, and PYTHONPATH=DEST/.import (run_tests) puts it ahead
    of the installed (editable) durakv."""
    shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis"))
    namespace = dest / IMPORT_ROOT / "durakv"
    namespace.mkdir(parents=True)
    for package in PACKAGES:
        (namespace / package).symlink_to(dest / package, target_is_directory=True)


def mutate(root: Path, old: str, new: str) -> None:
    path = root / WRITER
    text = path.read_text()
    count = text.count(old)
    if count != 1:
        raise SystemExit(f"fsync_mutations: the code to mutate was found {count} times in "
                         f"{WRITER}; update MUTATIONS to match the writer")
    path.write_text(text.replace(old, new))


def run_tests(root: Path, tests: list[str]) -> tuple[int, list[str], float]:
    """(pytest exit status, failed test ids, seconds) for the tree at root."""
    env = dict(os.environ, PYTHONPATH=str(root / IMPORT_ROOT), PYTHONDONTWRITEBYTECODE="1")
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-rf", *tests], cwd=root, env=env, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S)
    failed = re.findall(r"^FAILED (\S+)", out.stdout, re.MULTILINE)
    if out.returncode not in (0, 1):
        print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
    return out.returncode, failed, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", nargs="+", default=DEFAULT_TESTS)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--only", choices=sorted(MUTATIONS), nargs="+")
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory(prefix="durakv-mutations-") as tmp:
        runs = [] if args.skip_baseline else [("baseline", None)]
        runs += [(name, MUTATIONS[name]) for name in (args.only or MUTATIONS)]
        for name, mutation in runs:
            root = Path(tmp) / name
            make_copy(root)
            if mutation is not None:
                mutate(root, *mutation)
            status, failed, seconds = run_tests(root, args.tests)
            if mutation is None:
                good = status == 0
                verdict = "passes" if good else f"FAILS UNMUTATED ({len(failed)} tests)"
            else:
                good = status == 1 and bool(failed)
                verdict = f"{len(failed)} tests fail" if good else "NOT CAUGHT: the suite passes"
            ok &= good
            print(f"{name}: {verdict} ({seconds:.0f} s)", flush=True)
            for test in failed:
                print(f"    {test}", flush=True)
            shutil.rmtree(root)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
