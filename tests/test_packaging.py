"""The package installs as durakv.* (the folders stay at the top of the repository):
a wheel built from the tree, installed into a clean venv, imports every module
from the venv and answers `durakv --version` from its metadata."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("server", "shards", "log", "snapshotter")


def test_wheel_installs_every_module_under_the_durakv_namespace(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "-w", str(wheels), str(REPO)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("durakv-*.whl")
    venv = tmp_path / "venv"
    # System site-packages give the dependencies (no network); the venv's own
    # site-packages, where the wheel goes, come first on sys.path.
    # Without a pip of its own (ensurepip costs seconds of CPU): this pip installs into it.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, text=True)
    expected = _modules()
    probe = ("import importlib, sys\n"
             "for name in sys.argv[1:]:\n"
             "    module = importlib.import_module(name)\n"
             "    assert module.__file__.startswith(sys.prefix), (name, module.__file__)\n"
             "print(len(sys.argv) - 1)\n")
    out = subprocess.run([str(python), "-c", probe, *expected], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == len(expected) > 80
    for name in PACKAGES:  # no top-level `server` or `log` to collide with other packages
        out = subprocess.run([str(python), "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode != 0 and "No module named" in out.stderr, name
    version = subprocess.run([str(venv / "bin" / "durakv"), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip() == f"durakv {_project_version()}"


def _modules() -> list[str]:
    """Every module of the tree (subpackages such as shards/rdb included), as installed names."""
    names = []
    for package in PACKAGES:
        for folder, dirs, files in os.walk(REPO / package):
            dirs[:] = sorted(d for d in dirs if (Path(folder) / d / "__init__.py").exists())
            prefix = "durakv." + os.path.relpath(folder, REPO).replace(os.sep, ".")
            names += [f"{prefix}.{f[:-3]}" for f in sorted(files) if f.endswith(".py") and f != "__init__.py"]
            if folder != str(REPO / package):
                names.append(prefix)
    return names


def _project_version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")
