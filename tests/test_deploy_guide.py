"""DEPLOY.md stays true: its TOML blocks load with the project's config loader (and
pass its checks), its etcd settings are flags etcd knows, its units pass
systemd-analyze verify, and what it tells an operator to look for (INFO fields, log
lines, commands) is what the code prints and accepts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from durakv.shards.config import load_config

REPO = Path(__file__).resolve().parent.parent
GUIDE = (REPO / "DEPLOY.md").read_text()
UNITS = REPO / "scripts" / "systemd"
INSTALLED_BINARY = "/usr/local/bin/durakv"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", GUIDE, flags=re.S)


def test_every_toml_block_loads_with_the_config_loader(tmp_path):
    blocks = _blocks("toml")
    assert len(blocks) >= 2
    roles = set()
    for i, block in enumerate(blocks):
        path = tmp_path / f"node{i}.toml"
        path.write_text(block)
        config = load_config(str(path), {})   # ValueError (one line) on an unknown key or a bad value
        assert config.log_backend == "etcd" and config.node_id and config.advertise, block
        assert config.etcd_user and config.etcd_ca_file and all(e.startswith("https://")
                                                               for e in config.etcd_endpoints)
        roles.add(config.node_role)
    assert roles == {"primary", "replica"}


def test_the_etcd_settings_are_flags_etcd_knows():
    etcd = shutil.which("etcd")
    if etcd is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    help_text = subprocess.run([etcd, "--help"], capture_output=True, text=True, timeout=30)
    flags = set(re.findall(r"--([a-z0-9-]+)", help_text.stdout + help_text.stderr))
    names = re.findall(r"^ETCD_([A-Z0-9_]+)=", GUIDE, flags=re.M)
    assert len(names) >= 10
    unknown = [n for n in names if n.lower().replace("_", "-") not in flags]
    assert not unknown, unknown


def test_the_guides_units_pass_systemd_analyze_verify(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze not installed (Debian: systemd)")
    binary = INSTALLED_BINARY if os.access(INSTALLED_BINARY, os.X_OK) else shutil.which("durakv")
    if binary is None:
        pytest.skip("durakv is not installed (pip install -e .)")
    names = sorted(set(re.findall(r"scripts/systemd/([\w@.-]+\.service)", GUIDE)))
    assert "durakv-node.service" in names and "durakv-etcd.service" in names
    for name in names:
        (tmp_path / name).write_text((UNITS / name).read_text().replace(INSTALLED_BINARY, binary))
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in names)],
                         capture_output=True, text=True, timeout=60)
    ours = [line for line in (out.stdout + out.stderr).splitlines() if "durakv" in line]
    assert out.returncode == 0 and ours == [], out.stdout + out.stderr
    node_unit = (UNITS / "durakv-node.service").read_text()
    assert "ExecStart=/usr/local/bin/durakv serve --config /etc/durakv/durakv.toml\n" in node_unit


def test_what_the_guide_tells_to_look_for_is_what_durakv_prints():
    sources = "".join(p.read_text() for d in ("server", "shards", "log") for p in (REPO / d).glob("*.py"))
    for shown in ("etcd_shard", "lease_valid=", "first_seq=", "db_size_in_use=", "replica_lag_records",
                  "master_link_status", "leader key is free; campaigning", "as a standby", "/replica/"):
        assert shown in GUIDE, shown
        assert shown in sources, f"DEPLOY.md names {shown!r}, which durakv no longer prints"
    for command in re.findall(r"`(durakv (?:log|snapshots) \w+)", GUIDE):
        done = subprocess.run([sys.executable, "-m", "durakv.server.cli", *command.split()[1:], "--help"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
    assert "](DEPLOY.md)" in (REPO / "README.md").read_text()
